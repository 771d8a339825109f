"""Redis ACL users of a deployment: one per part, each confined to the run keys and channels.

`users_acl` is the whole ACL file (`redis-server --aclfile`); deploy/ generates it with
`ringrl init-secrets` (compose) and the Helm chart renders the same lines from its Secret (a test
holds them equal). The `default` user is off, so a client without a password can do nothing.
"""

from __future__ import annotations

from collections.abc import Mapping

PARTS = ("learner", "rollout", "reward", "driver")
"""Parts that talk to Redis; each logs in as the user of its name (redis.username)."""

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
    """The ACL file for `passwords` (one per name in PARTS, plus PROBE_USER)."""
    lines = ["user default off nopass resetkeys resetchannels nocommands"]
    lines += [user_line(part, passwords[part], PART_RULES) for part in PARTS]
    lines.append(user_line(PROBE_USER, passwords[PROBE_USER], PROBE_RULES))
    return "\n".join(lines) + "\n"
