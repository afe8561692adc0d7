"""What every codec reads documents with: the error that names a field, and strict readers.

Readers take the value and its path (`lines[0].buyerLine.quantity`) and either return it typed
or raise `WireError` naming that path: a document is never half-understood.
"""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal, InvalidOperation
from typing import Any, NamedTuple

import orjson

from ordersync.domain.timestamps import parse_rfc3339_ms


class WireError(ValueError):
    """A document a codec cannot read; `field` is the path of the value at fault."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


class Head(NamedTuple):
    """What identifies one version of an entity, readable even when the rest is not; a
    snapshot starts with these three fields (`OrderSnapshot(*head, ...)`)."""

    id: str
    version: int
    updated_at_ms: int


def read_head(document: Any, updated_at: str, read_time: Callable[[Any, str], int]) -> Head:
    """`id`, `version` and the updated time under the dialect's name, read with its reader."""
    doc = mapping(document, "document")
    return Head(
        identifier(member(doc, "id"), "id"),
        integer(member(doc, "version"), "version"),
        read_time(member(doc, updated_at), updated_at),
    )


# Every reader takes the value, its parent's path and its key within it (".quantity"): the
# field's path is `path + key`, put together only for an error (a page reads thousands).


def mapping(value: Any, path: str, key: str = "") -> dict[str, Any]:
    if type(value) is not dict:
        raise WireError(path + key, f"{value!r} is not an object")
    return value


def member(doc: dict[str, Any], key: str, path: str = "") -> Any:
    """The field `key` of the object at `path`, which must be present (it may be null)."""
    try:
        return doc[key]
    except KeyError:
        raise WireError(f"{path}.{key}" if path else key, "is missing") from None


def array(value: Any, path: str, key: str = "") -> list[Any]:
    """A list; null or absent is an empty one."""
    if value is None:
        return []
    if type(value) is not list:
        raise WireError(path + key, f"{value!r} is not an array")
    return value


def text(value: Any, path: str, key: str = "") -> str:
    if type(value) is not str:
        raise WireError(path + key, f"{value!r} is not a string")
    return value


def optional_text(value: Any, path: str, key: str = "") -> str | None:
    if value is None or type(value) is str:
        return value
    raise WireError(path + key, f"{value!r} is not a string")


def identifier(value: Any, path: str, key: str = "") -> str:
    """An id: a string, or an integer some platforms number their entities with."""
    if type(value) is str and value:
        return value
    if type(value) is int:
        return str(value)
    raise WireError(path + key, f"{value!r} is not an id")


def rfc3339_ms(value: Any, path: str, key: str = "") -> int:
    stamp = text(value, path, key)
    try:
        return parse_rfc3339_ms(stamp)
    except ValueError as exc:
        raise WireError(path + key, str(exc)) from None


def integer(value: Any, path: str, key: str = "") -> int:
    if type(value) is not int:  # bool is an int subclass: refused too
        raise WireError(path + key, f"{value!r} is not an integer")
    return value


MAX_EXPONENT = 100  # decimal exponents beyond any quantity or price


def exact_decimal(value: Any, path: str, key: str = "") -> Decimal | None:
    """A finite amount from decimal text or an exact JSON number (Decimal or int); a float is
    refused, its exactness is already lost (decode with `parse_float=Decimal`)."""
    if value is None:
        return None
    kind = type(value)
    if kind is float:
        raise WireError(path + key, f"{value!r} was decoded as a float; exactness is lost")
    if kind is str or kind is int or kind is Decimal:
        try:
            amount = Decimal(value)
        except InvalidOperation:
            pass
        else:
            # Written out, 1e999999999 would be a billion digits: no amount is that large.
            if amount.is_finite() and abs(amount.adjusted()) <= MAX_EXPONENT:
                return amount
    raise WireError(path + key, f"{value!r} is not a decimal amount")


def exact_json(value: Any) -> Any:
    """A document decoded with Decimals, made serialisable by orjson with every number written
    back exactly as its text (an `orjson.Fragment`), so the document stays as received."""
    if isinstance(value, Decimal):
        return orjson.Fragment(str(value))  # its own text: never expanded digit by digit
    if isinstance(value, dict):
        return {k: exact_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [exact_json(v) for v in value]
    return value
