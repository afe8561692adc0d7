"""MasonHub asynchronous writes: order_update_requests and order_cancel_requests

Revision ID: 0008_async_requests
Revises: 0006
Create Date: 2026-12-03 01:00:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def _common() -> list[sa.Column[object]]:
    return [
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("order_id", sa.String(length=36), nullable=False),
        sa.Column("customer_identifier", sa.String(length=100), nullable=False),
        sa.Column("connection_id", sa.Integer(), nullable=True),
    ]


def _resolution() -> list[sa.Column[object]]:
    return [
        sa.Column("status", sa.String(length=12), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.BigInteger(), nullable=False),
        sa.Column("resolved_at", sa.BigInteger(), nullable=True),
    ]


def _keys() -> list[sa.schema.SchemaItem]:
    return [
        sa.ForeignKeyConstraint(["account_id"], ["accounts.id"]),
        sa.ForeignKeyConstraint(["connection_id"], ["connections.id"]),
        sa.PrimaryKeyConstraint("id"),
    ]


def upgrade() -> None:
    op.create_table(
        "order_update_requests",
        *_common(),
        sa.Column("doc", sa.Text(), nullable=False),
        *_resolution(),
        *_keys(),
    )
    op.create_index(
        "ix_order_update_requests_queue", "order_update_requests", ["status", "created_at"]
    )
    op.create_index(
        "ix_order_update_requests_account", "order_update_requests", ["account_id", "created_at"]
    )
    op.create_index("ix_order_update_requests_order", "order_update_requests", ["order_id"])
    op.create_table("order_cancel_requests", *_common(), *_resolution(), *_keys())
    op.create_index(
        "ix_order_cancel_requests_queue", "order_cancel_requests", ["status", "created_at"]
    )
    op.create_index(
        "ix_order_cancel_requests_account", "order_cancel_requests", ["account_id", "created_at"]
    )
    op.create_index("ix_order_cancel_requests_order", "order_cancel_requests", ["order_id"])


def downgrade() -> None:
    op.drop_table("order_cancel_requests")
    op.drop_table("order_update_requests")
