"""Texts through TwilioSms against the local Twilio-like sandbox (real HTTP, basic auth, form data)."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from datetime import timedelta

import pytest
import requests

from collect.sms import (
    SmsConfigError,
    SmsRejected,
    SmsSender,
    SmsTransientError,
    SmsUndeliverable,
    TwilioSms,
    is_e164,
)
from collect.sms_sandbox import TwilioSandbox
from tests.support import FakeClock

SID = "AC" + "1234abcd" * 4
TOKEN = "tok_3f9a0c1d2e4b5a6978"
FROM = "+15005550006"
TO = "+14155550123"


@pytest.fixture
def sandbox(clock: FakeClock) -> Iterator[TwilioSandbox]:
    with TwilioSandbox(SID, TOKEN, (FROM,), clock=clock) as server:
        yield server


@pytest.fixture
def sms(sandbox: TwilioSandbox, clock: FakeClock) -> TwilioSms:
    return TwilioSms(SID, TOKEN, FROM, base_url=sandbox.base_url, timeout=5, clock=clock)


def test_a_text_is_posted_as_twilio_expects_and_its_sid_returned(sms: TwilioSms, sandbox: TwilioSandbox) -> None:
    port: SmsSender = sms
    sid = port.send(TO, "Invoice INV-1 is 5 days overdue: https://pay.example/1", "notify:acme:1")
    assert sid.startswith("SM") and len(sid) == 34
    [message] = sandbox.messages
    assert (message.sid, message.to, message.from_) == (sid, TO, FROM)
    assert message.body == "Invoice INV-1 is 5 days overdue: https://pay.example/1"
    [request] = sandbox.requests
    assert request.method == "POST"
    assert request.path == f"/2010-04-01/Accounts/{SID}/Messages.json"
    assert request.authorized
    assert request.form == {"To": TO, "From": FROM, "Body": message.body}


def test_a_number_twilio_cannot_text_is_undeliverable(sms: TwilioSms, sandbox: TwilioSandbox) -> None:
    for number, code in (("+14155550100", 21610), ("+14155550101", 21614), ("+14155550102", 21211)):
        sandbox.fail_number(number, code)
        with pytest.raises(SmsUndeliverable) as caught:
            sms.send(number, "hello", f"k-{code}")
        assert caught.value.code == code
        assert number in str(caught.value)
    assert sandbox.messages == []


def test_a_number_that_is_not_e164_is_refused_before_any_call(sms: TwilioSms, sandbox: TwilioSandbox) -> None:
    for number in ("(415) 555-0123", "4155550123", "+0123456789", "+1 415 555 0123", ""):
        assert not is_e164(number)
        with pytest.raises(SmsUndeliverable) as caught:
            sms.send(number, "hello", "k")
        assert caught.value.code == 21211
    assert sandbox.requests == []


def test_the_sandbox_itself_refuses_a_number_that_is_not_e164(sandbox: TwilioSandbox) -> None:
    response = requests.post(
        f"{sandbox.base_url}/2010-04-01/Accounts/{SID}/Messages.json",
        data={"To": "4155550123", "From": FROM, "Body": "x"},
        auth=(SID, TOKEN),
        timeout=5,
    )
    assert response.status_code == 400
    assert response.json()["code"] == 21211
    assert set(response.json()) == {"code", "message", "more_info", "status"}


def test_a_wrong_token_is_a_config_error_that_never_shows_the_token(sandbox: TwilioSandbox, clock: FakeClock) -> None:
    wrong = TwilioSms(SID, "not-the-token-9f8e7d", FROM, base_url=sandbox.base_url, timeout=5, clock=clock)
    with pytest.raises(SmsConfigError) as caught:
        wrong.send(TO, "hello", "k")
    assert "401" in str(caught.value)
    assert "not-the-token-9f8e7d" not in str(caught.value)
    assert "not-the-token-9f8e7d" not in repr(wrong)
    assert [r.authorized for r in sandbox.requests] == [False]
    assert sandbox.messages == []


def test_a_from_number_the_account_does_not_own_is_a_config_error(sandbox: TwilioSandbox, clock: FakeClock) -> None:
    other = TwilioSms(SID, TOKEN, "+15005550001", base_url=sandbox.base_url, timeout=5, clock=clock)
    with pytest.raises(SmsConfigError, match="21606"):
        other.send(TO, "hello", "k")


def test_rate_limits_and_server_errors_are_transient(sms: TwilioSms, sandbox: TwilioSandbox) -> None:
    sandbox.fail_next(429, retry_after="30")
    with pytest.raises(SmsTransientError) as limited:
        sms.send(TO, "hello", "k")
    assert limited.value.retry_after == 30.0 and not limited.value.maybe_sent
    sandbox.fail_next(503)
    with pytest.raises(SmsTransientError, match="503"):
        sms.send(TO, "hello", "k")
    assert sandbox.messages == []
    assert sms.send(TO, "hello", "k").startswith("SM")


def test_a_refused_connection_is_transient_and_nothing_was_sent(clock: FakeClock) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    closed = TwilioSms(SID, TOKEN, FROM, base_url=f"http://127.0.0.1:{port}", timeout=5, clock=clock)
    with pytest.raises(SmsTransientError) as caught:
        closed.send(TO, "hello", "k")
    assert not caught.value.maybe_sent
    assert TOKEN not in str(caught.value)


def test_other_refusals_are_rejections(sms: TwilioSms, sandbox: TwilioSandbox) -> None:
    with pytest.raises(SmsRejected) as caught:
        sms.send(TO, "x" * 1601, "k")
    assert caught.value.code == 21617


def test_a_sent_text_is_found_again_after_an_unknown_outcome(
    sms: TwilioSms, sandbox: TwilioSandbox, clock: FakeClock
) -> None:
    started = clock()
    sid = sms.send(TO, "Invoice INV-7 is overdue", "notify:acme:7")
    clock.advance(hours=1)
    sms.send("+14155550999", "Invoice INV-7 is overdue", "notify:acme:other")
    assert sms.find_sent(TO, "Invoice INV-7 is overdue", started) == sid
    assert sms.find_sent(TO, "Invoice INV-8 is overdue", started) is None
    assert sms.find_sent(TO, "Invoice INV-7 is overdue", started + timedelta(days=1)) is None
    lookups = [r for r in sandbox.requests if r.method == "GET"]
    assert lookups and all(r.authorized for r in lookups)


def test_settings_are_checked_when_built() -> None:
    with pytest.raises(ValueError, match=r"E\.164"):
        TwilioSms(SID, TOKEN, "5005550006")
    with pytest.raises(ValueError, match="auth token"):
        TwilioSms(SID, "", FROM)
    with pytest.raises(ValueError, match="timeout"):
        TwilioSms(SID, TOKEN, FROM, timeout=0)
