"""The hub's tables, as SQLAlchemy Core. Alembic migrations create them; tests compare the two.

Timestamps are BIGINT epoch milliseconds (see `ordersync.domain.timestamps`). Each order and
shipment row carries `doc`, its full JSON rendering, rewritten in the same transaction as every
change: listings then stream stored documents instead of rebuilding them from joins.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    Date,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

metadata = MetaData()

accounts = Table(
    "accounts",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(100), nullable=False, unique=True),
    Column("timezone", String(64), nullable=False, server_default="UTC"),
    Column("created_at", BigInteger, nullable=False),
    # ISO 4217 code of the account's money (HubRise renders amounts as "8.90 EUR").
    Column("currency", String(3), nullable=False, server_default="EUR"),
)

connections = Table(
    "connections",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("account_id", Integer, ForeignKey("accounts.id"), nullable=False),
    Column("name", String(100), nullable=False),
    Column("token_hash", String(64), nullable=False, unique=True),
    Column("created_at", BigInteger, nullable=False),
    Column("revoked_at", BigInteger, nullable=True),
)

orders = Table(
    "orders",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("account_id", Integer, ForeignKey("accounts.id"), nullable=False),
    Column("customer_identifier", String(100), nullable=False),
    Column("status", String(20), nullable=False),
    Column("version", Integer, nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("updated_at", BigInteger, nullable=False),
    Column("updated_by", Integer, ForeignKey("connections.id"), nullable=True),
    Column("doc", Text, nullable=False),
    # The event id of the change that made this version (see `ordersync.store.events`);
    # NULL only for rows no change was ever recorded for.
    Column("event_id", BigInteger, nullable=True),
    UniqueConstraint("account_id", "customer_identifier", name="uq_orders_customer_identifier"),
    Index("ix_orders_account_updated", "account_id", "updated_at", "id"),
    Index("ix_orders_account_status_updated", "account_id", "status", "updated_at", "id"),
    # HubRise lists newest first, paged by the keyset (created_at, id).
    Index("ix_orders_account_created", "account_id", "created_at", "id"),
)

shipments = Table(
    "shipments",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("account_id", Integer, ForeignKey("accounts.id"), nullable=False),
    Column("order_id", String(36), ForeignKey("orders.id"), nullable=False),
    Column("status", String(20), nullable=False),
    Column("version", Integer, nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("updated_at", BigInteger, nullable=False),
    Column("updated_by", Integer, ForeignKey("connections.id"), nullable=True),
    Column("doc", Text, nullable=False),
    Column("event_id", BigInteger, nullable=True),  # as orders.event_id
    Index("ix_shipments_account_updated", "account_id", "updated_at", "id"),
    Index("ix_shipments_account_status_updated", "account_id", "status", "updated_at", "id"),
    Index("ix_shipments_order", "order_id"),
)

# The change feed (ARCHITECTURE.md, "The hub"): one row per write, in the write's transaction.
# `event_id` is its commit-ordered id: a follower reading "after id X" below the log's frontier
# can never miss a row that commits later with a smaller id (proof in `ordersync.store.events`).
changes = Table(
    "changes",
    metadata,
    Column(
        "seq", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    ),
    Column("account_id", Integer, ForeignKey("accounts.id"), nullable=False),
    Column("entity_kind", String(10), nullable=False),
    Column("entity_id", String(36), nullable=False),
    Column("version", Integer, nullable=False),
    Column("event_type", String(40), nullable=False),
    Column("connection_id", Integer, ForeignKey("connections.id"), nullable=True),
    Column("created_at", BigInteger, nullable=False),
    Column("event_id", BigInteger, nullable=False),
    Index("ix_changes_account_seq", "account_id", "seq"),
    Index("ix_changes_account_event", "account_id", "event_id"),
    Index("ix_changes_event", "event_id", unique=True),
)

# The event log's one row of state: every event id up to `pruned_through` has been pruned
# (retention); a follower positioned below it has missed events and must resync.
event_log = Table(
    "event_log",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("pruned_through", BigInteger, nullable=False),
)

# Row counts per (kind, time bucket, status): the rollup behind a listing's exact `total`, so
# that it costs a few index lookups instead of a scan of every matching row. Only the counts
# compactor writes it (writers append to `update_count_deltas`); the key leads with span and
# bucket so that a bucket range is one index range with or without a status filter. Second
# buckets older than `update_count_state.seconds_from` are pruned. See `ordersync.store.counts`.
update_counts = Table(
    "update_counts",
    metadata,
    Column("account_id", Integer, nullable=False, primary_key=True),
    Column("entity_kind", String(10), nullable=False, primary_key=True),
    Column("span", Integer, nullable=False, primary_key=True),
    Column("bucket", BigInteger, nullable=False, primary_key=True),
    Column("status", String(20), nullable=False, primary_key=True),
    Column("n", BigInteger, nullable=False),
)

# What each write appends in its own transaction: +1 for its new (status, updated_at), -1 for
# the old one. Insert-only, so concurrent writers of one account share no row; the compactor
# folds them into `update_counts` and deletes them in one transaction.
update_count_deltas = Table(
    "update_count_deltas",
    metadata,
    Column(
        "id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    ),
    Column("account_id", Integer, nullable=False),
    Column("entity_kind", String(10), nullable=False),
    Column("status", String(20), nullable=False),
    Column("updated_at", BigInteger, nullable=False),
    Column("n", Integer, nullable=False),
    Index("ix_update_count_deltas_account", "account_id", "entity_kind", "updated_at"),
)

# One row (id = 1): second buckets from `seconds_from` on are complete; older ones are pruned
# and listings count that part from the rows or from minute buckets instead.
update_count_state = Table(
    "update_count_state",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("seconds_from", BigInteger, nullable=False),
)

# Requests counted per connection (a token's SHA-256) and quota window, shared by every hub
# worker on the database; rows of ended windows are deleted now and then. See
# `ordersync.store.rate_counters`.
rate_counters = Table(
    "rate_counters",
    metadata,
    Column("connection_key", String(64), nullable=False, primary_key=True),
    Column("bucket_key", String(200), nullable=False, primary_key=True),
    Column("window_start", BigInteger, nullable=False, primary_key=True),
    Column("n", BigInteger, nullable=False),
    Index("ix_rate_counters_window_start", "window_start"),
)

# HubRise private refs (seed 003): a connection's own reference on an entity, seen only by it
# and usable as a lookup key. Not a change of the entity: no version bump, no `changes` row.
private_refs = Table(
    "private_refs",
    metadata,
    Column("connection_id", Integer, ForeignKey("connections.id"), primary_key=True),
    Column("entity_kind", String(10), primary_key=True),
    Column("entity_id", String(36), primary_key=True),
    Column("ref", String(100), nullable=False),
    UniqueConstraint("connection_id", "entity_kind", "ref", name="uq_private_refs_ref"),
)

# HubRise passive callbacks: at most one per connection. Its events are the `changes` rows of
# other connections with `event_id > watermark` that have no row in `callback_acks` (whose
# `seq` column holds event ids since migration 0006_event_log); the watermark
# moves over acknowledged runs, and the ack rows below it are deleted. See
# `ordersync.store.hubrise`.
callbacks = Table(
    "callbacks",
    metadata,
    Column("connection_id", Integer, ForeignKey("connections.id"), primary_key=True),
    Column("account_id", Integer, ForeignKey("accounts.id"), nullable=False),
    Column("events", Text, nullable=False),  # JSON, e.g. {"order": ["create", "update"]}
    Column("watermark", BigInteger, nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("updated_at", BigInteger, nullable=False),
)

callback_acks = Table(
    "callback_acks",
    metadata,
    Column("connection_id", Integer, ForeignKey("connections.id"), primary_key=True),
    Column("seq", BigInteger, primary_key=True),
)

# Idempotency keys (see `ordersync.store.idempotency`): one row per (connection, key), written
# in the transaction of the write it answers; the first answer, kept to be replayed byte for
# byte. `fingerprint` is the SHA-256 of the method, path, query and raw body. Rows older than
# the retention (ORDERSYNC_HUB_IDEMPOTENCY_HOURS, default 24) are pruned.
idempotency_keys = Table(
    "idempotency_keys",
    metadata,
    Column("connection_id", Integer, ForeignKey("connections.id"), primary_key=True),
    Column("key", String(255), primary_key=True),
    Column("request", String(300), nullable=False),
    Column("fingerprint", String(64), nullable=False),
    Column("status", Integer, nullable=False),
    Column("content_type", String(200), nullable=True),
    Column("body", LargeBinary, nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Index("ix_idempotency_keys_created", "created_at"),
)

# MasonHub asynchronous writes (see `ordersync.store.requests`): each accepted update or cancel
# request waits here, `pending`, until a hub worker resolves it (`success` or `failed`, with
# `reason`). `doc` is the replacement order (updates only). The status/created_at index is the
# resolvers' work queue; the account ones serve the listings and the duplicate-cancel check.
order_update_requests = Table(
    "order_update_requests",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("account_id", Integer, ForeignKey("accounts.id"), nullable=False),
    Column("order_id", String(36), nullable=False),
    Column("customer_identifier", String(100), nullable=False),
    Column("connection_id", Integer, ForeignKey("connections.id"), nullable=True),
    Column("doc", Text, nullable=False),
    Column("status", String(12), nullable=False),
    Column("reason", Text, nullable=True),
    Column("created_at", BigInteger, nullable=False),
    Column("updated_at", BigInteger, nullable=False),
    Column("resolved_at", BigInteger, nullable=True),
    Index("ix_order_update_requests_queue", "status", "created_at"),
    Index("ix_order_update_requests_account", "account_id", "created_at"),
    Index("ix_order_update_requests_order", "order_id"),
)

order_cancel_requests = Table(
    "order_cancel_requests",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("account_id", Integer, ForeignKey("accounts.id"), nullable=False),
    Column("order_id", String(36), nullable=False),
    Column("customer_identifier", String(100), nullable=False),
    Column("connection_id", Integer, ForeignKey("connections.id"), nullable=True),
    Column("status", String(12), nullable=False),
    Column("reason", Text, nullable=True),
    Column("created_at", BigInteger, nullable=False),
    Column("updated_at", BigInteger, nullable=False),
    Column("resolved_at", BigInteger, nullable=True),
    Index("ix_order_cancel_requests_queue", "status", "created_at"),
    Index("ix_order_cancel_requests_account", "account_id", "created_at"),
    Index("ix_order_cancel_requests_order", "order_id"),
)

# Webhook subscriptions (MasonHub callbacks, HubRise active callbacks, Tradecloud webhooks):
# one row per URL a connection asked to be called on. `cursor` is the last event id of the log
# materialised into `webhook_deliveries` for it (events below the frontier only, so no later
# commit can slip in under it). See `ordersync.store.webhooks`.
webhook_subscriptions = Table(
    "webhook_subscriptions",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("account_id", Integer, ForeignKey("accounts.id"), nullable=False),
    Column("connection_id", Integer, ForeignKey("connections.id"), nullable=False),
    Column("dialect", String(20), nullable=False),  # masonhub | hubrise | tradecloud
    Column("url", Text, nullable=False),
    Column("message_type", String(40), nullable=False),  # e.g. orderEvent; "*" for all
    Column("api_version", String(20), nullable=True),
    Column("auth", Text, nullable=True),  # JSON: {"scheme": "token|basic|bearer", ...}
    Column("events", Text, nullable=True),  # HubRise: JSON {"order": ["create", "update"]}
    Column("cursor", BigInteger, nullable=False),
    Column("status", String(20), nullable=False),  # active | disabled
    Column("disabled_reason", Text, nullable=True),
    Column("failing_since", BigInteger, nullable=True),
    Column("created_at", BigInteger, nullable=False),
    Column("updated_at", BigInteger, nullable=False),
    Index("ix_webhook_subscriptions_connection", "connection_id"),
)

# A subscription's signing secrets: the newest, and during a rotation the previous one until
# `expires_at` (both sign every delivery meanwhile, as Standard Webhooks rotation says).
webhook_secrets = Table(
    "webhook_secrets",
    metadata,
    Column(
        "id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    ),
    Column("subscription_id", String(36), nullable=False),
    Column("secret", String(100), nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("expires_at", BigInteger, nullable=True),
    Index("ix_webhook_secrets_subscription", "subscription_id"),
)

# The pending queue: one row per (subscription, event) to deliver, body rendered when the event
# was materialised. Per (subscription, entity) only the row with the smallest event id among the
# pending ones may be attempted: ordered per entity, and one stuck entity blocks nothing else.
webhook_deliveries = Table(
    "webhook_deliveries",
    metadata,
    Column(
        "id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    ),
    Column("subscription_id", String(36), nullable=False),
    Column("entity_key", String(50), nullable=False),  # "<kind>:<id>"
    Column("event_id", BigInteger, nullable=False),
    Column("body", Text, nullable=False),
    Column("status", String(20), nullable=False),  # pending|delivered|failed|superseded
    Column("attempts", Integer, nullable=False),
    Column("next_attempt_at", BigInteger, nullable=False),
    Column("lease", String(36), nullable=True),  # the claim of the worker sending it now
    Column("created_at", BigInteger, nullable=False),
    Column("event_created_at", BigInteger, nullable=False),
    Column("delivered_at", BigInteger, nullable=True),
    UniqueConstraint("subscription_id", "event_id", name="uq_webhook_deliveries_event"),
    Index("ix_webhook_deliveries_due", "status", "next_attempt_at"),
    Index("ix_webhook_deliveries_entity", "subscription_id", "entity_key", "status", "event_id"),
)

# Every HTTP attempt of a delivery: what the receiver answered and how long it took.
webhook_attempts = Table(
    "webhook_attempts",
    metadata,
    Column(
        "id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    ),
    Column("subscription_id", String(36), nullable=False),
    Column("delivery_id", BigInteger, nullable=False),
    Column("event_id", BigInteger, nullable=False),
    Column("at", BigInteger, nullable=False),
    Column("status_code", Integer, nullable=True),
    Column("latency_ms", Integer, nullable=False),
    Column("outcome", String(20), nullable=False),  # delivered | retry | failed | disabled
    Column("error", Text, nullable=True),
    Index("ix_webhook_attempts_subscription", "subscription_id", "id"),
)

# The catalogue and the inventory entity (see `ordersync.store.inventory`): one row per SKU of an
# account. It is also the entity of the `inventory` change feed: `version`, `updated_at` and
# `doc` (the `InventoryItem` JSON: every stock row of the SKU) move in the transaction of every
# change of one of its `stock` rows, with a `changes` row of kind "inventory". Writers lock these
# rows (`FOR UPDATE`, ordered by sku) before reading or writing the SKU's stock.
skus = Table(
    "skus",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("account_id", Integer, ForeignKey("accounts.id"), nullable=False),
    Column("sku", String(100), nullable=False),
    Column("name", Text, nullable=True),
    Column("version", Integer, nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("updated_at", BigInteger, nullable=False),
    Column("updated_by", Integer, ForeignKey("connections.id"), nullable=True),
    Column("doc", Text, nullable=False),
    Column("event_id", BigInteger, nullable=True),  # as orders.event_id
    UniqueConstraint("account_id", "sku", name="uq_skus_account_sku"),
    Index("ix_skus_account_updated", "account_id", "updated_at", "id"),
)

# Stock per (account, sku, location, lot), with absolute whole-unit counts per status.
# `lot_number` is "" for stock that is not lot-tracked (a key column cannot be NULL).
stock = Table(
    "stock",
    metadata,
    Column("account_id", Integer, ForeignKey("accounts.id"), primary_key=True),
    Column("sku", String(100), primary_key=True),
    Column("location", String(100), primary_key=True),
    Column("lot_number", String(100), primary_key=True),
    Column("sku_id", String(36), ForeignKey("skus.id"), nullable=False),
    Column("expires_on", Date, nullable=True),
    Column("received_on", Date, nullable=True),
    Column("purchase_order", String(100), nullable=True),
    Column("available", Integer, nullable=False),
    Column("allocated", Integer, nullable=False),
    Column("backordered", Integer, nullable=False),
    Column("damaged", Integer, nullable=False),
    Column("quality_control", Integer, nullable=False),
    Column("updated_at", BigInteger, nullable=False),
    Index("ix_stock_sku_id", "sku_id"),
)
