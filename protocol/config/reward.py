from __future__ import annotations

from typing import Literal

from pydantic import Field

from protocol.config.base import Section

SandboxBackend = Literal["warm", "bwrap", "rlimit"]


class SandboxConfig(Section):
    backend: SandboxBackend = Field(
        default="warm",
        description="warm: one long-lived bwrap sandbox per slot whose fork server forks each "
                    "program (fastest); bwrap: a fresh bwrap per program; both need user "
                    "namespaces. rlimit: setuid + rlimits + seccomp fallback for containers that "
                    "forbid namespaces. See docs/reward.md.")
    python: str = Field(
        default="/usr/bin/python3",
        description="Interpreter that runs programs; must be readable by an unprivileged uid.")
    wall_s: float = Field(default=10.0, gt=0, description="Wall-clock limit per program run.")
    cpu_s: int = Field(default=5, gt=0, description="CPU-time limit per run (RLIMIT_CPU).")
    memory_mb: int = Field(default=512, gt=0, description="Address-space limit per process (RLIMIT_AS).")
    nproc: int = Field(default=8, gt=0, description="Processes/threads per sandbox (RLIMIT_NPROC).")
    file_size_mb: int = Field(default=8, gt=0, description="Largest file a program may write (RLIMIT_FSIZE).")
    tmpfs_mb: int = Field(default=16, gt=0, description="Size of the private /tmp (warm and bwrap backends).")
    tmp_inodes: int = Field(
        default=4096, gt=0,
        description="Files and directories the private /tmp can hold (tmpfs nr_inodes; where the "
                    "scoring process can mount, else unbounded in count — see docs/reward.md).")
    run_memory_mb: int = Field(
        default=1024, gt=0,
        description="Memory of one run in all — its processes, /tmp files, pipe buffers, kernel "
                    "objects — bounded by a memory cgroup per slot (the warm server's own ~20 MB "
                    "included); a run past it is killed and scored limit_exceeded. See `cgroup`.")
    cgroup: Literal["auto", "require", "off"] = Field(
        default="auto",
        description="A memory cgroup per slot: auto uses one where this process can make it "
                    "(root with cgroup v1, or delegated cgroup v2) and else falls back to "
                    "per-process limits (docs/reward.md); require refuses to start without; off never.")
    output_bytes: int = Field(
        default=1 << 20, gt=0,
        description="Output captured per stream; a program printing more is cut and killed.")
    uid_base: int = Field(
        default=61000, ge=1000,
        description="Sandboxes run as uids from uid_base up; each slot leases a uid no other sandbox "
                    "on this kernel holds (uid_lease_dir).")
    uid_lease_dir: str = Field(
        default="/run/ringrl/sandbox-uids",
        description="Lock files of the leased sandbox uids; every scoring process on one kernel must "
                    "see the same folder (containers: a shared volume), or two may share a uid.")


class RewardConfig(Section):
    math_workers: int = Field(
        default=1, gt=0, description="Math-Verify worker processes per scoring process.")
    math_timeout_s: float = Field(
        default=5.0, gt=0,
        description="Wall clock per math item; a worker past it is killed and the item is `timeout`.")
    answer_pattern: str | None = Field(
        default=None,
        description="Regex whose last match (group 1) is the math answer; empty: the last \\boxed{}.")
    code_concurrency: int = Field(
        default=2, gt=0, description="Sandboxed programs run at once per scoring process.")
    code_whole_text: bool = Field(
        default=False,
        description="With no fenced ```python block, run the whole response instead of `no_answer`.")
    sandbox: SandboxConfig = Field(default_factory=SandboxConfig, description="Program sandbox.")
    host: str = Field(default="127.0.0.1", description="Bind address of the scoring HTTP server.")
    port: int = Field(default=8100, ge=0, le=65535, description="Port of the scoring HTTP server.")
    max_request_bytes: int = Field(
        default=8 << 20, gt=0, description="Larger /v1/score bodies are refused with 413.")
    max_batch: int = Field(default=1024, gt=0, description="Most items in one /v1/score request.")
    max_response_chars: int = Field(
        default=1_000_000, gt=0,
        description="Longest response scored. Over it: 422 naming items.N.response on /v1/score; a "
                    "stream item scores 0 as `limit_exceeded`.")
    max_answer_chars: int = Field(
        default=10_000, gt=0, description="Longest reference answer of a math item (422 over it).")
    max_io_tests: int = Field(
        default=256, gt=0,
        description="Most stdin/stdout tests in one code item; each is a sandbox run of up to "
                    "sandbox.wall_s (422 over it; raise it for datasets with more tests a problem).")
    max_test_chars: int = Field(
        default=1_000_000, gt=0,
        description="Longest stdin, expected stdout or test_code of a code item (422 over it; a "
                    "request is also bounded by max_request_bytes).")
    workers: int = Field(
        default=1, ge=0, description="Stream reward-worker processes started by `ringrl serve reward`.")
    read_batch: int = Field(default=16, gt=0, description="Groups a stream worker reads at a time.")
    metrics_port: int = Field(
        default=0, ge=0, le=65535,
        description="Port for /metrics of stream workers (0: none; worker i uses port + i).")
