"""The one JSON body reader of the writing dialects, and the text rule every write obeys.

Text the hub stores must be text every supported database and replica can store. Two kinds of
string pass a JSON parser yet cannot be stored: a lone UTF-16 surrogate (`"\\ud800"`: not
encodable as UTF-8, so every database write and every JSON rendering of it failed with a 500)
and NUL (U+0000: PostgreSQL `text` refuses it, and a PostgreSQL replica downstream would choke
on it). Both are refused with a 4xx naming the field, before anything reaches the store.
"""

from __future__ import annotations

import json
import re
from decimal import Decimal
from typing import Any

import orjson

from ordersync.hub.errors import ApiError, FieldErrors

# CPython's limit on int(str) (sys.get_int_max_str_digits); the JSON parser inherits it.
MAX_INT_DIGITS = 4300
# The number, and the member name before it when it is an object member's value.
_LONG_NUMBER = re.compile(rb'(?:"((?:[^"\\]|\\.){0,200})"\s*:\s*)?-?\d{%d,}' % (MAX_INT_DIGITS + 1))


def parse_json(raw: bytes) -> Any:
    """The body as Python values, numbers with a fraction as Decimal; 400 if not JSON."""
    try:
        # Decimal for every JSON number with a fraction: a float would turn 0.1 into
        # 0.1000000000000000055511151231257827 before the domain ever saw it.
        return json.loads(raw, parse_float=Decimal)
    except RecursionError:
        # Arrays nested thousands deep exhaust the parser's stack: a malformed request.
        raise _not_json("the body is nested too deeply") from None
    except ValueError as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        if not isinstance(exc, json.JSONDecodeError):
            long_number = _LONG_NUMBER.search(raw)
            if long_number is not None:
                # The parser's own message names a Python internal (sys.set_int_max_str_digits).
                name = long_number.group(1)
                raise _not_json(
                    f"a number has more than {MAX_INT_DIGITS} digits",
                    "body" if name is None else name.decode("utf-8", "backslashreplace"),
                ) from None
        raise _not_json(str(exc)) from None


def _not_json(reason: str, field: str = "body") -> ApiError:
    return ApiError(400, f"request body is not valid JSON: {reason}", [(field, reason)])


def text_errors(value: Any, field: str = "") -> FieldErrors:
    """(field, message) for every string, key or value, that the hub cannot store."""
    if _storable(value):
        return []
    errors: FieldErrors = []
    _walk(value, field, errors)
    return errors


def require_storable_text(value: Any, field: str = "") -> None:
    """422 naming each field whose text holds a lone surrogate or NUL."""
    errors = text_errors(value, field)
    if errors:
        raise ApiError(422, "request body holds text that cannot be stored", errors)


def _storable(value: Any) -> bool:
    # The common case in C: orjson refuses lone surrogates and writes NUL as \u0000.
    try:
        rendered = orjson.dumps(value, default=str)
    except (orjson.JSONEncodeError, TypeError):
        return False
    return b"\\u0000" not in rendered


def _walk(value: Any, field: str, errors: FieldErrors) -> None:
    if isinstance(value, str):
        problem = _text_problem(value)
        if problem:
            errors.append((field or "body", problem))
    elif isinstance(value, dict):
        for key, item in value.items():
            name = _printable(str(key))
            path = f"{field}.{name}" if field else name
            key_problem = _text_problem(str(key))
            if key_problem:
                errors.append((path, f"field name: {key_problem}"))
            _walk(item, path, errors)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _walk(item, f"{field}[{index}]", errors)


def _text_problem(text: str) -> str | None:
    if "\x00" in text:
        return "must not contain NUL (U+0000) characters"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return f"is not valid Unicode: a lone UTF-16 surrogate at character {exc.start}"
    return None


def _printable(name: str) -> str:
    """A field name safe to echo in an error body (surrogates and NUL escaped)."""
    return name.encode("utf-8", "backslashreplace").decode("utf-8").replace("\x00", "\\u0000")
