"""Engine glue for the weight transports (protocol/transport): load a received version, follow the run's."""

from __future__ import annotations

import logging

import redis

from protocol.streams import RunKeys
from protocol.supervise import Supervisor
from protocol.transport import WeightError, WeightReceiver, WeightVersion
from protocol.transport.http_pull import HttpReceiver
from rollout_service.engine import Engine

log = logging.getLogger("ringrl.rollout")


def load_version(engine: Engine, receiver: WeightReceiver, record: WeightVersion,
                 buffer: bool = True) -> tuple[int, float]:
    """Receive `record`'s version and load it in place; returns (version loaded, load seconds).

    Buffered, the learner is released before the engine drains in-flight requests and loads, so it
    trains the next step meanwhile. Streamed (`buffer=False`), buckets are loaded as they land (no
    second copy of the model); a checksum mismatch then raises inside the load and the engine is
    marked unhealthy.
    """
    got = receiver.receive(record, buffer)
    return got.version, engine.update_weights(lambda: got.tensors, got.version, got.checksum)


def follow_weights(engine: Engine, client: redis.Redis, keys: RunKeys, supervisor: Supervisor,
                   receiver: HttpReceiver | None = None) -> None:
    """Pull every version the learner publishes (and the current one, for a late joiner), as a
    supervised loop. The engine runs what the learner last published: a learner that resumed from
    a checkpoint older than the engine's version (or re-trained a version to different bits) is
    followed back, by version and checksum.

    The learner writes the WeightVersion record to the `keys.weights` hash and PUBLISHes on the
    channel of the same name; the message is only a wake-up, the hash is the truth, so a missed
    message (Redis restarted, link cut) costs at most one poll interval.
    """
    receiver = receiver or HttpReceiver()

    def catch_up() -> None:
        raw = client.hgetall(keys.weights)
        if not raw:
            return
        record = WeightVersion.from_redis(raw)
        if record.version == engine.version and (not record.checksum or record.checksum == engine.checksum):
            return
        if record.version < engine.version:  # the learner resumed from an older checkpoint
            log.warning("weights: learner went back from version %d to %d (resumed from a checkpoint); "
                        "following it", engine.version, record.version)
        _, seconds = load_version(engine, receiver, record)
        log.info("weights: loaded version %d in %.2fs", record.version, seconds)

    def run() -> None:
        pubsub = client.pubsub(ignore_subscribe_messages=True)
        pubsub.subscribe(keys.weights)
        try:
            while not supervisor.stop.is_set():
                try:
                    catch_up()
                except WeightError as exc:  # a bad publication: report, keep serving the old version
                    log.error("weights: version not loaded: %s", exc)
                if engine.error is not None:
                    supervisor.give_up(f"engine: {engine.error}")
                    return
                pubsub.get_message(timeout=5.0)
        finally:
            pubsub.close()

    supervisor.start("rollout-follow-weights", run)
