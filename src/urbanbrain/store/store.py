"""The store: SQLite by default (a file in the data directory), PostgreSQL by URL.

The schema is created and upgraded by Alembic migrations shipped in the package, so
a city's database survives upgrades of the software. Every write that acknowledges
something to a device or an operator is committed before the answer goes out:
restarting the service loses nothing that was acknowledged.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, delete, event, func, insert, or_, select, tuple_, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError

from urbanbrain.store.schema import (
    alerts,
    api_keys,
    audit,
    commands,
    controller_modes,
    decisions,
    device_events,
    event_conflicts,
    kpi_minutes,
    webhook_deliveries,
)

MIGRATIONS = Path(__file__).parent / "migrations"


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(moment: datetime) -> datetime:
    """SQLite gives back naive datetimes; the store writes UTC."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


@dataclass(frozen=True)
class StoredEvent:
    device_id: str
    seq: int
    kind: str
    time: float
    payload: str  # JSON
    late: bool = False  # behind the brain's clock when it arrived (see urbanbrain.core.clock)


class EventConflict(ValueError):
    """Resends whose (device, seq) is stored with other content: the batch is refused,
    nothing of it is stored, and these copies are kept in `event_conflicts`."""

    def __init__(self, conflicts: list[StoredEvent]):
        self.conflicts = conflicts
        super().__init__(f"{len(conflicts)} events conflict with stored ones")


_MATCH_CHUNK = 500  # (device, seq) pairs per lookup of stored copies


def sqlite_url(path: Path) -> str:
    return f"sqlite+pysqlite:///{path}"


def normalise_url(url: str) -> str:
    """Accept plain postgresql:// URLs (as a city's DBA writes them) and use psycopg 3 for them."""
    for plain in ("postgresql://", "postgres://"):
        if url.startswith(plain):
            return "postgresql+psycopg://" + url[len(plain):]
    return url


