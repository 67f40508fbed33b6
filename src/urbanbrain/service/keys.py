"""API keys and roles: who may post events, read the city, steer it, or manage keys.

A key is a random token shown once; the store keeps only its SHA-256. A device key
names the device ids (or id prefixes) it may speak for, so one compromised detector
cannot report for the rest of the city.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass

from urbanbrain.store import Store

ROLES = ("device", "viewer", "operator", "admin")
READ = frozenset({"viewer", "operator", "admin"})
STEER = frozenset({"operator", "admin"})
ADMIN = frozenset({"admin"})
POST_EVENTS = frozenset({"device", "admin"})
_NAME = re.compile(r"^[A-Za-z0-9_.@-]{1,100}$")


class KeyError_(ValueError):
    """A key that cannot be made as asked (bad name, role, or a name already taken)."""


@dataclass(frozen=True)
class Principal:
    name: str
    role: str
    devices: tuple[str, ...]  # id prefixes a device key may speak for; empty for other roles

    def may_speak_for(self, device_id: str) -> bool:
        if self.role != "device":
            return True
        return any(device_id == p or (p.endswith("*") and device_id.startswith(p[:-1])) for p in self.devices)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def create_key(store: Store, name: str, role: str, devices: list[str] | None = None) -> str:
    """Make a key and return it (the only time it is seen in clear)."""
    if not _NAME.match(name):
        raise KeyError_(f"key name {name!r}: use 1-100 letters, digits, '_', '.', '@' or '-'")
    if role not in ROLES:
        raise KeyError_(f"role {role!r}: choose from {', '.join(ROLES)}")
    devices = list(devices or [])
    if role == "device" and not devices:
        raise KeyError_("a device key needs the device ids it may speak for (a trailing * matches a prefix)")
    if role != "device" and devices:
        raise KeyError_(f"only device keys are confined to devices, not {role} keys")
    key = "ub_" + secrets.token_urlsafe(32)
    if not store.add_key(name, role, hash_key(key), key[:10], devices):
        raise KeyError_(f"a key named {name!r} exists already (revoked keys keep their names; choose another)")
    return key


def authenticate(store: Store, key: str | None) -> Principal | None:
    if not key:
        return None
    row = store.key_by_hash(hash_key(key))
    if row is None:
        return None
    return Principal(row["name"], row["role"], tuple(row["devices"]))
