"""The sending layer of dunning: templates, MIME messages and SMTP.

- :class:`Templates` renders a message (subject, text, HTML) from Jinja2
  templates packaged in ``collect/templates/``; a tenant's own ``template_dir``
  comes first and overrides any file by name. ``collect/templates/README.md``
  lists the templates and the context each expects.
- :func:`build_mime` turns an :class:`OutgoingMessage` into a
  ``multipart/alternative`` email whose ``Message-ID`` is derived from the
  send's journal key, so a resend after a crash carries the same Message-ID,
  and which carries ``List-Unsubscribe`` (with one-click unsubscribe, RFC 8058,
  when an HTTPS URL is configured).
- :class:`SmtpSender` sends over SMTP (STARTTLS, implicit TLS or plain, with
  AUTH when a username is set) and classifies every failure:
  :class:`HardBounce` (every recipient refused with a 5xx code: the contact is
  undeliverable), :class:`TransientSendError` (4xx, connection errors,
  timeouts: retry later), :class:`MailConfigError` (login refused, TLS not
  offered, the sender refused: a person must fix the settings) and
  :class:`MessageRejected` (the server refused the content itself).

An SMTP exchange cut between the end of the message and the server's reply
leaves the outcome unknown; it is reported as transient, and the resend
carries the same Message-ID so receivers can tell the two apart.
"""

from __future__ import annotations

import hashlib
import re
import smtplib
import ssl
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from email.message import EmailMessage
from email.utils import format_datetime, getaddresses, parseaddr
from pathlib import Path
from typing import Literal
from urllib.parse import quote

import jinja2
import jinja2.sandbox

from connectors.values import show_money, to_decimal

TEMPLATE_NAMES = (
    "reminder_upcoming",
    "reminder_overdue",
    "final_notice",
    "statement",
    "payment_link",
    "promise_broken",
    "plan_reminder",
    "suspension_notice",
    "service_resumed",
    "late_fee_notice",
)
"""The templates shipped in ``collect/templates/`` (each as ``.subject.txt``, ``.txt`` and ``.html``)."""

_PACKAGED_TEMPLATES = Path(__file__).parent / "templates"
_HEX_COLOUR = re.compile(r"#(?:[0-9a-fA-F]{3}|[0-9a-fA-F]{6})")
_DOMAIN = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?")


# --------------------------------------------------------------------------- settings and values


def _address(value: str, what: str) -> str:
    """The bare address of ``value`` ("Name <addr>" or "addr"), or ValueError naming ``what``."""
    _name, addr = parseaddr(value)
    if "@" not in addr or any(c in value for c in "\r\n"):
        raise ValueError(f"{what} is not an email address: {value!r}")
    return addr


@dataclass(frozen=True, slots=True, kw_only=True)
class MailSettings:
    """How to reach the SMTP server and what every message says about its sender.

    ``password`` is the plain secret, already revealed by the caller; it never
    appears in an error message. ``unsubscribe_url`` is a template holding
    ``{token}`` (e.g. ``https://pay.example.com/unsubscribe/{token}``).
    """

    host: str
    port: int = 587
    security: Literal["starttls", "ssl", "none"] = "starttls"
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    sender: str
    reply_to: str | None = None
    timeout_seconds: float = 30.0
    unsubscribe_url: str | None = None
    unsubscribe_mailto: str | None = None

    def __post_init__(self) -> None:
        if not self.host:
            raise ValueError("mail host must not be empty")
        if not 0 < self.port < 65536:
            raise ValueError(f"mail port {self.port} is not a TCP port")
        if self.security not in ("starttls", "ssl", "none"):
            raise ValueError(f"mail security must be starttls, ssl or none, not {self.security!r}")
        if self.timeout_seconds <= 0:
            raise ValueError(f"mail timeout_seconds must be positive, not {self.timeout_seconds}")
        _address(self.sender, "mail sender")
        if self.reply_to is not None:
            _address(self.reply_to, "mail reply_to")
        if self.unsubscribe_url is not None:
            if "{token}" not in self.unsubscribe_url:
                raise ValueError(f"mail unsubscribe_url must contain {{token}}: {self.unsubscribe_url!r}")
            if not self.unsubscribe_url.startswith("https://"):
                raise ValueError(f"mail unsubscribe_url must be an https URL (RFC 8058): {self.unsubscribe_url!r}")
        if self.unsubscribe_mailto is not None:
            target = self.unsubscribe_mailto.removeprefix("mailto:").split("?")[0].replace("{token}", "token")
            _address(target, "mail unsubscribe_mailto")

    @property
    def sender_address(self) -> str:
        """The bare address of ``sender``, used as the envelope sender."""
        return _address(self.sender, "mail sender")


