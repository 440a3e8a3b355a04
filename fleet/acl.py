"""Redis ACL users per fleet role: who may read and write which keys, built from the key prefix.

Roles (``P`` is the replay prefix, default ``mf``):

- ``actor``: appends episodes through the replay store's Lua script, writes its heartbeat (``P:hb``), reads the
  weight manifests and versions and the rollout state. It can read no episode data (``P:ep:*``: metadata,
  low-dim arrays, frames) and write no weights, rollout or learner state.
- ``learner``: reads episodes, the index, stats and the event stream (``P:events``, with a consumer group),
  writes weight versions (``P:weights:*``), its status (``P:learner:*``) and version events. It writes no
  episode and no rollout state.
- ``dashboard``: reads stats, the status board, the index, the event stream and the weight index; counts the
  dead letters without reading them. Writes nothing.
- ``admin``: everything (operators, ``fleet`` maintenance commands, the rollout controller).

Every rule is a selector of (commands, keys): a command is allowed when one selector allows the command on all
its keys. Redis checks each key a Lua script touches against the calling user, so the actor's selectors are
exactly the commands and keys the append script (fleet/replay_scripts.py) uses: the script reads eviction
bookkeeping from ``P:acct:*`` (never from ``P:ep:*``) for that reason. Known limit: whoever may append may also
delete or overwrite episode keys directly (eviction runs inside every append); the actor credential is trusted
with replay integrity, never with weights.

Passwords go to Redis as sha256 hashes (``#<hex>``), so ACL lines and config files hold no secret.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping
from pathlib import Path

import redis

from fleet.config import RedisConfig

ROLES = ("actor", "learner", "dashboard", "admin")
ROLE_PASSWORD_ENV = "MOLMOFLEET_REDIS_{role}_PASSWORD"  # e.g. MOLMOFLEET_REDIS_ACTOR_PASSWORD
ROLE_PASSWORD_FILE = "redis-{role}.password"  # in RedisConfig.users_dir (what `fleet keys generate` writes)

# Rules per role, ``{P}`` standing for the key prefix: plain lines are split into rules, a "(...)" line is one
# selector (commands and the keys they may touch together). Readers get +@read confined to read-only key
# patterns (the patterns, not the command list, are the boundary); writers get explicit commands per key group.
_CONNECT = "+ping +select"  # AUTH and HELLO are always allowed
_READ = "+@read -@dangerous -scan -randomkey"
_RULES: dict[str, list[str]] = {
    "admin": ["~* &* +@all"],
    "actor": [
        f"resetchannels -@all {_CONNECT} +eval +evalsha +script|load",
        # reads: the weights index, the rollout state, and what the append script reads back
        "+get +hget +hmget +zrange +zscore +zcard",
        "%R~{P}:weights:manifests %R~{P}:weights:versions %R~{P}:rollout:state",
        "%R~{P}:stats %R~{P}:acct:* %R~{P}:idx:reservoir",
        "(+sadd %W~{P}:seen)",
        # an append's payloads are SET under P:stage:* (with a TTL) and PERSISTed and RENAMEd into P:ep:* by
        # the script right after (fleet/replay_scripts.py), so staged keys are never visible; eviction DELs an
        # episode and its bookkeeping in one command: one selector for the keys these commands touch together
        "(+set +hset +del +rename +exists +persist %W~{P}:ep:* %W~{P}:acct:* %RW~{P}:stage:*)",
        "(+zadd +zrem %W~{P}:idx:*)",
        "(+zpopmin %RW~{P}:idx:evictable)",
        "(+hincrby +zadd %RW~{P}:stats %RW~{P}:stats:*)",
        "(+xadd %W~{P}:events %W~{P}:deadletter)",
        "(+hset %W~{P}:hb)",
    ],
    "learner": [
        f"resetchannels -@all {_CONNECT} {_READ} +multi +exec +discard",
        "%R~{P}:ep:* %R~{P}:idx:* %R~{P}:stats %R~{P}:stats:* %R~{P}:events %R~{P}:deadletter",
        "%R~{P}:weights:* %R~{P}:hb %R~{P}:learner:* %R~{P}:versions:events %R~{P}:rollout:*",
        "(+xgroup|create +xgroup|createconsumer +xreadgroup +xack +xpending +xclaim +xautoclaim ~{P}:events)",
        "(+incr +incrby +hset +zadd ~{P}:weights:seq ~{P}:weights:manifests ~{P}:weights:versions)",
        "(+set +xadd ~{P}:learner:* %W~{P}:versions:events)",
    ],
    "dashboard": [
        f"resetchannels -@all {_CONNECT} {_READ}",
        "%R~{P}:stats %R~{P}:stats:* %R~{P}:idx:* %R~{P}:events %R~{P}:hb %R~{P}:learner:*",
        "%R~{P}:versions:events %R~{P}:rollout:* %R~{P}:weights:manifests %R~{P}:weights:versions",
        "(+xlen %R~{P}:deadletter)",  # the count only: dead-letter payloads are raw episode bytes
    ],
}


def role_rules(role: str, prefix: str = "mf") -> list[str]:
    """The ACL SETUSER rules of ``role`` (no password, no on/off): a root selector, then ``(...)`` selectors."""
    if role not in _RULES:
        raise ValueError(f"unknown role {role!r}; roles are {ROLES}")
    if not re.fullmatch(r"[A-Za-z0-9_.:-]+", prefix):  # a glob character in it would widen every pattern
        raise ValueError(f"key prefix {prefix!r}: use letters, digits and _ . : - only")
    out: list[str] = []
    for line in _RULES[role]:
        line = line.replace("{P}", prefix)
        out += [line] if line.startswith("(") else line.split()
    return out


def password_hash(password: str) -> str:
    """What Redis stores for a password (``#<sha256 hex>`` in ACL rules)."""
    return hashlib.sha256(password.encode()).hexdigest()


def user_line(user: str, password: str, rules: list[str]) -> str:
    """One ``user`` line of an ACL file or redis.conf (the password only as its hash)."""
    return " ".join(["user", user, "on", f"#{password_hash(password)}", *rules])


def acl_file(passwords: Mapping[str, str], prefix: str = "mf", default_user: str | None = None) -> str:
    """An ACL file (``aclfile``; infra renders its users.acl with it) for the roles in ``passwords``.

    ``default_user``: None turns the default user off (every client must name its role); a password makes the
    default user an admin with it (password-only clients keep working).
    """
    unknown = set(passwords) - set(ROLES)
    if unknown:
        raise ValueError(f"unknown roles {sorted(unknown)}; roles are {ROLES}")
    lines = [
        "user default off resetchannels -@all"
        if default_user is None
        else user_line("default", default_user, role_rules("admin", prefix))
    ]
    lines += [
        user_line(role, passwords[role], role_rules(role, prefix)) for role in ROLES if role in passwords
    ]
    return "\n".join(lines) + "\n"


def apply_acl(
    client: redis.Redis, passwords: Mapping[str, str], prefix: str = "mf", disable_default: bool = False
) -> None:
    """Create or replace the role users on a running server (``ACL SETUSER``; ``ACL SAVE`` is the caller's)."""
    for role, password in passwords.items():
        rules = role_rules(role, prefix)
        client.execute_command("ACL", "SETUSER", role, "reset", "on", f"#{password_hash(password)}", *rules)
    if disable_default:
        client.execute_command("ACL", "SETUSER", "default", "off")


def role_passwords(cfg: RedisConfig) -> dict[str, str]:
    """Role -> password, from ``MOLMOFLEET_REDIS_<ROLE>_PASSWORD`` or ``<users_dir>/redis-<role>.password``."""
    out = {}
    for role in ROLES:
        value = os.environ.get(ROLE_PASSWORD_ENV.format(role=role.upper()))
        if not value and cfg.users_dir:
            path = Path(cfg.users_dir).expanduser() / ROLE_PASSWORD_FILE.format(role=role)
            if path.exists():
                value = path.read_text().strip()
        if value:
            out[role] = value
    return out


def credentials(cfg: RedisConfig) -> tuple[str | None, str | None]:
    """(username, password) a component connects with: its own password, else its role's password."""
    password = cfg.password()
    if password is None and cfg.user:
        password = role_passwords(cfg).get(cfg.user)
    return cfg.user, password
