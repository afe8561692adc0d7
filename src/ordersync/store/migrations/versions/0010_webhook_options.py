"""tchooks: subscription options (Tradecloud's legacy webhook modes) and callback holds

See `ordersync.store.webhooks`. A nullable column and a new table: nothing existing changes.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-03 02:45:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("webhook_subscriptions") as batch:
        batch.add_column(sa.Column("options", sa.Text(), nullable=True))
    op.create_table(
        "webhook_holds",
        sa.Column("connection_id", sa.Integer(), sa.ForeignKey("connections.id"), primary_key=True),
        sa.Column("dialect", sa.String(20), primary_key=True),
        sa.Column("message_type", sa.String(40), primary_key=True),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("webhook_holds")
    with op.batch_alter_table("webhook_subscriptions") as batch:
        batch.drop_column("options")
