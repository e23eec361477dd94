"""The sending layer against a real SMTP server (aiosmtpd) in the test process, with the real smtplib client."""

from __future__ import annotations

import socket
from collections.abc import Callable
from datetime import UTC, date, datetime
from decimal import Decimal
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import pytest

from collect.mail import (
    TEMPLATE_NAMES,
    Branding,
    HardBounce,
    MailConfigError,
    OutgoingMessage,
    SmtpSender,
    TemplateProblem,
    Templates,
    TransientSendError,
    build_mime,
    message_id_for,
    unsubscribe_link,
)
from tests.conftest import SMTP_PASSWORD, SMTP_USER
from tests.smtp import SmtpServer
from tests.support import FakeClock

BRANDING = Branding(
    company_name="Acme & Sons",
    support_email="help@acme.example",
    footer="Acme & Sons Ltd, 1 Market Street",
)
PAY_URL = "https://pay.acme.example/i/inv-1001"
PDF_URL = "https://acme.example/pdf/inv-1001.pdf"
UNSUBSCRIBE = "https://acme.example/unsubscribe/{token}"
TOKEN = "tok/42"


def invoice(**overrides: object) -> dict[str, object]:
    values: dict[str, object] = {
        "number": "INV-1001",
        "issue_date": date(2026, 10, 1),
        "due_date": date(2026, 10, 31),
        "balance": Decimal("1234.5"),
        "currency": "USD",
        "days_overdue": 22,
        "pdf_url": PDF_URL,
        "pay_url": PAY_URL,
    }
    values.update(overrides)
    return values


def full_context(unsubscribe_url: str | None = None) -> dict[str, object]:
    second = invoice(
        number="INV-1002", balance=Decimal("99"), currency="EUR", days_overdue=0, pdf_url=None, pay_url=None
    )
    return {
        "customer": "Jane <b>Doe</b>",
        "invoice": invoice(),
        "invoices": [invoice(), second],
        "totals": {"USD": Decimal("1234.5"), "EUR": Decimal("99")},
        "pay_url": "https://pay.acme.example/c/cus-7",
        "unsubscribe_url": unsubscribe_url,
        "fee": {"amount": Decimal("25")},
        "promise": {"date": date(2026, 11, 15), "amount": Decimal("500")},
        "instalment": {"due_on": date(2026, 12, 1), "amount": Decimal("250"), "currency": "USD"},
    }


def rendered(server: SmtpServer, key: str, to: tuple[str, ...], **settings: Any) -> tuple[OutgoingMessage, Any]:
    mail_settings = server.settings(unsubscribe_url=UNSUBSCRIBE, **settings)
    context = full_context(unsubscribe_link(mail_settings, TOKEN))
    subject, text, html = Templates(BRANDING).render("reminder_overdue", context)
    return OutgoingMessage(key, to, subject, text, html, unsubscribe_token=TOKEN), mail_settings