@dataclass(frozen=True, slots=True, kw_only=True)
class Branding:
    """A tenant's look: name, logo, colour, footer, and optionally its own templates."""

    company_name: str
    logo_url: str | None = None
    accent_color: str = "#1f4e79"
    footer: str = ""
    support_email: str | None = None
    template_dir: str | None = None

    def __post_init__(self) -> None:
        if not self.company_name:
            raise ValueError("branding company_name must not be empty")
        if not _HEX_COLOUR.fullmatch(self.accent_color):
            raise ValueError(f"branding accent_color must be a hex colour like #1f4e79, not {self.accent_color!r}")


@dataclass(frozen=True, slots=True)
class OutgoingMessage:
    """One rendered message, ready to send under the journal key of its send."""

    key: str
    to: tuple[str, ...]
    subject: str
    text: str
    html: str
    unsubscribe_token: str | None = None


@dataclass(frozen=True, slots=True)
class SendResult:
    """What the server accepted. ``refused`` maps an address to its SMTP code and reply (a partial refusal)."""

    message_id: str
    accepted: tuple[str, ...]
    refused: Mapping[str, tuple[int, str]]


# --------------------------------------------------------------------------- errors


class TemplateProblem(Exception):
    """A template that is missing or cannot be rendered; the message names the template."""

    def __init__(self, template: str, problem: str) -> None:
        super().__init__(f"template {template}: {problem}")
        self.template = template


class SendError(Exception):
    """A message that did not go out."""


class TransientSendError(SendError):
    """Try again later: a 4xx reply, a connection error or a timeout.

    ``refused`` holds the recipients' replies when every recipient was refused
    and at least one of them only temporarily.
    """

    def __init__(self, message: str, refused: Mapping[str, tuple[int, str]] | None = None) -> None:
        super().__init__(message)
        self.refused: Mapping[str, tuple[int, str]] = dict(refused or {})


class HardBounce(SendError):
    """Every recipient was refused with a permanent (5xx) code: the contact is undeliverable."""

    def __init__(self, recipients: Mapping[str, tuple[int, str]]) -> None:
        shown = ", ".join(f"{addr} ({code} {reply})" for addr, (code, reply) in recipients.items())
        super().__init__(f"every recipient refused permanently: {shown}")
        self.recipients: Mapping[str, tuple[int, str]] = dict(recipients)


class MailConfigError(SendError):
    """The mail settings are wrong (login refused, TLS not offered, sender refused); retrying will not help."""


class MessageRejected(SendError):
    """The server refused the message itself with a permanent code (for example as spam)."""

    def __init__(self, message: str, code: int, reply: str) -> None:
        super().__init__(message)
        self.code = code
        self.reply = reply


# --------------------------------------------------------------------------- templates


def _money(amount: object, currency: str) -> str:
    """Template filter: ``{{ invoice.balance | money(invoice.currency) }}`` -> ``1234.50 USD``."""
    return show_money(to_decimal(amount, "template", "money"), currency)


def _long_date(value: date | datetime) -> str:
    """Template filter: ``{{ invoice.due_date | long_date }}`` -> ``20 November 2026``."""
    return f"{value.day} {value:%B %Y}"


