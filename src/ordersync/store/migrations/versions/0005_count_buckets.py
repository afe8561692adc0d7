"""count buckets: writers append deltas, a compactor folds them; bucket key leads with span

`update_counts` is rebuilt with the key (account_id, entity_kind, span, bucket, status), so that
a bucket range is one index range with or without a status filter; its non-zero rows are kept
as they are (they go on counting). Writers now append to `update_count_deltas` instead of
updating bucket rows, and `update_count_state` holds the second-bucket horizon (0: every second
bucket is still there). See `ordersync.store.counts`. Stop hubs running an older version before
upgrading: they would keep writing bucket rows directly.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03 10:00:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

SPANS = (1_000, 60_000, 3_600_000, 86_400_000)  # ordersync.store.counts.SPANS, frozen here
COLUMNS = "account_id, entity_kind, span, bucket, status, n"


def _buckets_table(name: str, key: tuple[str, ...]) -> None:
    op.create_table(
        name,
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("entity_kind", sa.String(length=10), nullable=False),
        sa.Column("span", sa.Integer(), nullable=False),
        sa.Column("bucket", sa.BigInteger(), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("n", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint(*key, name=f"{name}_pkey"),
    )


def _swap(new: str) -> None:
    op.drop_table("update_counts")
    op.rename_table(new, "update_counts")
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"ALTER INDEX {new}_pkey RENAME TO update_counts_pkey")


def upgrade() -> None:
    _buckets_table("update_counts_v5", ("account_id", "entity_kind", "span", "bucket", "status"))
    op.execute(
        f"INSERT INTO update_counts_v5 ({COLUMNS}) SELECT {COLUMNS} FROM update_counts WHERE n <> 0"
    )
    _swap("update_counts_v5")
    op.create_table(
        "update_count_deltas",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True),
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("entity_kind", sa.String(length=10), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("updated_at", sa.BigInteger(), nullable=False),
        sa.Column("n", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        "ix_update_count_deltas_account",
        "update_count_deltas",
        ["account_id", "entity_kind", "updated_at"],
    )
    state = op.create_table(
        "update_count_state",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("seconds_from", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.bulk_insert(state, [{"id": 1, "seconds_from": 0}])


def downgrade() -> None:
    # 0004's layout, rebuilt from the rows themselves (every span, every second bucket): the
    # buckets always equal the rows per bucket, and pruned seconds must come back.
    _buckets_table("update_counts_v4", ("account_id", "entity_kind", "status", "span", "bucket"))
    for span in SPANS:
        for kind, table in (("order", "orders"), ("shipment", "shipments")):
            op.execute(
                f"INSERT INTO update_counts_v4 ({COLUMNS}) "
                f"SELECT account_id, '{kind}', {span}, updated_at / {span}, status, count(*) "
                f"FROM {table} GROUP BY account_id, status, updated_at / {span}"
            )
    _swap("update_counts_v4")
    op.drop_table("update_count_state")
    op.drop_index("ix_update_count_deltas_account", table_name="update_count_deltas")
    op.drop_table("update_count_deltas")