def test_a_rendered_reminder_arrives_over_starttls_with_auth(smtp_secure_server: SmtpServer) -> None:
    clock = FakeClock(datetime(2026, 11, 22, 14, 30, tzinfo=UTC))
    message, settings = rendered(
        smtp_secure_server,
        "email:acme:qbo:inv-1001:overdue-15",
        ("Jane Doe <jane@customer.example>",),
        reply_to="Acme Help <help@acme.example>",
        unsubscribe_mailto="unsubscribe@acme.example",
    )
    sender = SmtpSender(settings, ssl_context=smtp_secure_server.client_ssl_context, clock=clock)

    result = sender.send(message)

    assert result.accepted == ("jane@customer.example",)
    assert result.refused == {}
    [got] = smtp_secure_server.received
    assert got.tls and got.login == SMTP_USER
    assert got.mail_from == "ar@acme.example"
    assert got.rcpt_tos == ("jane@customer.example",)
    mime = got.message
    assert mime.get_content_type() == "multipart/alternative"
    assert [p.get_content_type() for p in mime.iter_parts()] == ["text/plain", "text/html"]
    assert mime["Subject"] == "Invoice INV-1001 is overdue: 1234.50 USD"
    assert mime["From"] == "Acme Receivables <ar@acme.example>"
    assert mime["To"] == "Jane Doe <jane@customer.example>"
    assert mime["Reply-To"] == "Acme Help <help@acme.example>"
    assert parsedate_to_datetime(mime["Date"]) == clock()
    expected_id = message_id_for("email:acme:qbo:inv-1001:overdue-15", "acme.example")
    assert mime["Message-ID"] == expected_id == result.message_id
    assert mime["List-Unsubscribe"].strip() == (  # folded between the two links: unfolds with a leading space
        "<mailto:unsubscribe@acme.example?subject=unsubscribe%20tok%2F42>, <https://acme.example/unsubscribe/tok%2F42>"
    )
    assert mime["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"

    text, html = got.part("text/plain"), got.part("text/html")
    for body in (text, html):
        assert PAY_URL in body
        assert PDF_URL in body
        assert "https://acme.example/unsubscribe/tok%2F42" in body
        assert "22 days overdue" in body
    assert "Dear Jane <b>Doe</b>," in text  # text is not escaped
    assert "Dear Jane &lt;b&gt;Doe&lt;/b&gt;," in html  # HTML is
    assert "Acme &amp; Sons" in html and "Acme & Sons" in text


def test_a_resend_carries_the_same_message_id(smtp_server: SmtpServer) -> None:
    message, settings = rendered(smtp_server, "email:acme:inv-1:step-2", ("a@customer.example",))
    sender = SmtpSender(settings)
    first = sender.send(message)
    again = sender.send(message)
    other = sender.send(OutgoingMessage("email:acme:inv-1:step-3", message.to, "s", "t", "<p>h</p>"))
    ids = [got.message["Message-ID"] for got in smtp_server.received]
    assert ids == [first.message_id, first.message_id, other.message_id]
    assert first.message_id == again.message_id != other.message_id
    assert first.message_id.endswith("@acme.example>")


def test_wrong_password_is_a_config_error_naming_host_and_user(smtp_secure_server: SmtpServer) -> None:
    message, settings = rendered(smtp_secure_server, "k", ("a@customer.example",), password="wrong-password-123")
    sender = SmtpSender(settings, ssl_context=smtp_secure_server.client_ssl_context)
    with pytest.raises(MailConfigError) as caught:
        sender.send(message)
    text = str(caught.value)
    assert f"127.0.0.1:{smtp_secure_server.port}" in text
    assert repr(SMTP_USER) in text
    assert "wrong-password-123" not in text and SMTP_PASSWORD not in text
    assert smtp_secure_server.failed_logins >= 1
    assert smtp_secure_server.received == []


def test_an_untrusted_certificate_is_a_config_error(smtp_secure_server: SmtpServer) -> None:
    message, settings = rendered(smtp_secure_server, "k", ("a@customer.example",))
    with pytest.raises(MailConfigError, match="certificate"):
        SmtpSender(settings).send(message)  # the system trust store does not know the test CA
    assert smtp_secure_server.received == []


def test_auth_without_tls_is_a_config_error(smtp_server_factory: Callable[..., SmtpServer]) -> None:
    server = smtp_server_factory(tls="starttls", user="u", password="p")
    message, settings = rendered(server, "k", ("a@customer.example",), security="none")
    with pytest.raises(MailConfigError, match="no AUTH"):
        SmtpSender(settings).send(message)


def test_implicit_tls(smtp_server_factory: Callable[..., SmtpServer]) -> None:
    server = smtp_server_factory(tls="ssl", user="u", password="p")
    message, settings = rendered(server, "k", ("a@customer.example",))
    SmtpSender(settings, ssl_context=server.client_ssl_context).send(message)
    [got] = server.received
    assert got.tls and got.login == "u"


def test_every_recipient_refused_with_550_is_a_hard_bounce(smtp_server: SmtpServer) -> None:
    smtp_server.refuse.update({"gone@customer.example": 550, "full@customer.example": 552})
    message, settings = rendered(smtp_server, "k", ("gone@customer.example", "Full <full@customer.example>"))
    with pytest.raises(HardBounce) as caught:
        SmtpSender(settings).send(message)
    assert set(caught.value.recipients) == {"gone@customer.example", "full@customer.example"}
    assert caught.value.recipients["gone@customer.example"][0] == 550
    assert caught.value.recipients["full@customer.example"][0] == 552
    assert smtp_server.received == []


def test_a_451_is_transient(smtp_server: SmtpServer) -> None:
    smtp_server.refuse["busy@customer.example"] = 451
    message, settings = rendered(smtp_server, "k", ("busy@customer.example",))
    with pytest.raises(TransientSendError) as caught:
        SmtpSender(settings).send(message)
    assert caught.value.refused["busy@customer.example"][0] == 451
    assert smtp_server.received == []


def test_a_mix_of_550_and_451_for_every_recipient_is_transient(smtp_server: SmtpServer) -> None:
    smtp_server.refuse.update({"gone@customer.example": 550, "busy@customer.example": 451})
    message, settings = rendered(smtp_server, "k", ("gone@customer.example", "busy@customer.example"))
    with pytest.raises(TransientSendError) as caught:
        SmtpSender(settings).send(message)
    assert {addr: code for addr, (code, _) in caught.value.refused.items()} == {
        "gone@customer.example": 550,
        "busy@customer.example": 451,
    }


def test_a_partial_refusal_is_reported(smtp_server: SmtpServer) -> None:
    smtp_server.refuse["gone@customer.example"] = 550
    message, settings = rendered(smtp_server, "k", ("ok@customer.example", "gone@customer.example"))
    result = SmtpSender(settings).send(message)
    assert result.accepted == ("ok@customer.example",)
    assert list(result.refused) == ["gone@customer.example"]
    code, reply = result.refused["gone@customer.example"]
    assert code == 550 and "unavailable" in reply
    [got] = smtp_server.received
    assert got.rcpt_tos == ("ok@customer.example",)


def test_a_closed_port_is_transient() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings = SmtpServer().settings(port=port, security="none", username=None, password=None)
    with pytest.raises(TransientSendError, match=f"127.0.0.1:{port}"):
        SmtpSender(settings).send(OutgoingMessage("k", ("a@customer.example",), "s", "t", "h"))


def test_a_server_that_never_greets_times_out_as_transient() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)  # accepts the TCP connection, never says a word
        port = listener.getsockname()[1]
        settings = SmtpServer().settings(port=port, security="none", username=None, password=None, timeout_seconds=0.2)
        with pytest.raises(TransientSendError):
            SmtpSender(settings).send(OutgoingMessage("k", ("a@customer.example",), "s", "t", "h"))


