"""JSON as the vendors speak it: numbers are ``Decimal`` both ways, never float."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any


def loads(text: str | bytes) -> Any:
    return json.loads(text, parse_float=Decimal)


def _number(value: Decimal) -> str:
    if not value.is_finite():
        raise ValueError(f"{value} is not a JSON number")
    text = format(value, "f")
    return text


def dumps(value: Any) -> str:
    """Serialise with ``Decimal`` written as a JSON number, digit for digit."""
    if isinstance(value, Decimal):
        return _number(value)
    if isinstance(value, float):
        raise TypeError("a float reached the wire: money and rates must be Decimal")
    if isinstance(value, dict):
        return "{" + ",".join(f"{json.dumps(str(k))}:{dumps(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list | tuple):
        return "[" + ",".join(dumps(v) for v in value) + "]"
    return json.dumps(value)
