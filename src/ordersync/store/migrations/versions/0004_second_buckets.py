"""second buckets: `update_counts` gains a 1-second span, backfilled from orders and shipments

Listing totals count the rows of `updated_since`'s own second exactly and take the rest from
the counters (see `ordersync.store.counts`). Until now the exact part was a whole minute.
From this revision on, every write also moves a 1-second bucket (span 1000); this backfills
them from the rows as they stand. Stop hubs running an older version before upgrading: they
would keep writing without second buckets.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30 14:00:00.000000
"""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

SECOND = 1000  # ordersync.store.counts.SECOND, frozen here as this revision knows it


def upgrade() -> None:
    # Idempotent: a re-run rebuilds the buckets from the rows. `updated_at` is a non-negative
    # epoch in milliseconds, so integer division is the floor division the store uses.
    op.execute(f"DELETE FROM update_counts WHERE span = {SECOND}")
    for kind, table in (("order", "orders"), ("shipment", "shipments")):
        op.execute(
            "INSERT INTO update_counts (account_id, entity_kind, status, span, bucket, n) "
            f"SELECT account_id, '{kind}', status, {SECOND}, updated_at / {SECOND}, count(*) "
            f"FROM {table} GROUP BY account_id, status, updated_at / {SECOND}"
        )


def downgrade() -> None:
    op.execute(f"DELETE FROM update_counts WHERE span = {SECOND}")
