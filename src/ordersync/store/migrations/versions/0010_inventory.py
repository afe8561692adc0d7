"""inventory: the catalogue of SKUs (also the `inventory` entity of the change feed) and stock
per (account, sku, location, lot) with a count per status

See `ordersync.store.inventory`. New tables only: nothing existing changes.

Revision ID: 0010_inventory
Revises: 0009
Create Date: 2026-12-03 02:40:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision = "0010_inventory"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "skus",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("account_id", sa.Integer(), sa.ForeignKey("accounts.id"), nullable=False),
        sa.Column("sku", sa.String(100), nullable=False),
        sa.Column("name", sa.Text(), nullable=True),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.BigInteger(), nullable=False),
        sa.Column("updated_by", sa.Integer(), sa.ForeignKey("connections.id"), nullable=True),
        sa.Column("doc", sa.Text(), nullable=False),
        sa.Column("event_id", sa.BigInteger(), nullable=True),
        sa.UniqueConstraint("account_id", "sku", name="uq_skus_account_sku"),
    )
    op.create_index("ix_skus_account_updated", "skus", ["account_id", "updated_at", "id"])
    op.create_table(
        "stock",
        sa.Column("account_id", sa.Integer(), sa.ForeignKey("accounts.id"), nullable=False),
        sa.Column("sku", sa.String(100), nullable=False),
        sa.Column("location", sa.String(100), nullable=False),
        sa.Column("lot_number", sa.String(100), nullable=False),
        sa.Column("sku_id", sa.String(36), sa.ForeignKey("skus.id"), nullable=False),
        sa.Column("expires_on", sa.Date(), nullable=True),
        sa.Column("received_on", sa.Date(), nullable=True),
        sa.Column("purchase_order", sa.String(100), nullable=True),
        sa.Column("available", sa.Integer(), nullable=False),
        sa.Column("allocated", sa.Integer(), nullable=False),
        sa.Column("backordered", sa.Integer(), nullable=False),
        sa.Column("damaged", sa.Integer(), nullable=False),
        sa.Column("quality_control", sa.Integer(), nullable=False),
        sa.Column("updated_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("account_id", "sku", "location", "lot_number"),
    )
    op.create_index("ix_stock_sku_id", "stock", ["sku_id"])


def downgrade() -> None:
    op.drop_index("ix_stock_sku_id", table_name="stock")
    op.drop_table("stock")
    op.drop_index("ix_skus_account_updated", table_name="skus")
    op.drop_table("skus")
