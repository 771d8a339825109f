"""`ringrl train` on Ray: which cluster, how many engines, what each actor asks the scheduler for."""

from __future__ import annotations

from pydantic import Field

from protocol.config.base import Section


class ClusterConfig(Section):
    """Where the embedded run's actors live. Defaults: a local Ray on this machine's two cores. (What
    a learner rank asks for is `learner.rank_num_cpus/gpus`: the learner starts its own ranks.)"""

    address: str = Field(
        default="",
        description="Ray cluster to join (`auto`, `host:port`, `ray://host:10001`); empty: RAY_ADDRESS if "
                    "set (a Ray job sets it), else a local Ray is started with num_cpus.")
    num_cpus: int = Field(default=2, gt=0, description="CPUs of the local Ray (unused when joining a cluster).")
    advertise_host: str = Field(
        default="",
        description="Address other nodes reach this driver's Redis at; empty: 127.0.0.1 on a local Ray, "
                    "the driver's node IP on a cluster (the learner always advertises its own node's IP).")
    engines: int = Field(
        default=1, gt=0,
        description="Rollout engine actors per stage, fed from one prompt stream; weights reach all of "
                    "them in one broadcast group (learner + engines) or by HTTP pull.")
    engine_cpus: float = Field(default=1.0, ge=0, description="CPUs each engine actor requests.")
    engine_gpus: float = Field(default=0.0, ge=0, description="GPUs each engine actor requests.")
    reward_cpus: float = Field(default=0.0, ge=0, description="CPUs each reward worker actor requests.")
    engine_resources: dict[str, float] = Field(
        default_factory=dict,
        description="Custom Ray resources each engine actor requests, e.g. {engine_node: 1} to place "
                    "engines on nodes started with `ray start --resources '{\"engine_node\": N}'`.")
    env: dict[str, str] = Field(
        default_factory=dict,
        description="Environment variables every actor gets on top of its node's own (on a cluster the "
                    "driver's environment is not copied: per-node settings stay the node's).")
    max_engine_restarts: int = Field(
        default=3, ge=0,
        description="Times Ray restarts a dead engine actor in a stage; a restarted engine pulls the "
                    "newest weights and its unfinished prompts are issued again (http weight transport).")
