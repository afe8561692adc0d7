"""webhooks: subscriptions, their signing secrets, the per-entity delivery queue and attempts

See `ordersync.store.webhooks`. New tables only: nothing existing changes.

Revision ID: 0009
Revises: 0006
Create Date: 2026-12-03 01:00:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def _id() -> sa.Column:  # type: ignore[type-arg]
    return sa.Column(
        "id",
        sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
        primary_key=True,
        autoincrement=True,
    )


def upgrade() -> None:
    op.create_table(
        "webhook_subscriptions",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("account_id", sa.Integer(), sa.ForeignKey("accounts.id"), nullable=False),
        sa.Column("connection_id", sa.Integer(), sa.ForeignKey("connections.id"), nullable=False),
        sa.Column("dialect", sa.String(20), nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("message_type", sa.String(40), nullable=False),
        sa.Column("api_version", sa.String(20), nullable=True),
        sa.Column("auth", sa.Text(), nullable=True),
        sa.Column("events", sa.Text(), nullable=True),
        sa.Column("cursor", sa.BigInteger(), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("disabled_reason", sa.Text(), nullable=True),
        sa.Column("failing_since", sa.BigInteger(), nullable=True),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.BigInteger(), nullable=False),
    )
    op.create_index(
        "ix_webhook_subscriptions_connection", "webhook_subscriptions", ["connection_id"]
    )
    op.create_table(
        "webhook_secrets",
        _id(),
        sa.Column("subscription_id", sa.String(36), nullable=False),
        sa.Column("secret", sa.String(100), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("expires_at", sa.BigInteger(), nullable=True),
    )
    op.create_index("ix_webhook_secrets_subscription", "webhook_secrets", ["subscription_id"])
    op.create_table(
        "webhook_deliveries",
        _id(),
        sa.Column("subscription_id", sa.String(36), nullable=False),
        sa.Column("entity_key", sa.String(50), nullable=False),
        sa.Column("event_id", sa.BigInteger(), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", sa.BigInteger(), nullable=False),
        sa.Column("lease", sa.String(36), nullable=True),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("event_created_at", sa.BigInteger(), nullable=False),
        sa.Column("delivered_at", sa.BigInteger(), nullable=True),
        sa.UniqueConstraint("subscription_id", "event_id", name="uq_webhook_deliveries_event"),
    )
    op.create_index(
        "ix_webhook_deliveries_due", "webhook_deliveries", ["status", "next_attempt_at"]
    )
    op.create_index(
        "ix_webhook_deliveries_entity",
        "webhook_deliveries",
        ["subscription_id", "entity_key", "status", "event_id"],
    )
    op.create_table(
        "webhook_attempts",
        _id(),
        sa.Column("subscription_id", sa.String(36), nullable=False),
        sa.Column("delivery_id", sa.BigInteger(), nullable=False),
        sa.Column("event_id", sa.BigInteger(), nullable=False),
        sa.Column("at", sa.BigInteger(), nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=True),
        sa.Column("latency_ms", sa.Integer(), nullable=False),
        sa.Column("outcome", sa.String(20), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
    )
    op.create_index(
        "ix_webhook_attempts_subscription", "webhook_attempts", ["subscription_id", "id"]
    )


def downgrade() -> None:
    for name in ("webhook_attempts", "webhook_deliveries", "webhook_secrets"):
        op.drop_table(name)
    op.drop_table("webhook_subscriptions")
