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


ISO_ZERO_DECIMAL = frozenset(
    {
        "BIF",
        "CLP",
        "DJF",
        "GNF",
        "ISK",
        "JPY",
        "KMF",
        "KRW",
        "PYG",
        "RWF",
        "UGX",
        "UYI",
        "VND",
        "VUV",
        "XAF",
        "XOF",
        "XPF",
    }
)
ISO_THREE_DECIMAL = frozenset({"BHD", "IQD", "JOD", "KWD", "LYD", "OMR", "TND"})


def minor_unit(currency: str) -> int:
    """Digits after the decimal point of ``currency`` in ISO 4217 (2 unless listed)."""
    code = currency.upper()
    if code in ISO_ZERO_DECIMAL:
        return 0
    if code in ISO_THREE_DECIMAL:
        return 3
    return 2


def show_money(amount: Decimal, currency: str) -> str:
    """``amount`` and its currency, to the currency's minor unit (PostgreSQL returns four places)."""
    return f"{amount.quantize(Decimal(1).scaleb(-minor_unit(currency)))} {currency}"