class Templates:
    """Renders dunning messages for one tenant's branding.

    ``render(name, context)`` reads ``{name}.subject.txt``, ``{name}.txt`` and
    ``{name}.html``, first from the tenant's ``template_dir`` and then from the
    packaged templates. HTML is autoescaped, text is not; a reference to a
    value missing from the context fails. Templates run in Jinja2's sandbox,
    since tenants may supply their own. ``branding`` is always in the
    context; ``pay_url`` and ``unsubscribe_url`` default to ``None``.
    """

    def __init__(self, branding: Branding) -> None:
        self.branding = branding
        loaders: list[jinja2.BaseLoader] = []
        if branding.template_dir is not None:
            if not Path(branding.template_dir).is_dir():
                raise ValueError(f"branding template_dir {branding.template_dir!r} is not a directory")
            loaders.append(jinja2.FileSystemLoader(branding.template_dir))
        loaders.append(jinja2.FileSystemLoader(str(_PACKAGED_TEMPLATES)))
        # Sandboxed: a tenant's templates may read the context but not reach into Python objects.
        self._env = jinja2.sandbox.SandboxedEnvironment(
            loader=jinja2.ChoiceLoader(loaders),
            autoescape=jinja2.select_autoescape(enabled_extensions=("html",), default_for_string=False),
            undefined=jinja2.StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
            keep_trailing_newline=True,
        )
        self._env.filters["money"] = _money
        self._env.filters["long_date"] = _long_date

    def render(self, name: str, context: Mapping[str, object]) -> tuple[str, str, str]:
        """(subject, text, html) of template ``name`` with ``context``; raises :class:`TemplateProblem`."""
        values: dict[str, object] = {"pay_url": None, "unsubscribe_url": None, **context, "branding": self.branding}
        subject = " ".join(self._render(f"{name}.subject.txt", values).split())
        if not subject:
            raise TemplateProblem(f"{name}.subject.txt", "renders an empty subject")
        return subject, self._render(f"{name}.txt", values), self._render(f"{name}.html", values)

    def _render(self, filename: str, values: Mapping[str, object]) -> str:
        try:
            return self._env.get_template(filename).render(values)
        except jinja2.TemplateNotFound as exc:
            detail = "not found" if exc.name == filename else f"not found: {exc.name} (used by it)"
            raise TemplateProblem(filename, detail) from exc
        except jinja2.TemplateSyntaxError as exc:
            where = f"{exc.name or filename} line {exc.lineno}"
            raise TemplateProblem(filename, f"syntax error in {where}: {exc.message}") from exc
        except jinja2.UndefinedError as exc:
            raise TemplateProblem(filename, f"missing value: {exc.message}") from exc
        except (jinja2.TemplateError, TypeError, ValueError, ArithmeticError, LookupError, AttributeError) as exc:
            raise TemplateProblem(filename, f"cannot render: {type(exc).__name__}: {exc}") from exc


# --------------------------------------------------------------------------- MIME


def message_id_for(key: str, domain: str) -> str:
    """The Message-ID of the send journalled under ``key``: the same key always gives the same id."""
    if not _DOMAIN.fullmatch(domain):
        raise ValueError(f"message id domain is not a host name: {domain!r}")
    digest = hashlib.sha256(key.encode("utf-8")).hexdigest()[:40]
    return f"<arsync.{digest}@{domain}>"


def unsubscribe_link(settings: MailSettings, token: str | None) -> str | None:
    """The HTTPS unsubscribe URL for ``token``, or None when there is no URL template or no token.

    Put it in the template context as ``unsubscribe_url`` so the footer shows the same link as the header.
    """
    if settings.unsubscribe_url is None or token is None:
        return None
    return settings.unsubscribe_url.replace("{token}", quote(token, safe=""))


def _unsubscribe_mailto(settings: MailSettings, token: str | None) -> str | None:
    if settings.unsubscribe_mailto is None:
        return None
    target = settings.unsubscribe_mailto.removeprefix("mailto:")
    if "{token}" in target:
        return "mailto:" + target.replace("{token}", quote(token or "", safe=""))
    if token is None:
        return "mailto:" + target
    joiner = "&" if "?" in target else "?"
    return f"mailto:{target}{joiner}subject={quote('unsubscribe ' + token, safe='')}"


