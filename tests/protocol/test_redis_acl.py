"""Redis with the deployment's ACL file (`ringrl init-secrets`): each part logs in as its own user
and can run the pipeline's commands on the run's keys, nothing else; strangers can do nothing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import redis

from protocol.config import ConfigError
from protocol.config.redis import RedisConfig
from protocol.queue import StreamConsumer, StreamProducer, queue_client
from protocol.redis_acl import PARTS
from protocol.streams import RunKeys
from tests.conftest import RedisProcess
from tests.protocol.strategies import make_group


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> tuple[RedisProcess, Path]:
    """Redis as deployed: the ACL file init-secrets writes, append-only file fsynced per write."""
    secrets = tmp_path_factory.mktemp("secrets")
    out = subprocess.run([str(Path(sys.executable).parent / "ringrl"), "init-secrets", str(secrets)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    server = RedisProcess(str(tmp_path_factory.mktemp("redis")), persist=True,
                          args=("--aclfile", str(secrets / "redis" / "users.acl")))
    yield server, secrets
    server.stop()


def _part(secured: tuple[RedisProcess, Path], part: str) -> redis.Redis:
    server, secrets = secured
    return queue_client(RedisConfig(url=server.url, username=part,
                                    password_file=str(secrets / part / "redis-password")))


@pytest.mark.parametrize("part", PARTS)
def test_each_part_runs_the_pipeline_commands_on_the_run_keys(secured: tuple[RedisProcess, Path],
                                                              part: str) -> None:
    client = _part(secured, part)
    keys = RunKeys(f"acl-{part}")
    producer = StreamProducer(client, keys.rollouts, audit_set=keys.audit_written)
    consumer = StreamConsumer(client, keys.rollouts, "g", "c1")
    consumer.ensure_group()
    producer.produce([make_group(group_id=f"{part}-g1")])
    entries = consumer.read(10, block_ms=100)
    assert [e.group.group_id for e in entries] == [f"{part}-g1"]
    assert consumer.forward([entries[0].id], keys.scored, [b"x"]) == 1  # the Lua hand-off
    producer.produce([make_group(group_id=f"{part}-g2")])
    second = consumer.read(10, block_ms=100)
    assert consumer.ack([e.id for e in second]) == 1 and consumer.pending() == 0
    client.hset(keys.plan, mapping={"stage": "math"})
    assert client.exists(keys.plan) == 1 and client.publish(keys.weights, b"wake") >= 0
    for forbidden in (("FLUSHALL",), ("KEYS", "*"), ("CONFIG", "GET", "*"), ("CLIENT", "LIST"), ("BGSAVE",),
                      ("SET", "not-ringrl", "1"), ("ACL", "LIST"), ("SHUTDOWN",)):
        with pytest.raises(redis.exceptions.NoPermissionError):
            client.execute_command(*forbidden)


def test_strangers_and_wrong_passwords_get_nothing(secured: tuple[RedisProcess, Path],
                                                   tmp_path: Path) -> None:
    server, secrets = secured
    with pytest.raises(redis.AuthenticationError):
        redis.Redis.from_url(server.url).xlen("ringrl:x:rollouts")
    wrong = tmp_path / "pw"
    wrong.write_text("not-the-password")
    with pytest.raises(ConfigError, match="^redis.username/password_file: Redis refused the login"):
        queue_client(RedisConfig(url=server.url, username="learner", password_file=str(wrong)))
    probe = redis.Redis.from_url(server.url, username="probe",
                                 password=(secrets / "redis" / "probe-password").read_text().strip())
    assert probe.ping()
    with pytest.raises(redis.exceptions.NoPermissionError):
        probe.xlen("ringrl:x:rollouts")


def test_a_refused_login_ends_a_service_with_one_line(secured: tuple[RedisProcess, Path], tmp_path: Path) -> None:
    server, _ = secured
    (tmp_path / "pw").write_text("wrong")
    config = tmp_path / "run.yaml"
    config.write_text(f"redis: {{url: '{server.url}', username: driver, password_file: '{tmp_path / 'pw'}'}}\n"
                      f"run: {{output_dir: '{tmp_path}'}}\n")
    out = subprocess.run([str(Path(sys.executable).parent / "ringrl"), "serve", "driver", str(config)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip().splitlines() == [
        "error: redis.username/password_file: Redis refused the login (invalid username-password pair "
        "or user is disabled.)"]


def test_transactions_survive_a_restart_under_the_acl(secured: tuple[RedisProcess, Path]) -> None:
    """Redis 7.0 replays its append-only file as the `default` user: with that user switched off
    it dropped every MULTI/EXEC (the audited appends, the hand-off script's effects) on restart."""
    server, _ = secured
    client = _part(secured, "rollout")
    keys = RunKeys("acl-restart")
    producer = StreamProducer(client, keys.rollouts, audit_set=keys.audit_written)
    producer.produce_raw([b"payload"], ids=["g-restart"])  # XADD + SADD in one MULTI/EXEC
    server.kill()
    server.start()
    after = _part(secured, "driver")
    assert after.smembers(keys.audit_written) == {b"g-restart"} and after.xlen(keys.rollouts) == 1
