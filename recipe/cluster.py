"""Where `ringrl train` runs its actors: a local Ray it starts, or a Ray cluster it joins.

Locally everything is on loopback and the CPU engine's settings are set for every actor. On a
cluster the driver joins as Ray expects (no resources of its own to declare), its Redis listens on an
address the other nodes reach and asks for a password generated for the run, and the actors keep
their node's environment (a GPU worker's settings are not overwritten by the head's) plus
`cluster.env`.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from protocol.config.train import TrainConfig
from protocol.queue import PASSWORD_ENV
from recipe.local_redis import LocalRedis, start_local_redis

LOCAL_ENGINE_ENV = {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_HOST_IP": "127.0.0.1"}
"""A local Ray on this machine: vLLM's CPU engine with a small KV cache, on loopback."""
ACTOR_ENV = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "TOKENIZERS_PARALLELISM": "false"}
"""Everywhere: the engine is driven in its actor's own process, by its own thread."""


@dataclass
class Placement:
    """The Ray the run uses and the Redis its actors share."""

    joined: bool  # a cluster that was running before this run, not a local Ray started for it
    redis_url: str
    redis: LocalRedis | None  # the server this driver started, if it started one


def cluster_address(cfg: TrainConfig) -> str:
    return cfg.cluster.address or os.environ.get("RAY_ADDRESS", "")


def start_ray(cfg: TrainConfig, out: Path) -> Placement:
    """Start or join Ray, and a Redis for the run unless `redis.url` names one."""
    import ray
    import ray.util

    address = cluster_address(cfg)
    host = cfg.cluster.advertise_host or (ray.util.get_node_ip_address() if address else "127.0.0.1")
    env = {**ACTOR_ENV, **({} if address else LOCAL_ENGINE_ENV), **cfg.cluster.env}
    local: LocalRedis | None = None
    if not cfg.redis.url:
        # Off loopback the queue gets a password made for this run; actors read it from their
        # environment (what Ray's token-protected job metadata holds), never from the config.
        password = secrets.token_urlsafe(24) if host != "127.0.0.1" else ""
        local = start_local_redis(out / "redis", host=host, password=password)
        if password:
            env[PASSWORD_ENV] = password
    os.environ.update(env)  # the driver's own engines (held-out measures) and Redis client
    try:
        if address:
            ray.init(address=address, log_to_driver=False, configure_logging=False,
                     runtime_env={"env_vars": env})
        else:
            ray.init(num_cpus=cfg.cluster.num_cpus, include_dashboard=False, log_to_driver=False,
                     configure_logging=False, runtime_env={"env_vars": env})
    except BaseException:
        if local is not None:
            local.stop()
        raise
    return Placement(bool(address), cfg.redis.url or local.url, local)  # type: ignore[union-attr]
