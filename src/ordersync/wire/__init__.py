"""Wire codecs, one per platform, both directions, pure (no web, database or HTTP import).

The hub renders its stored documents into each dialect with them; the agent parses each
dialect's documents into typed snapshots (`ordersync.domain.snapshots`) with them. A document a
codec cannot read raises `WireError` naming the field.
"""

from ordersync.wire.fields import Head, WireError

__all__ = ["Head", "WireError"]
