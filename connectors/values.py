"""Reading scalar values out of vendor payloads, the same way for every connector."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation


class MappingError(ValueError):
    """A payload that cannot become a canonical record. The message names the field."""


def to_decimal(value: object, where: str, field: str) -> Decimal:
    """A JSON number (already ``Decimal``), an int or a numeric string as ``Decimal``.

    A float means the payload was parsed without ``parse_float=Decimal``: a
    bug, raised as ``TypeError`` rather than quarantined.
    """
    if isinstance(value, float):
        raise TypeError(f"{where}: {field} is a float; parse vendor JSON with parse_float=Decimal")
    if isinstance(value, bool):
        raise MappingError(f"{where}: {field} is not a number ({value!r})")
    if isinstance(value, Decimal):
        result = value
    elif isinstance(value, int | str):
        try:
            result = Decimal(str(value).strip())
        except InvalidOperation as exc:
            raise MappingError(f"{where}: {field} is not a number ({value!r})") from exc
    else:
        raise MappingError(f"{where}: {field} is not a number ({value!r})")
    if not result.is_finite():
        raise MappingError(f"{where}: {field} is not a finite number ({value!r})")
    return result
