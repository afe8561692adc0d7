"""hubrise: account currency, orders by creation, private refs, passive callbacks

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30 12:00:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("accounts", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("currency", sa.String(length=3), server_default="EUR", nullable=False)
        )
    with op.batch_alter_table("orders", schema=None) as batch_op:
        batch_op.create_index(
            "ix_orders_account_created", ["account_id", "created_at", "id"], unique=False
        )
    op.create_table(
        "private_refs",
        sa.Column("connection_id", sa.Integer(), nullable=False),
        sa.Column("entity_kind", sa.String(length=10), nullable=False),
        sa.Column("entity_id", sa.String(length=36), nullable=False),
        sa.Column("ref", sa.String(length=100), nullable=False),
        sa.ForeignKeyConstraint(["connection_id"], ["connections.id"]),
        sa.PrimaryKeyConstraint("connection_id", "entity_kind", "entity_id"),
        sa.UniqueConstraint("connection_id", "entity_kind", "ref", name="uq_private_refs_ref"),
    )
    op.create_table(
        "callbacks",
        sa.Column("connection_id", sa.Integer(), nullable=False),
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("events", sa.Text(), nullable=False),
        sa.Column("watermark", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(["account_id"], ["accounts.id"]),
        sa.ForeignKeyConstraint(["connection_id"], ["connections.id"]),
        sa.PrimaryKeyConstraint("connection_id"),
    )
    op.create_table(
        "callback_acks",
        sa.Column("connection_id", sa.Integer(), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(["connection_id"], ["connections.id"]),
        sa.PrimaryKeyConstraint("connection_id", "seq"),
    )


def downgrade() -> None:
    op.drop_table("callback_acks")
    op.drop_table("callbacks")
    op.drop_table("private_refs")
    with op.batch_alter_table("orders", schema=None) as batch_op:
        batch_op.drop_index("ix_orders_account_created")
    with op.batch_alter_table("accounts", schema=None) as batch_op:
        batch_op.drop_column("currency")
