"""`ringrl init-secrets OUT`: the tokens and Redis passwords of a deployment, one folder per part.

Each part mounts only its own folder (compose: a volume `subpath`), so a compromised part holds its
own Redis login and the API token, not the others'. Files that exist are kept: a one-shot deploy
step runs it on every start and the secrets stay those the running parts know.
"""

from __future__ import annotations

import secrets
from pathlib import Path

import typer

API, ADMIN, REDIS = "api-token", "admin-token", "redis-password"


def layout(parts: tuple[str, ...]) -> dict[str, dict[str, str]]:
    """Folder -> {file: which secret}. Secrets are named by what they are, shared where the same."""
    out: dict[str, dict[str, str]] = {p: {API: "api", REDIS: f"redis:{p}"} for p in parts}
    out["rollout"][ADMIN] = "admin"  # it checks the admin token of weight updates
    out["redis"] = {"users.acl": "acl", "probe-password": "redis:probe"}
    out["prometheus"] = {API: "api"}
    out["grafana"] = {"admin-password": "grafana"}
    out["operator"] = {API: "api", ADMIN: "admin", REDIS: "redis:default"}  # for the people who run it
    return out


def register(app: typer.Typer, serve: typer.Typer) -> None:
    @app.command("init-secrets")
    def init_secrets(out: Path = typer.Argument(..., help="Folder to write the secrets to.")) -> None:
        """Generate API/admin tokens, one Redis ACL user per part and the Redis ACL file into OUT;
        secrets already there are kept."""
        from cli.errors import fail
        from protocol.redis_acl import ADMIN_USER, PARTS, PROBE_USER, users_acl

        plan = layout(PARTS)
        known: dict[str, str] = {}
        for folder, files in plan.items():  # what a previous run wrote wins
            for name, what in files.items():
                path = out / folder / name
                if what != "acl" and path.is_file():
                    known.setdefault(what, path.read_text().strip())
        names = {"api", "admin", "grafana", f"redis:{PROBE_USER}", f"redis:{ADMIN_USER}",
                 *(f"redis:{p}" for p in PARTS)}
        value = {what: known.get(what) or secrets.token_urlsafe(32) for what in names}
        value["acl"] = users_acl({name.split(":", 1)[1]: v for name, v in value.items() if name.startswith("redis:")})
        written = 0
        try:
            out.mkdir(parents=True, exist_ok=True)
            for folder, files in plan.items():
                (out / folder).mkdir(mode=0o755, exist_ok=True)
                for name, what in files.items():
                    path = out / folder / name
                    if path.is_file() and path.read_text().strip() == value[what].strip():
                        continue
                    path.write_text(value[what] + ("" if value[what].endswith("\n") else "\n"))
                    path.chmod(0o644)  # each part mounts only its own folder: that is the boundary
                    written += 1
        except OSError as exc:
            fail(f"cannot write {out}: {exc.strerror}")
        typer.echo(f"init-secrets: {written} files written, {sum(map(len, plan.values())) - written} kept, in {out}")