def build_mime(
    message: OutgoingMessage, settings: MailSettings, *, domain: str, now: datetime | None = None
) -> EmailMessage:
    """The email for ``message``: text and HTML alternatives, headers, a Message-ID derived from its key.

    ``now`` (aware) sets the Date header; it defaults to the current time.
    """
    if not message.to:
        raise ValueError(f"message {message.key} has no recipient")
    for value in (message.subject, *message.to):
        if "\r" in value or "\n" in value:
            raise ValueError(f"message {message.key}: a line break in a header value ({value!r})")
    mime = EmailMessage()
    mime["Subject"] = message.subject
    mime["From"] = settings.sender
    mime["To"] = ", ".join(message.to)
    if settings.reply_to is not None:
        mime["Reply-To"] = settings.reply_to
    mime["Date"] = format_datetime((now or datetime.now(UTC)).astimezone(UTC))
    mime["Message-ID"] = message_id_for(message.key, domain)
    targets = [
        f"<{link}>"
        for link in (
            _unsubscribe_mailto(settings, message.unsubscribe_token),
            unsubscribe_link(settings, message.unsubscribe_token),
        )
        if link is not None
    ]
    if targets:
        mime["List-Unsubscribe"] = ", ".join(targets)
    if unsubscribe_link(settings, message.unsubscribe_token) is not None:
        mime["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    mime["Auto-Submitted"] = "auto-generated"
    mime.set_content(message.text)
    mime.add_alternative(message.html, subtype="html")
    return mime


# --------------------------------------------------------------------------- SMTP


def _reply(raw: bytes | str) -> str:
    return raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw


def _refusals(refused: Mapping[str, tuple[int, bytes | str]]) -> dict[str, tuple[int, str]]:
    return {addr: (int(code), _reply(reply)) for addr, (code, reply) in refused.items()}


class SmtpSender:
    """Sends :class:`OutgoingMessage` values over SMTP and classifies what goes wrong.

    One connection per :meth:`send`, or one for a whole batch inside
    ``with sender.session():``. Not thread-safe: use one sender per thread.
    ``domain`` (for Message-IDs) defaults to the sender address's domain;
    ``ssl_context`` defaults to ``ssl.create_default_context()``.
    """

    def __init__(
        self,
        settings: MailSettings,
        *,
        domain: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.settings = settings
        self.domain = domain or settings.sender_address.rpartition("@")[2]
        message_id_for("", self.domain)  # validates the domain now
        self._ssl_context = ssl_context
        self._clock = clock or (lambda: datetime.now(UTC))
        self._connection: smtplib.SMTP | None = None
        self._in_session = 0

    # -- public

    def send(self, message: OutgoingMessage) -> SendResult:
        """Send ``message``; a partial refusal is returned in ``SendResult.refused``, anything else raises."""
        mime = build_mime(message, self.settings, domain=self.domain, now=self._clock())
        recipients = [addr for _, addr in getaddresses(list(message.to))]
        if not all("@" in addr for addr in recipients):
            raise ValueError(f"message {message.key}: not an email address among {message.to!r}")
        connection = self._reusable() or self._connect()
        try:
            refused = self._deliver(connection, mime, recipients)
        except SendError as exc:
            if isinstance(exc, TransientSendError | MailConfigError):
                self._drop(connection)
            elif self._connection is None:
                self._close(connection)
            raise
        if self._connection is None:
            self._close(connection)
        return SendResult(
            message_id=str(mime["Message-ID"]),
            accepted=tuple(addr for addr in recipients if addr not in refused),
            refused=refused,
        )

    @contextmanager
    def session(self) -> Iterator[SmtpSender]:
        """Reuse one connection for every send inside the block (reconnecting after a transient error)."""
        self._in_session += 1
        try:
            yield self
        finally:
            self._in_session -= 1
            if self._in_session == 0 and self._connection is not None:
                connection, self._connection = self._connection, None
                self._close(connection)

    # -- internals

    def _where(self) -> str:
        s = self.settings
        return f"{s.host}:{s.port}"

    def _context(self) -> ssl.SSLContext:
        return self._ssl_context if self._ssl_context is not None else ssl.create_default_context()

    def _reusable(self) -> smtplib.SMTP | None:
        """The session's connection if it still answers (servers drop idle ones), else None."""
        connection = self._connection
        if connection is None:
            return None
        try:
            code, _ = connection.noop()
        except (smtplib.SMTPException, OSError):
            code = 0
        if code == 250:
            return connection
        self._drop(connection)
        return None

    def _connect(self) -> smtplib.SMTP:
        s = self.settings
        connection: smtplib.SMTP | None = None
        try:
            if s.security == "ssl":
                connection = smtplib.SMTP_SSL(s.host, s.port, timeout=s.timeout_seconds, context=self._context())
            else:
                connection = smtplib.SMTP(s.host, s.port, timeout=s.timeout_seconds)
            connection.ehlo()
            if s.security == "starttls":
                if not connection.has_extn("starttls"):
                    raise MailConfigError(f"SMTP server {self._where()} does not offer STARTTLS")
                connection.starttls(context=self._context())
                connection.ehlo()
            if s.username is not None:
                self._login(connection, s.username, s.password or "")
        except SendError:
            if connection is not None:
                self._close(connection)
            raise
        except ssl.SSLCertVerificationError as exc:
            if connection is not None:
                self._close(connection)
            raise MailConfigError(
                f"SMTP server {self._where()} presented a certificate that cannot be verified: {exc.verify_message}"
            ) from exc
        except (smtplib.SMTPException, OSError) as exc:
            if connection is not None:
                self._close(connection)
            raise TransientSendError(f"cannot connect to SMTP server {self._where()}: {self._scrub(exc)}") from exc
        if self._in_session:
            self._connection = connection
        return connection

    def _login(self, connection: smtplib.SMTP, username: str, password: str) -> None:
        try:
            connection.login(username, password)
        except smtplib.SMTPAuthenticationError as exc:
            if 400 <= exc.smtp_code < 500:
                raise TransientSendError(
                    f"SMTP server {self._where()} could not check the login of user {username!r} now: "
                    f"{exc.smtp_code} {self._scrub(_reply(exc.smtp_error))}"
                ) from None
            raise MailConfigError(
                f"SMTP server {self._where()} refused the login of user {username!r}: "
                f"{exc.smtp_code} {self._scrub(_reply(exc.smtp_error))}"
            ) from None
        except smtplib.SMTPNotSupportedError:
            raise MailConfigError(
                f"SMTP server {self._where()} offers no AUTH (for user {username!r}) on this connection; "
                "check the security setting"
            ) from None
        except smtplib.SMTPException as exc:
            if "no suitable authentication method" in str(exc).lower():
                raise MailConfigError(
                    f"SMTP server {self._where()} offers no authentication method we support (user {username!r})"
                ) from None
            raise

    def _deliver(
        self, connection: smtplib.SMTP, mime: EmailMessage, recipients: list[str]
    ) -> dict[str, tuple[int, str]]:
        sender = self.settings.sender_address
        try:
            return _refusals(connection.send_message(mime, from_addr=sender, to_addrs=recipients))
        except smtplib.SMTPRecipientsRefused as exc:
            refused = _refusals(exc.recipients)
            if refused and all(500 <= code < 600 for code, _ in refused.values()):
                raise HardBounce(refused) from exc
            shown = ", ".join(f"{addr} ({code} {reply})" for addr, (code, reply) in refused.items())
            raise TransientSendError(f"every recipient refused, some temporarily: {shown}", refused) from exc
        except smtplib.SMTPSenderRefused as exc:
            reply = _reply(exc.smtp_error)
            if 500 <= exc.smtp_code < 600:
                raise MailConfigError(
                    f"SMTP server {self._where()} refused the sender {sender}: {exc.smtp_code} {reply}"
                ) from exc
            raise TransientSendError(f"SMTP server {self._where()}: sender {sender}: {exc.smtp_code} {reply}") from exc
        except smtplib.SMTPResponseException as exc:
            reply = _reply(exc.smtp_error)
            if 500 <= exc.smtp_code < 600:
                raise MessageRejected(
                    f"SMTP server {self._where()} rejected the message: {exc.smtp_code} {reply}", exc.smtp_code, reply
                ) from exc
            raise TransientSendError(f"SMTP server {self._where()}: {exc.smtp_code} {reply}") from exc
        except (smtplib.SMTPException, OSError) as exc:
            raise TransientSendError(f"sending through SMTP server {self._where()} failed: {self._scrub(exc)}") from exc

    def _scrub(self, value: object) -> str:
        text = str(value)
        password = self.settings.password
        return text.replace(password, "***") if password else text

    def _drop(self, connection: smtplib.SMTP) -> None:
        """Forget a connection that may be broken; the next send in a session reconnects."""
        if self._connection is connection:
            self._connection = None
        self._close(connection)

    @staticmethod
    def _close(connection: smtplib.SMTP) -> None:
        try:
            connection.quit()
        except (smtplib.SMTPException, OSError):
            connection.close()


__all__ = [
    "TEMPLATE_NAMES",
    "Branding",
    "HardBounce",
    "MailConfigError",
    "MailSettings",
    "MessageRejected",
    "OutgoingMessage",
    "SendError",
    "SendResult",
    "SmtpSender",
    "TemplateProblem",
    "Templates",
    "TransientSendError",
    "build_mime",
    "message_id_for",
    "unsubscribe_link",
]
