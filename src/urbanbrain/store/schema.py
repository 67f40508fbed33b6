"""The store's tables (SQLAlchemy 2 Core): one definition for SQLite and PostgreSQL.

Device events are append-only and unique on (device_id, seq), which is what makes a
device's resend after a timeout harmless. Commands get an increasing id so a device
can ask for "everything after the last one I applied". API keys are stored as a
SHA-256 of the key: keys are 256-bit random tokens, so a slow password hash would add
latency to every request without adding safety.
"""

from __future__ import annotations

from sqlalchemy import (JSON, BigInteger, Boolean, Column, DateTime, Float, Index, Integer, MetaData, String, Table, Text,
                        UniqueConstraint, false)

metadata = MetaData()

# SQLite only auto-increments an INTEGER PRIMARY KEY; PostgreSQL gets a 64-bit identity.
_Id = BigInteger().with_variant(Integer(), "sqlite")

device_events = Table(
    "device_events", metadata,
    Column("id", _Id, primary_key=True, autoincrement=True),
    Column("device_id", String(200), nullable=False),
    Column("seq", BigInteger, nullable=False),
    Column("kind", String(20), nullable=False),
    Column("time", Float, nullable=False),
    Column("received_at", DateTime(timezone=True), nullable=False),
    Column("payload", Text, nullable=False),  # the event as validated, JSON
    # older than the brain's clock by more than the skew when it arrived (a field's backlog):
    # stored for the record, not fed to the real-time state
    Column("late", Boolean, nullable=False, server_default=false()),
    UniqueConstraint("device_id", "seq", name="uq_device_events_device_seq"),
)
Index("ix_device_events_received_at", device_events.c.received_at)

event_conflicts = Table(
    "event_conflicts", metadata,  # resends with a known (device, seq) but other content: refused, kept to inspect
    Column("id", _Id, primary_key=True, autoincrement=True),
    Column("device_id", String(200), nullable=False),
    Column("seq", BigInteger, nullable=False),
    Column("key_name", String(100), nullable=False),  # the key that sent it
    Column("received_at", DateTime(timezone=True), nullable=False),
    Column("payload", Text, nullable=False),  # what was sent this time (the stored event stays as it was)
)
Index("ix_event_conflicts_device_seq", event_conflicts.c.device_id, event_conflicts.c.seq)

commands = Table(
    "commands", metadata,
    Column("id", _Id, primary_key=True, autoincrement=True),
    Column("controller", String(200), nullable=False),  # the controller device the command is for
    Column("intersection", String(200), nullable=False),
    Column("time", Float, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("payload", Text, nullable=False),
)
Index("ix_commands_controller_id", commands.c.controller, commands.c.id)

decisions = Table(
    "decisions", metadata,
    Column("id", _Id, primary_key=True, autoincrement=True),
    Column("time", Float, nullable=False),
    Column("intersection", String(200), nullable=False),
    Column("phase", Integer, nullable=False),
    Column("outcome", String(20), nullable=False),
    Column("controller", String(40), nullable=False),
    Column("observation", String(60), nullable=False),
    Column("min_green_s", Float, nullable=False),
    Column("reason", Text, nullable=False),
    Column("scores", JSON, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)
Index("ix_decisions_intersection_time", decisions.c.intersection, decisions.c.time)

kpi_minutes = Table(
    "kpi_minutes", metadata,
    Column("minute", Float, primary_key=True),  # start of the minute, city clock
    Column("vehicles", Float, nullable=False),
    Column("queue_veh", Float, nullable=False),
    Column("throughput_veh", Integer, nullable=False),
    Column("stopped_delay_veh_s", Float, nullable=False),
    Column("mean_delay_s", Float, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

api_keys = Table(
    "api_keys", metadata,
    Column("id", _Id, primary_key=True, autoincrement=True),
    Column("name", String(100), nullable=False, unique=True),
    Column("role", String(20), nullable=False),
    Column("key_hash", String(64), nullable=False, unique=True),
    Column("prefix", String(12), nullable=False),  # the key's first characters, to recognise it in a list
    Column("devices", JSON, nullable=False),  # device id prefixes a device key may speak for
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("revoked_at", DateTime(timezone=True), nullable=True),
)

audit = Table(
    "audit", metadata,
    Column("id", _Id, primary_key=True, autoincrement=True),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("key_name", String(100), nullable=False),
    Column("role", String(20), nullable=False),
    Column("action", String(60), nullable=False),
    Column("target", String(200), nullable=False),
    Column("detail", JSON, nullable=False),
)

controller_modes = Table(
    "controller_modes", metadata,  # what the operators have set, per intersection (absent: the brain)
    Column("intersection", String(200), primary_key=True),
    Column("controller", String(20), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

alerts = Table(
    "alerts", metadata,  # incidents found, through their lifecycle: new -> acknowledged -> resolved
    Column("id", _Id, primary_key=True, autoincrement=True),
    Column("key", String(200), nullable=False, unique=True),  # the detector's own id for it
    Column("type", String(40), nullable=False),  # carStopped | carAccident | trafficJam (FIWARE subCategory)
    Column("severity", String(20), nullable=False),
    Column("status", String(20), nullable=False),
    Column("intersection", String(200), nullable=True),
    Column("edge", String(200), nullable=True),
    Column("zone_from_m", Float, nullable=True),
    Column("zone_to_m", Float, nullable=True),
    Column("started_at", Float, nullable=False),  # city clock
    Column("detected_at", Float, nullable=False),
    Column("resolved_at", Float, nullable=True),
    Column("acknowledged_by", String(100), nullable=True),
    Column("acknowledged_at", DateTime(timezone=True), nullable=True),
    Column("evidence", JSON, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

webhook_deliveries = Table(
    "webhook_deliveries", metadata,  # the outbox: every alert change for every subscriber, until delivered
    Column("id", _Id, primary_key=True, autoincrement=True),
    Column("url", Text, nullable=False),
    Column("alert_id", BigInteger, nullable=False),
    Column("event", String(20), nullable=False),  # new | acknowledged | resolved
    Column("payload", Text, nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("next_attempt_at", DateTime(timezone=True), nullable=False),
    Column("delivered_at", DateTime(timezone=True), nullable=True),
    Column("last_error", Text, nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
)
Index("ix_webhook_deliveries_due", webhook_deliveries.c.delivered_at, webhook_deliveries.c.next_attempt_at)
