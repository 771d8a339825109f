"""Redis ACL users of a deployment: one per part, each confined to the run keys and channels.

`users_acl` is the whole ACL file (`redis-server --aclfile`); deploy/ generates it with
`ringrl init-secrets` (compose) and the Helm chart renders the same lines from its Secret (a test
holds them equal). A client without a password can do nothing.

`default` is the operator's admin login, with a password of its own, and not switched off: Redis
7.0 (Debian 12's) replays the transactions of its append-only file as the default user, and with
that user off it drops every MULTI/EXEC — the audited appends, the forward script's effects — when
it restarts (found by the multi-host fault run; tests/protocol/test_redis_acl.py holds it).
"""

from __future__ import annotations

from collections.abc import Mapping

PARTS = ("learner", "rollout", "reward", "driver")
"""Parts that talk to Redis; each logs in as the user of its name (redis.username)."""

ADMIN_USER = "default"
"""The operator's login (and the one Redis replays its AOF as): everything."""

PROBE_USER = "probe"
"""May PING and nothing else: what a container health check logs in as."""

PART_RULES = ("resetkeys ~ringrl:* resetchannels &ringrl:* nocommands +@read +@write +@stream +@hash "
              "+@set +@keyspace +@pubsub +@transaction +@connection +@scripting -@dangerous -@admin")
"""What a part may do: data commands on `ringrl:*` keys and channels (streams, hashes, sets, the
forward script); nothing that reconfigures, inspects or wipes the server (CONFIG, KEYS, FLUSHALL,
DEBUG, MONITOR, CLIENT KILL, ...)."""

PROBE_RULES = "resetkeys resetchannels nocommands +ping"


def user_line(name: str, password: str, rules: str) -> str:
    if not password or any(c.isspace() for c in password) or not password.isprintable():
        raise ValueError(f"{name}: a Redis password is one printable word")
    return f"user {name} on >{password} {rules}"


def users_acl(passwords: Mapping[str, str]) -> str:
    """The ACL file for `passwords` (one per name in PARTS, plus ADMIN_USER and PROBE_USER)."""
    lines = [user_line(ADMIN_USER, passwords[ADMIN_USER], "~* &* +@all")]
    lines += [user_line(part, passwords[part], PART_RULES) for part in PARTS]
    lines.append(user_line(PROBE_USER, passwords[PROBE_USER], PROBE_RULES))
    return "\n".join(lines) + "\n"
