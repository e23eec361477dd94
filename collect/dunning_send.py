"""Carrying out the ``notify`` entries: one message per entry, in the send window, paced, once.

Every message dunning (or auto-pay's 3-D Secure notice) decided on is a journal
entry. :class:`MessageSender` handles one claimed entry:

1. An entry whose outcome is unknown (a worker died mid-send) is looked up in
   ``dunning_message``: a row with its key means the message went, and nothing
   is sent again. The only window left is between the SMTP server accepting the
   message and that row being written; a resend then carries the same
   ``Message-ID`` (derived from the key), by which mail clients and archives
   recognise the copy.
2. Nothing goes for an invoice paid, voided or put on hold since the decision.
3. The send window (business days in the tenant's time zone), the tenant's
   daily cap and the gap between two messages to one customer decide when: the
   entry waits (``RetryAt``) until then.
4. Recipients are the customer's billing contacts less those opted out or
   undeliverable. A hard bounce marks the refused addresses undeliverable and
   the message goes to the contacts left, then to SMS when configured.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker
from sqlmodel import col

from collect.dunning import OPEN, late_fees_charged
from collect.mail import (
    HardBounce,
    MailConfigError,
    MessageRejected,
    OutgoingMessage,
    SmtpSender,
    TemplateProblem,
    Templates,
    TransientSendError,
    unsubscribe_link,
)
from collect.send_window import Pacing, SendWindow, earliest_send, local_instant
from collect.sms import SmsConfigError, SmsRejected, SmsSender, SmsTransientError, SmsUndeliverable
from sync.journal import Claimed, Done, GiveUp, Outcome, RetryAt
from sync.models import (
    ContactBlock,
    Customer,
    CustomerContact,
    CustomerLocale,
    DunningMessage,
    Invoice,
    InvoiceHold,
)

ZERO = Decimal(0)
TRANSIENT_RETRY = timedelta(minutes=15)
CONFIG_RETRY = timedelta(hours=1)
PAUSING_HOLDS = ("dispute", "hold")

PayUrl = Callable[[str, str, str | None], str | None]
"""(connection, customer, invoice or None for the balance) -> a payment link, or None."""


@dataclass(frozen=True, slots=True)
class _Recipient:
    channel: str
    address: str


class MessageSender:
    def __init__(
        self,
        sessions: sessionmaker[Session],
        tenant: str,
        tz: ZoneInfo,
        window: SendWindow,
        pacing: Pacing,
        templates: Templates,
        clock: Callable[[], datetime],
        *,
        mail: SmtpSender | None,
        sms: SmsSender | None = None,
        pay_url: PayUrl | None = None,
        pdf_url: str | None = None,
    ) -> None:
        self.sessions = sessions
        self.tenant = tenant
        self.tz = tz
        self.window = window
        self.pacing = pacing
        self.templates = templates
        self.clock = clock
        self.mail = mail
        self.sms = sms
        self.pay_url = pay_url
        self.pdf_url = pdf_url

    @contextmanager
    def session(self) -> Iterator[None]:
        """One SMTP connection for every message sent inside the block."""
        if self.mail is None:
            yield
            return
        with self.mail.session():
            yield

    def handle(self, entry: Claimed) -> Outcome:
        payload = entry.payload
        connection = str(payload["connection"])
        customer = str(payload["customer"])
        invoice = payload.get("invoice")
        now = self.clock()
        with self.sessions() as session:
            if entry.outcome_unknown:
                sent = session.execute(
                    sa.select(col(DunningMessage.message_id), col(DunningMessage.address)).where(
                        col(DunningMessage.key) == entry.key
                    )
                ).first()
                if sent is not None:
                    return Done(external_id=sent[0], result={"to": [sent[1]], "found": True})
            stale = self._stale(session, connection, invoice, now.astimezone(self.tz).date())
            if stale is not None:
                return Done(result={"skipped": stale})
            when = self._earliest(session, connection, customer, now)
            if when > now:
                return RetryAt(when, f"waits for the send window or pacing until {when.isoformat()}")
            recipients = self._recipients(session, connection, customer, str(payload.get("channel", "email")))
            context = self._context(session, entry, connection, customer, invoice)
        return self._send(entry, connection, customer, invoice, recipients, context, now)

    # --- deciding ---------------------------------------------------------------------------------------------

    def _stale(self, session: Session, connection: str, invoice: object, today: date) -> str | None:
        """Why the message should no longer go (None: it should)."""
        if invoice is None:
            return None
        row = session.execute(
            sa.select(col(Invoice.status), col(Invoice.balance)).where(
                col(Invoice.connection_id) == connection, col(Invoice.external_id) == str(invoice)
            )
        ).first()
        if row is None:
            return "the invoice is no longer in the ledger"
        if row[0] not in OPEN or row[1] <= 0:
            return f"the invoice is {row[0]} since the decision"
        hold = session.execute(
            sa.select(col(InvoiceHold.kind)).where(
                col(InvoiceHold.connection_id) == connection,
                col(InvoiceHold.invoice_external_id) == str(invoice),
                col(InvoiceHold.kind).in_(PAUSING_HOLDS),
                col(InvoiceHold.released_at).is_(None),
                sa.or_(col(InvoiceHold.until).is_(None), col(InvoiceHold.until) >= today),
            )
        ).first()
        return f"the invoice is on hold ({hold[0]}) since the decision" if hold is not None else None

    def _earliest(self, session: Session, connection: str, customer: str, now: datetime) -> datetime:
        local_day = now.astimezone(self.tz).date()
        midnight = local_instant(local_day, time(0), self.tz)
        sent_today = session.execute(
            sa.select(sa.func.count()).where(
                col(DunningMessage.tenant_id) == self.tenant,
                col(DunningMessage.status) == "sent",
                col(DunningMessage.sent_at) >= midnight,
            )
        ).scalar_one()
        last = session.execute(
            sa.select(sa.func.max(col(DunningMessage.sent_at))).where(
                col(DunningMessage.connection_id) == connection,
                col(DunningMessage.customer_external_id) == customer,
                col(DunningMessage.status) == "sent",
            )
        ).scalar_one_or_none()
        window, tz = self._locale(session, connection, customer)
        return earliest_send(window, tz, self.pacing, now, sent_today=int(sent_today), last_to_customer=last)

    def _locale(self, session: Session, connection: str, customer: str) -> tuple[SendWindow, ZoneInfo]:
        """The send window in the customer's time zone and on its country's business days, where known
        (``customer_locale``); the tenant's otherwise. The daily cap still counts the tenant's day."""
        found = session.get(CustomerLocale, (connection, customer))
        if found is None:
            return self.window, self.tz
        window = self.window
        if found.country is not None:
            window = replace(window, country=found.country, subdivision=found.subdivision)
        return window, ZoneInfo(found.timezone) if found.timezone else self.tz

    def _recipients(self, session: Session, connection: str, customer: str, channel: str) -> list[_Recipient]:
        blocks = session.execute(
            sa.select(col(ContactBlock.channel), col(ContactBlock.address)).where(
                col(ContactBlock.connection_id) == connection, col(ContactBlock.customer_external_id) == customer
            )
        ).all()
        blocked_channels = {c for c, address in blocks if address is None}
        blocked = {(c, address.lower()) for c, address in blocks if address is not None}
        found = session.execute(
            sa.select(col(Customer.id), col(Customer.phone)).where(
                col(Customer.connection_id) == connection, col(Customer.external_id) == customer
            )
        ).first()
        if found is None:
            return []
        emails = session.execute(
            sa.select(col(CustomerContact.email))
            .where(col(CustomerContact.customer_id) == found[0], col(CustomerContact.role) == "billing")
            .order_by(col(CustomerContact.id))
        ).scalars()
        people = [_Recipient("email", e) for e in emails if e and ("email", e.lower()) not in blocked]
        if "email" in blocked_channels or self.mail is None:
            people = []
        phone = found[1]
        texts = []
        if phone and self.sms is not None and "sms" not in blocked_channels and ("sms", phone.lower()) not in blocked:
            texts = [_Recipient("sms", phone)]
        return texts + people if channel == "sms" else people + texts

    def _context(
        self, session: Session, entry: Claimed, connection: str, customer: str, invoice: object
    ) -> dict[str, Any]:
        payload = entry.payload
        today = self.clock().astimezone(self.tz).date()
        name = session.execute(
            sa.select(col(Customer.name)).where(
                col(Customer.connection_id) == connection, col(Customer.external_id) == customer
            )
        ).scalar_one_or_none()
        rows = session.execute(
            sa.select(
                col(Invoice.external_id),
                col(Invoice.number),
                col(Invoice.issue_date),
                col(Invoice.due_date),
                col(Invoice.balance),
                col(Invoice.currency),
            )
            .where(
                col(Invoice.connection_id) == connection,
                col(Invoice.customer_external_id) == customer,
                col(Invoice.status).in_(OPEN),
            )
            .order_by(col(Invoice.due_date), col(Invoice.external_id))
        ).all()
        invoices = [self._invoice(connection, row, today) for row in rows if row.balance > ZERO]
        totals: dict[str, Decimal] = {}
        for item in invoices:
            totals[item["currency"]] = totals.get(item["currency"], Decimal(0)) + item["balance"]
        context: dict[str, Any] = {"customer": name or customer, "invoices": invoices, "totals": totals}
        this = next((item for item in invoices if item["id"] == invoice), None)
        if this is not None:
            context["invoice"] = this
            ref = (connection, str(invoice))
            fees = late_fees_charged(session, self.tenant, ref).get(ref)
            if fees is not None:
                context["fee"] = {"amount": fees.total, "currency": this["currency"]}
        if payload.get("url"):
            context["pay_url"] = str(payload["url"])
            if this is not None:
                this["pay_url"] = str(payload["url"])
        elif self.pay_url is not None:
            context["pay_url"] = self.pay_url(connection, customer, str(invoice) if invoice else None)
        if payload.get("promise_amount") is not None:
            context["promise"] = {
                "date": date.fromisoformat(str(payload["promise_until"])),
                "amount": Decimal(str(payload["promise_amount"])),
                "currency": payload.get("currency"),
            }
        if payload.get("due_on") is not None:
            context["instalment"] = {
                "due_on": date.fromisoformat(str(payload["due_on"])),
                "amount": Decimal(str(payload["amount"])),
                "currency": str(payload["currency"]),
            }
        return context

    def _invoice(self, connection: str, row: Any, today: date) -> dict[str, Any]:
        pdf = self.pdf_url.format(connection=connection, invoice=row.external_id) if self.pdf_url else None
        return {
            "id": row.external_id,
            "number": row.number or row.external_id,
            "issue_date": row.issue_date,
            "due_date": row.due_date,
            "balance": row.balance,
            "currency": row.currency,
            "days_overdue": (today - row.due_date).days if row.due_date else 0,
            "pdf_url": pdf,
            "pay_url": None,
        }

    # --- sending ----------------------------------------------------------------------------------------------

    def _send(
        self,
        entry: Claimed,
        connection: str,
        customer: str,
        invoice: object,
        recipients: list[_Recipient],
        context: Mapping[str, Any],
        now: datetime,
    ) -> Outcome:
        template = str(entry.payload["template"])
        token = unsubscribe_token(self.tenant, connection, customer)
        if self.mail is not None:
            context = {**context, "unsubscribe_url": unsubscribe_link(self.mail.settings, token)}
        try:
            subject, text, html = self.templates.render(template, context)
        except TemplateProblem as exc:
            return GiveUp(f"template: {exc}")
        emails = [r.address for r in recipients if r.channel == "email"]
        phones = [r.address for r in recipients if r.channel == "sms"]
        order = ["sms", "email"] if recipients and recipients[0].channel == "sms" else ["email", "sms"]
        bounced: list[str] = []
        for channel in order:
            if channel == "email" and emails and self.mail is not None:
                message = OutgoingMessage(entry.key, tuple(emails), subject, text, html, token)
                try:
                    result = self.mail.send(message)
                except HardBounce as exc:
                    bounced += list(exc.recipients)
                    self._undeliverable(connection, customer, "email", exc.recipients, now)
                    continue
                except (TransientSendError, MessageRejected) as exc:
                    return RetryAt(now + TRANSIENT_RETRY, f"mail: {exc}")
                except MailConfigError as exc:
                    return RetryAt(now + CONFIG_RETRY, f"mail configuration: {exc}")
                if result.refused:
                    self._undeliverable(connection, customer, "email", result.refused, now)
                return self._sent(
                    entry, connection, customer, invoice, "email", result.accepted, template, result.message_id, now
                )
            if channel == "sms" and phones and self.sms is not None:
                body = f"{subject} {context.get('pay_url') or ''}".strip()
                try:
                    message_id = self.sms.send(phones[0], body, entry.key)
                except SmsUndeliverable as exc:
                    bounced.append(phones[0])
                    self._undeliverable(connection, customer, "sms", {phones[0]: (exc.code, str(exc))}, now)
                    continue
                except SmsRejected as exc:
                    bounced.append(f"{phones[0]} ({exc})")
                    continue
                except SmsTransientError as exc:
                    return RetryAt(now + TRANSIENT_RETRY, f"sms: {exc}")
                except SmsConfigError as exc:
                    return RetryAt(now + CONFIG_RETRY, f"sms configuration: {exc}")
                return self._sent(entry, connection, customer, invoice, "sms", (phones[0],), template, message_id, now)
        why = "every contact bounced: " + ", ".join(bounced) if bounced else "no deliverable contact"
        return GiveUp(f"undeliverable: {why}")

    def _sent(
        self,
        entry: Claimed,
        connection: str,
        customer: str,
        invoice: object,
        channel: str,
        to: tuple[str, ...],
        template: str,
        message_id: str,
        now: datetime,
    ) -> Outcome:
        with self.sessions.begin() as session:
            session.add(
                DunningMessage(
                    key=entry.key,
                    tenant_id=self.tenant,
                    connection_id=connection,
                    customer_external_id=customer,
                    invoice_external_id=str(invoice) if invoice else None,
                    channel=channel,
                    address=", ".join(to)[:320],
                    template=template,
                    message_id=message_id,
                    status="sent",
                    sent_at=now,
                )
            )
        return Done(external_id=message_id, result={"to": list(to), "channel": channel})

    def _undeliverable(
        self, connection: str, customer: str, channel: str, refused: Mapping[str, tuple[int, str]], now: datetime
    ) -> None:
        with self.sessions.begin() as session:
            for address, (code, reply) in refused.items():
                session.add(
                    ContactBlock(
                        connection_id=connection,
                        customer_external_id=customer,
                        channel=channel,
                        address=address,
                        kind="bounce",
                        reason=f"{code} {reply}"[:500],
                        created_at=now,
                    )
                )


def unsubscribe_token(tenant: str, connection: str, customer: str) -> str:
    """Names the customer in an unsubscribe link without showing its ids."""
    return hashlib.sha256(f"{tenant}:{connection}:{customer}".encode()).hexdigest()[:32]