def test_a_session_reuses_one_connection(smtp_server: SmtpServer) -> None:
    message, settings = rendered(smtp_server, "k1", ("a@customer.example",))
    sender = SmtpSender(settings)
    with sender.session():
        sender.send(message)
        sender.send(OutgoingMessage("k2", ("b@customer.example",), "s", "t", "h"))
    sender.send(OutgoingMessage("k3", ("c@customer.example",), "s", "t", "h"))
    peers = [got.peer for got in smtp_server.received]
    assert len(peers) == 3
    assert peers[0] == peers[1] != peers[2]


def test_a_session_survives_a_hard_bounce(smtp_server: SmtpServer) -> None:
    smtp_server.refuse["gone@customer.example"] = 550
    _, settings = rendered(smtp_server, "k", ("a@customer.example",))
    sender = SmtpSender(settings)
    with sender.session():
        with pytest.raises(HardBounce):
            sender.send(OutgoingMessage("k1", ("gone@customer.example",), "s", "t", "h"))
        sender.send(OutgoingMessage("k2", ("ok@customer.example",), "s", "t", "h"))
    [got] = smtp_server.received
    assert got.rcpt_tos == ("ok@customer.example",)


def test_a_tenant_template_overrides_the_packaged_one(tmp_path: Path) -> None:
    subject = "{{ branding.company_name }}: pay {{ invoice.number }} now\n"
    (tmp_path / "reminder_overdue.subject.txt").write_text(subject)
    (tmp_path / "_layout.html").write_text("<div class='tenant'>{% block content %}{% endblock %}</div>\n")
    templates = Templates(Branding(company_name="Tenant Co", template_dir=str(tmp_path)))
    subject, text, html = templates.render("reminder_overdue", full_context())
    assert subject == "Tenant Co: pay INV-1001 now"
    assert html.startswith("<div class='tenant'>") and PAY_URL in html
    assert "Kind regards,\nTenant Co" in text  # not overridden: the packaged text part

    packaged_subject, _, _ = Templates(Branding(company_name="Tenant Co")).render("reminder_overdue", full_context())
    assert packaged_subject == "Invoice INV-1001 is overdue: 1234.50 USD"


