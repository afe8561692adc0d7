"""HubRise's listing cursor (seed 003): an opaque keyset position, as the hub hands it out.

The common data types (money, decimals, times) live in `ordersync.wire.hubrise_values`, shared
with the agent.
"""

from __future__ import annotations

import base64
import binascii
import hashlib

import orjson

from ordersync.wire.hubrise_values import parse_time, zone

__all__ = ["decode_cursor", "encode_cursor", "parse_time", "zone"]  # the routes' imports

_MAX_KEY = 2**63 - 1


def encode_cursor(created_at: int, order_id: str) -> str:
    """An opaque token for the keyset position (created_at, id) of the last order served.
    A position, not an offset: orders created or changed meanwhile cannot shift the walk."""
    payload = orjson.dumps([created_at, order_id])
    return base64.urlsafe_b64encode(payload + _check(payload)).decode().rstrip("=")


def decode_cursor(token: str) -> tuple[int, str]:
    """The position back; ValueError for anything this hub did not hand out."""
    bad = ValueError("not a cursor this hub handed out; use the X-Cursor-Next value as is")
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    except (binascii.Error, ValueError):
        raise bad from None
    payload, check = raw[:-4], raw[-4:]
    if len(raw) < 5 or _check(payload) != check:
        raise bad
    try:
        created_at, order_id = orjson.loads(payload)
    except (orjson.JSONDecodeError, ValueError, TypeError):
        raise bad from None
    if (
        not isinstance(created_at, int)
        or isinstance(created_at, bool)
        or not 0 <= created_at <= _MAX_KEY
        or not isinstance(order_id, str)
        or not 0 < len(order_id) <= 36
        or "\x00" in order_id
    ):
        raise bad
    if encode_cursor(created_at, order_id) != token:  # e.g. altered padding bits
        raise bad
    return created_at, order_id


def _check(payload: bytes) -> bytes:
    # Not a secret: it only tells a mangled or hand-edited token from one we issued. A forged
    # one is harmless anyway, any (created_at, id) being a valid place to resume from.
    return hashlib.blake2b(payload, digest_size=4, person=b"hubrise-cursor").digest()
