"""API keys and roles: who may post events, ask for priority, read the city, steer it, or manage keys.

A key is a random token shown once; the store keeps only its SHA-256. A device key
names the device ids (or id prefixes) it may speak for, so one compromised detector
cannot report for the rest of the city. Priority at the signals is asked only by
registered emergency vehicles: an `emergency` key names the vehicles it speaks for
(one transponder, or a fleet's AVL server with a prefix) and may do nothing else, and
no sensor's key can ever ask for green. The last active admin key cannot be revoked:
a city must never lock itself out of its own brain.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass

from urbanbrain.store import Store

ROLES = ("device", "emergency", "viewer", "operator", "admin")
READ = frozenset({"viewer", "operator", "admin"})
STEER = frozenset({"operator", "admin"})
ADMIN = frozenset({"admin"})
POST_EVENTS = frozenset({"device", "emergency", "admin"})  # which kinds each may post: CityRuntime's check
ROUTES = frozenset({"emergency", "admin"})  # a navigation unit reads its vehicle's route
CONFINED = frozenset({"device", "emergency"})  # keys that speak only for the ids they name
NAME_PATTERN = re.compile(r"^[A-Za-z0-9_.@-]{1,100}$")


class KeyError_(ValueError):
    """A key that cannot be made as asked (bad name, role, or a name already taken)."""


class KeyNotFound(LookupError):
    """No active key of that name."""


class LastAdmin(ValueError):
    """Revoking this key would leave no active admin key."""


@dataclass(frozen=True)
class Principal:
    name: str
    role: str
    devices: tuple[str, ...]  # id prefixes a device key may speak for; empty for other roles

    def may_speak_for(self, device_id: str) -> bool:
        if self.role not in CONFINED:
            return True
        return any(device_id == p or (p.endswith("*") and device_id.startswith(p[:-1])) for p in self.devices)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def create_key(store: Store, name: str, role: str, devices: list[str] | None = None) -> str:
    """Make a key and return it (the only time it is seen in clear)."""
    if not NAME_PATTERN.match(name):
        raise KeyError_(f"key name {name!r}: use 1-100 letters, digits, '_', '.', '@' or '-'")
    if role not in ROLES:
        raise KeyError_(f"role {role!r}: choose from {', '.join(ROLES)}")
    devices = list(devices or [])
    if role in CONFINED and not devices:
        what = "device ids" if role == "device" else "emergency vehicles"
        raise KeyError_(f"a {role} key needs the {what} it may speak for (a trailing * matches a prefix)")
    if role not in CONFINED and devices:
        raise KeyError_(f"only device and emergency keys are confined to devices, not {role} keys")
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


def revoke_key(store: Store, name: str) -> None:
    """Revoke a key at once; refuses (LastAdmin) to revoke the last active admin key."""
    if not store.revoke_key(name):
        if any(k["name"] == name and k["revoked_at"] is None for k in store.keys()):
            raise LastAdmin(f"{name!r} is the last active admin key: make another admin key first")
        raise KeyNotFound(f"no active key named {name!r}")