def test_a_missing_context_value_names_the_template() -> None:
    templates = Templates(BRANDING)
    context = full_context()
    del context["invoice"]
    with pytest.raises(TemplateProblem, match=r"reminder_overdue\.subject\.txt.*'invoice' is undefined"):
        templates.render("reminder_overdue", context)

    context = full_context()
    context["invoice"] = {k: v for k, v in invoice().items() if k != "pdf_url"}
    with pytest.raises(TemplateProblem, match=r"reminder_overdue\.txt.*pdf_url") as caught:
        templates.render("reminder_overdue", context)
    assert caught.value.template == "reminder_overdue.txt"


def test_a_missing_template_is_named() -> None:
    with pytest.raises(TemplateProblem, match=r"template no_such_notice\.subject\.txt: not found"):
        Templates(BRANDING).render("no_such_notice", full_context())


def test_money_refuses_a_float() -> None:
    context = full_context()
    context["invoice"] = invoice(balance=1234.5)
    with pytest.raises(TemplateProblem, match="float"):
        Templates(BRANDING).render("reminder_overdue", context)


@pytest.mark.parametrize("name", TEMPLATE_NAMES)
def test_every_shipped_template_renders(name: str) -> None:
    unsubscribe = "https://acme.example/unsubscribe/tok"
    subject, text, html = Templates(BRANDING).render(name, full_context(unsubscribe))
    assert subject and "\n" not in subject
    assert "Jane" in text and "Jane &lt;b&gt;" in html
    for body in (text, html):
        assert unsubscribe in body
        assert "help@acme.example" in body
    if name in {"reminder_upcoming", "reminder_overdue", "final_notice", "late_fee_notice", "statement"}:
        for body in (text, html):
            assert PAY_URL in body and PDF_URL in body
    if name in {"statement", "suspension_notice", "promise_broken"}:
        for body in (text, html):
            assert "INV-1001" in body and "INV-1002" in body
            assert "1234.50 USD" in body and "99.00 EUR" in body


def test_build_mime_leaves_out_one_click_without_a_url(smtp_server: SmtpServer) -> None:
    settings = smtp_server.settings(unsubscribe_mailto="unsubscribe@acme.example")
    mime = build_mime(OutgoingMessage("k", ("a@customer.example",), "s", "t", "h"), settings, domain="acme.example")
    assert mime["List-Unsubscribe"] == "<mailto:unsubscribe@acme.example>"
    assert mime["List-Unsubscribe-Post"] is None
    with pytest.raises(ValueError, match="line break"):
        build_mime(OutgoingMessage("k", ("a@customer.example",), "s\r\nBcc: x@y", "t", "h"), settings, domain="a.b")


def test_a_tenant_template_cannot_reach_into_python(tmp_path: Path) -> None:
    (tmp_path / "service_resumed.subject.txt").write_text("{{ branding.__class__.__mro__ }}")
    templates = Templates(Branding(company_name="Tenant Co", template_dir=str(tmp_path)))
    with pytest.raises(TemplateProblem, match=r"service_resumed\.subject\.txt"):
        templates.render("service_resumed", full_context())
