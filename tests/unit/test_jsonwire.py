from decimal import Decimal

import pytest

from connectors.jsonwire import dumps, loads


def test_decimals_round_trip_digit_for_digit() -> None:
    body = {"Amount": Decimal("1234567890123.4567"), "Rate": Decimal("0.000012345"), "Lines": [Decimal("-5.00")]}
    text = dumps(body)
    assert text == '{"Amount":1234567890123.4567,"Rate":0.000012345,"Lines":[-5.00]}'
    assert loads(text) == body and type(loads(text)["Amount"]) is Decimal


def test_a_float_is_refused() -> None:
    with pytest.raises(TypeError, match="float"):
        dumps({"Amount": 1.5})


def test_plain_values() -> None:
    assert dumps({"a": [1, True, None, 'x"y']}) == '{"a":[1,true,null,"x\\"y"]}'
