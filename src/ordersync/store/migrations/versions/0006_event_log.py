"""event log: `changes.event_id` (commit-ordered), entity rows' event id, the log's state row

Every change gets an event id (see `ordersync.store.events` for how new ones are made and why
a follower can never miss one). Existing rows are backfilled with their `seq`: the order they
were recorded in, which is all that is known of them. That keeps HubRise callback watermarks
and acks (which held `seq` values) meaning the same events.

On PostgreSQL new ids are `xid * 2^20 + ordinal`, above every backfilled one: each earlier
transaction consumed an xid below this migration's and recorded fewer than 2^20 rows, so
`max(seq) < 2^20 * (this xid)`. The upgrade checks it anyway and stops with a clear error if
not. Stop hubs running an older version before upgrading.

Revision ID: 0006_event_log
Revises: 0004
Create Date: 2026-12-02 10:00:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

ORDINAL_BITS = 20  # ordersync.store.events.ORDINAL_BITS, frozen here as this revision knows it


def upgrade() -> None:
    bind = op.get_bind()
    with op.batch_alter_table("changes", schema=None) as batch_op:
        batch_op.add_column(sa.Column("event_id", sa.BigInteger(), nullable=True))
    op.execute("UPDATE changes SET event_id = seq")
    if bind.dialect.name == "postgresql":
        ok = bind.execute(
            sa.text(
                "SELECT coalesce(max(seq), 0) < "
                f"(pg_current_xact_id()::text::bigint << {ORDINAL_BITS}) FROM changes"
            )
        ).scalar()
        if not ok:
            raise RuntimeError(
                "0006_event_log: changes.seq exceeds the first new event id; "
                "report this database's max(seq) and txid_current() to the maintainers"
            )
    with op.batch_alter_table("changes", schema=None) as batch_op:
        batch_op.alter_column("event_id", existing_type=sa.BigInteger(), nullable=False)
        batch_op.create_index("ix_changes_account_event", ["account_id", "event_id"])
        batch_op.create_index("ix_changes_event", ["event_id"], unique=True)
    for kind, table in (("order", "orders"), ("shipment", "shipments")):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.add_column(sa.Column("event_id", sa.BigInteger(), nullable=True))
        op.execute(
            f"UPDATE {table} SET event_id = (SELECT max(c.event_id) FROM changes c "
            f"WHERE c.entity_kind = '{kind}' AND c.entity_id = {table}.id "
            f"AND c.version = {table}.version)"
        )
    op.create_table(
        "event_log",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("pruned_through", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.execute("INSERT INTO event_log (id, pruned_through) VALUES (1, 0)")


def downgrade() -> None:
    # Callback positions were event ids: restart each callback from the newest change.
    op.execute("DELETE FROM callback_acks")
    op.execute("UPDATE callbacks SET watermark = (SELECT coalesce(max(seq), 0) FROM changes)")
    op.drop_table("event_log")
    for table in ("shipments", "orders"):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.drop_column("event_id")
    with op.batch_alter_table("changes", schema=None) as batch_op:
        batch_op.drop_index("ix_changes_event")
        batch_op.drop_index("ix_changes_account_event")
        batch_op.drop_column("event_id")