class Store:
    def __init__(self, url: str):
        self.url = normalise_url(url)
        self.engine: Engine = create_engine(self.url, future=True)
        self.dialect = self.engine.dialect.name
        if self.dialect == "sqlite":
            event.listen(self.engine, "connect", _sqlite_pragmas)

    def migrate(self) -> None:
        """Bring the schema to the newest migration (creates it on an empty database)."""
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        with self.engine.begin() as connection:
            config.attributes["connection"] = connection
            command.upgrade(config, "head")

    def close(self) -> None:
        self.engine.dispose()

    def _insert(self, table):
        return (sqlite if self.dialect == "sqlite" else postgresql).insert(table)

    # -- device events ---------------------------------------------------------------

    def append_events(self, events: Sequence[StoredEvent], key_name: str = "") -> list[StoredEvent]:
        """Store the events not stored before (by device and sequence number), in one
        transaction; returns those that were new, in order. The database decides what
        is new (insert, skipping conflicts, returning what went in), so two services
        or a resend racing each other cannot store an event twice. A resend must be
        the same event: one with other content raises EventConflict, the whole batch
        is rolled back, and the conflicting copies are kept (with `key_name`, who sent
        them) for inspection."""
        if not events:
            return []
        now = utcnow()
        statement = (self._insert(device_events).on_conflict_do_nothing(index_elements=["device_id", "seq"])
                     .returning(device_events.c.device_id, device_events.c.seq))
        conflicts: list[StoredEvent] = []
        with self.engine.connect() as connection:
            with connection.begin() as transaction:
                rows = connection.execute(statement, [
                    {"device_id": e.device_id, "seq": e.seq, "kind": e.kind, "time": e.time, "received_at": now,
                     "payload": e.payload, "late": e.late} for e in events])
                stored = {(device_id, seq) for device_id, seq in rows}
                fresh, repeated = [], []
                for e in events:
                    if (e.device_id, e.seq) in stored:
                        stored.discard((e.device_id, e.seq))  # a second copy in the same batch is a repeat
                        fresh.append(e)
                    else:
                        repeated.append(e)
                conflicts = self._conflicting(connection, repeated)
                if conflicts:
                    transaction.rollback()
            if conflicts:
                with connection.begin():
                    connection.execute(insert(event_conflicts), [
                        {"device_id": e.device_id, "seq": e.seq, "key_name": key_name[:100], "received_at": now,
                         "payload": e.payload} for e in conflicts])
        if conflicts:
            raise EventConflict(conflicts)
        return fresh

    @staticmethod
    def _conflicting(connection, repeated: list[StoredEvent]) -> list[StoredEvent]:
        """The repeats whose stored copy says something else (the version they were
        written in aside)."""
        conflicts = []
        for start in range(0, len(repeated), _MATCH_CHUNK):
            chunk = repeated[start:start + _MATCH_CHUNK]
            keys = {(e.device_id, e.seq) for e in chunk}
            rows = connection.execute(select(device_events.c.device_id, device_events.c.seq, device_events.c.payload)
                                      .where(tuple_(device_events.c.device_id, device_events.c.seq).in_(keys)))
            stored = {(device_id, seq): _content(payload) for device_id, seq, payload in rows}
            conflicts += [e for e in chunk if stored.get((e.device_id, e.seq)) != _content(e.payload)]
        return conflicts

    def event_conflicts(self, limit: int = 1000) -> list[dict[str, Any]]:
        """Refused conflicting resends, newest first."""
        query = select(event_conflicts).order_by(event_conflicts.c.id.desc()).limit(limit)
        with self.engine.connect() as connection:
            return [dict(row._mapping) for row in connection.execute(query)]

    def events(self, device_id: str | None = None, limit: int = 1000) -> list[StoredEvent]:
        query = select(device_events.c.device_id, device_events.c.seq, device_events.c.kind, device_events.c.time,
                       device_events.c.payload, device_events.c.late).order_by(device_events.c.id).limit(limit)
        if device_id is not None:
            query = query.where(device_events.c.device_id == device_id)
        with self.engine.connect() as connection:
            return [StoredEvent(*row) for row in connection.execute(query)]

    def count_events(self) -> int:
        with self.engine.connect() as connection:
            return connection.execute(select(func.count()).select_from(device_events)).scalar_one()

    def device_summary(self) -> list[tuple[str, str, float, datetime, int]]:
        """(device_id, kind, last city time, last received, events) per device."""
        query = (select(device_events.c.device_id, func.max(device_events.c.kind), func.max(device_events.c.time),
                        func.max(device_events.c.received_at), func.count())
                 .group_by(device_events.c.device_id))
        with self.engine.connect() as connection:
            return [tuple(row) for row in connection.execute(query)]

    # -- commands --------------------------------------------------------------------

    def add_commands(self, rows: Iterable[tuple[str, str, float, dict[str, Any]]]) -> list[int]:
        """Store (controller, intersection, time, command) rows; returns their ids."""
        ids = []
        now = utcnow()
        with self.engine.begin() as connection:
            for controller, intersection, time, payload in rows:
                result = connection.execute(insert(commands).values(
                    controller=controller, intersection=intersection, time=time, created_at=now,
                    payload=json.dumps(payload)).returning(commands.c.id))
                ids.append(result.scalar_one())
        return ids

    def commands_after(self, after: int, controllers: Sequence[str] | None = None,
                       limit: int = 1000) -> list[tuple[int, dict[str, Any]]]:
        query = select(commands.c.id, commands.c.payload).where(commands.c.id > after).order_by(commands.c.id).limit(limit)
        if controllers is not None:
            query = query.where(commands.c.controller.in_(list(controllers)))
        with self.engine.connect() as connection:
            return [(row.id, json.loads(row.payload)) for row in connection.execute(query)]

    def last_command_id(self) -> int:
        with self.engine.connect() as connection:
            return connection.execute(select(func.coalesce(func.max(commands.c.id), 0))).scalar_one()

    # -- decisions -------------------------------------------------------------------

    def add_decisions(self, entries: Sequence[dict[str, Any]]) -> None:
        if not entries:
            return
        now = utcnow()
        with self.engine.begin() as connection:
            connection.execute(insert(decisions), [{
                "time": e["time"], "intersection": e["intersection"], "phase": e["phase"], "outcome": e["outcome"],
                "controller": e["controller"], "observation": e["observation"], "min_green_s": e["min_green_s"],
                "reason": e["reason"], "scores": {str(k): v for k, v in e["scores"].items()}, "created_at": now,
            } for e in entries])

    def decisions(self, intersection: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        columns = [decisions.c[name] for name in ("time", "intersection", "phase", "outcome", "controller",
                                                  "observation", "min_green_s", "reason", "scores")]
        query = select(*columns).order_by(decisions.c.id.desc()).limit(limit)
        if intersection is not None:
            query = query.where(decisions.c.intersection == intersection)
        with self.engine.connect() as connection:
            return [dict(row._mapping) for row in connection.execute(query)]

    # -- KPI minutes -----------------------------------------------------------------

    def put_kpi_minute(self, row: dict[str, Any]) -> None:
        values = {**row, "created_at": utcnow()}
        statement = self._insert(kpi_minutes).values(**values)
        statement = statement.on_conflict_do_update(index_elements=["minute"],
                                                    set_={k: v for k, v in values.items() if k != "minute"})
        with self.engine.begin() as connection:
            connection.execute(statement)

    def kpis(self, since: float | None = None, limit: int = 10_000) -> list[dict[str, Any]]:
        """KPI minutes from `since` on, oldest first; at most the newest `limit` of them."""
        query = select(kpi_minutes.c.minute, kpi_minutes.c.vehicles, kpi_minutes.c.queue_veh,
                       kpi_minutes.c.throughput_veh, kpi_minutes.c.stopped_delay_veh_s,
                       kpi_minutes.c.mean_delay_s).order_by(kpi_minutes.c.minute.desc()).limit(limit)
        if since is not None:
            query = query.where(kpi_minutes.c.minute >= since)
        with self.engine.connect() as connection:
            return [dict(row._mapping) for row in connection.execute(query)][::-1]

    # -- operator settings -----------------------------------------------------------

    def set_controller_mode(self, intersection: str, controller: str) -> None:
        statement = self._insert(controller_modes).values(intersection=intersection, controller=controller,
                                                          updated_at=utcnow())
        statement = statement.on_conflict_do_update(index_elements=["intersection"],
                                                    set_={"controller": controller, "updated_at": utcnow()})
        with self.engine.begin() as connection:
            connection.execute(statement)

    def controller_modes(self) -> dict[str, str]:
        with self.engine.connect() as connection:
            rows = connection.execute(select(controller_modes.c.intersection, controller_modes.c.controller))
            return {intersection: controller for intersection, controller in rows}

    # -- API keys and audit ----------------------------------------------------------

    def add_key(self, name: str, role: str, key_hash: str, prefix: str, devices: list[str]) -> bool:
        """Store a key; False if its name is taken (also by a key made at the same moment)."""
        try:
            with self.engine.begin() as connection:
                connection.execute(insert(api_keys).values(name=name, role=role, key_hash=key_hash, prefix=prefix,
                                                           devices=devices, created_at=utcnow()))
        except IntegrityError:
            return False
        return True

    def key_by_hash(self, key_hash: str) -> dict[str, Any] | None:
        query = select(api_keys).where(api_keys.c.key_hash == key_hash, api_keys.c.revoked_at.is_(None))
        with self.engine.connect() as connection:
            row = connection.execute(query).first()
        return None if row is None else dict(row._mapping)

    def keys(self) -> list[dict[str, Any]]:
        query = select(api_keys.c.name, api_keys.c.role, api_keys.c.prefix, api_keys.c.devices, api_keys.c.created_at,
                       api_keys.c.revoked_at).order_by(api_keys.c.id)
        with self.engine.connect() as connection:
            return [dict(row._mapping) for row in connection.execute(query)]

    def revoke_key(self, name: str) -> bool:
        """Revoke an active key, unless it is the last active admin key; False if there is
        no active key of that name or it is the last admin. One guarded statement, so two
        revocations at once cannot both pass the check: SQLite runs writes one at a time,
        and on PostgreSQL the active admin keys are locked first (under READ COMMITTED the
        subquery alone would let two revocations of the last two admins both through)."""
        others = select(func.count()).select_from(api_keys).where(
            api_keys.c.role == "admin", api_keys.c.revoked_at.is_(None), api_keys.c.name != name).scalar_subquery()
        with self.engine.begin() as connection:
            if self.dialect == "postgresql":
                connection.execute(select(api_keys.c.id).where(api_keys.c.role == "admin",
                                                               api_keys.c.revoked_at.is_(None)).with_for_update())
            result = connection.execute(update(api_keys).where(
                api_keys.c.name == name, api_keys.c.revoked_at.is_(None),
                or_(api_keys.c.role != "admin", others > 0)).values(revoked_at=utcnow()))
        return result.rowcount > 0

    def add_audit(self, key_name: str, role: str, action: str, target: str, detail: dict[str, Any]) -> None:
        with self.engine.begin() as connection:
            connection.execute(insert(audit).values(at=utcnow(), key_name=key_name, role=role, action=action,
                                                    target=target, detail=detail))

    def audit_log(self, limit: int = 1000) -> list[dict[str, Any]]:
        query = (select(audit.c.at, audit.c.key_name, audit.c.role, audit.c.action, audit.c.target, audit.c.detail)
                 .order_by(audit.c.id.desc()).limit(limit))
        with self.engine.connect() as connection:
            return [dict(row._mapping) for row in connection.execute(query)]

    # -- alerts and their webhook deliveries ---------------------------------------------

    def add_alert(self, row: dict[str, Any], webhooks: Sequence[str]) -> dict[str, Any] | None:
        """Store a new alert and, in the same transaction, its deliveries to every
        webhook; None if the detector's key is known already."""
        with self.engine.begin() as connection:
            if connection.execute(select(alerts.c.id).where(alerts.c.key == row["key"])).first() is not None:
                return None
            alert_id = connection.execute(insert(alerts).values(**row, status="new", created_at=utcnow())
                                          .returning(alerts.c.id)).scalar_one()
            stored = self._alert(connection, alert_id)
            self._enqueue(connection, stored, "new", webhooks)
        return stored

    def change_alert(self, alert_id: int, event: str, webhooks: Sequence[str], *, by: str | None = None,
                     resolved_at: float | None = None) -> dict[str, Any] | None:
        """`acknowledged` (by an operator) or `resolved`; the deliveries go in the same
        transaction. None if there is no such alert or the change does not apply
        (acknowledging one that is not new, resolving one resolved)."""
        with self.engine.begin() as connection:
            current = self._alert(connection, alert_id)
            if current is None:
                return None
            if event == "acknowledged" and current["status"] == "new":
                values = {"status": "acknowledged", "acknowledged_by": by, "acknowledged_at": utcnow()}
            elif event == "resolved" and current["status"] != "resolved":
                values = {"status": "resolved", "resolved_at": resolved_at}
            else:
                return None
            connection.execute(update(alerts).where(alerts.c.id == alert_id).values(**values))
            stored = self._alert(connection, alert_id)
            self._enqueue(connection, stored, event, webhooks)
        return stored

    def alerts(self, status: str | None = None, limit: int = 500) -> list[dict[str, Any]]:
        query = select(alerts).order_by(alerts.c.id.desc()).limit(limit)
        if status is not None:
            query = query.where(alerts.c.status == status)
        with self.engine.connect() as connection:
            return [_alert_json(row._mapping) for row in connection.execute(query)]

    def alert(self, alert_id: int) -> dict[str, Any] | None:
        with self.engine.connect() as connection:
            return self._alert(connection, alert_id)

    @staticmethod
    def _alert(connection, alert_id: int) -> dict[str, Any] | None:
        row = connection.execute(select(alerts).where(alerts.c.id == alert_id)).first()
        return None if row is None else _alert_json(row._mapping)

    @staticmethod
    def _enqueue(connection, alert: dict[str, Any], event: str, webhooks: Sequence[str]) -> None:
        if not webhooks:
            return
        payload = json.dumps({"event": event, "alert": alert}, sort_keys=True)
        now = utcnow()
        connection.execute(insert(webhook_deliveries), [
            {"url": url, "alert_id": alert["id"], "event": event, "payload": payload, "attempts": 0,
             "next_attempt_at": now, "created_at": now} for url in webhooks])

    def due_deliveries(self, limit: int = 100) -> list[dict[str, Any]]:
        query = (select(webhook_deliveries).where(webhook_deliveries.c.delivered_at.is_(None),
                                                  webhook_deliveries.c.next_attempt_at <= utcnow())
                 .order_by(webhook_deliveries.c.id).limit(limit))
        with self.engine.connect() as connection:
            return [dict(row._mapping) for row in connection.execute(query)]

    def delivery_done(self, delivery_id: int) -> None:
        with self.engine.begin() as connection:
            connection.execute(update(webhook_deliveries).where(webhook_deliveries.c.id == delivery_id)
                               .values(delivered_at=utcnow(), attempts=webhook_deliveries.c.attempts + 1))

    def delivery_failed(self, delivery_id: int, error: str, retry_in_s: float) -> None:
        with self.engine.begin() as connection:
            connection.execute(update(webhook_deliveries).where(webhook_deliveries.c.id == delivery_id).values(
                attempts=webhook_deliveries.c.attempts + 1, last_error=error[:2000],
                next_attempt_at=utcnow() + timedelta(seconds=retry_in_s)))

    def deliveries(self) -> list[dict[str, Any]]:
        with self.engine.connect() as connection:
            return [dict(row._mapping) for row in connection.execute(select(webhook_deliveries).order_by(webhook_deliveries.c.id))]

    # -- retention -------------------------------------------------------------------

    def purge(self, events_days: float, decisions_days: float) -> tuple[int, int]:
        """Delete device events (and refused conflicting copies), decisions and commands older than the retention (by when
        they arrived or were made; the newest command always stays, as the command ids'
        high-water mark); KPI minutes, keys and the audit trail are kept. Returns the
        numbers of events and decisions deleted."""
        now = utcnow()
        with self.engine.begin() as connection:
            gone_events = connection.execute(delete(device_events).where(
                device_events.c.received_at < now - timedelta(days=events_days))).rowcount
            connection.execute(delete(event_conflicts).where(
                event_conflicts.c.received_at < now - timedelta(days=events_days)))
            gone_decisions = connection.execute(delete(decisions).where(
                decisions.c.created_at < now - timedelta(days=decisions_days))).rowcount
            newest = connection.execute(select(func.coalesce(func.max(commands.c.id), 0))).scalar_one()
            connection.execute(delete(commands).where(commands.c.created_at < now - timedelta(days=decisions_days),
                                                      commands.c.id < newest))
        return gone_events, gone_decisions


def _alert_json(row) -> dict[str, Any]:
    alert = dict(row)
    for name in ("acknowledged_at", "created_at"):
        if alert.get(name) is not None:
            alert[name] = alert[name].isoformat()
    return alert


def _sqlite_pragmas(connection, _record) -> None:
    """WAL lets the cockpit read while the ingress writes; NORMAL sync is still
    durable against a crash of the service in WAL mode (only an OS crash can lose the
    last transactions)."""
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _content(payload: str) -> dict[str, Any]:
    """An event's content, without the protocol version it was written in."""
    content = json.loads(payload)
    content.pop("version", None)
    return content
