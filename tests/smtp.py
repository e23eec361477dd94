"""A real SMTP server in the test process, for tests of the sending layer.

``SmtpServer`` runs an aiosmtpd ``Controller`` on a free 127.0.0.1 port in a
background thread and keeps every message it accepts (envelope and parsed
message) in ``received``. Options:

- ``tls``: ``"none"``, ``"starttls"`` (offers STARTTLS) or ``"ssl"`` (implicit
  TLS), with a certificate issued by a throwaway trustme CA; clients trust it
  through ``server.client_ssl_context``;
- ``user`` / ``password``: require AUTH with these credentials (over TLS only,
  unless ``auth_require_tls=False``);
- ``refuse``: recipient address -> SMTP code (``550`` for a hard bounce,
  ``451`` for a temporary failure); it may be changed while the server runs.

Fixtures built on it are registered in ``tests/conftest.py``.
"""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from typing import Any, Literal

import trustme
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from collect.mail import MailSettings

REPLIES = {
    550: "550 5.1.1 Mailbox unavailable",
    551: "551 5.1.6 User not local",
    552: "552 5.2.2 Mailbox full",
    553: "553 5.1.3 Mailbox name not allowed",
    450: "450 4.2.1 Mailbox busy, try again later",
    451: "451 4.3.0 Temporary local problem, try again later",
    452: "452 4.2.2 Insufficient storage, try again later",
}


@dataclass(frozen=True)
class Received:
    """One message the server accepted."""

    mail_from: str
    rcpt_tos: tuple[str, ...]
    raw: bytes
    message: EmailMessage
    tls: bool
    login: str | None
    peer: object

    def part(self, content_type: str) -> str:
        """The decoded body of the first part of ``content_type`` (for example ``text/plain``)."""
        for part in self.message.walk():
            if part.get_content_type() == content_type and not part.is_multipart():
                return str(part.get_content())
        raise AssertionError(f"no {content_type} part in message {self.message['Message-ID']}")


class _Handler:
    def __init__(self, server: SmtpServer) -> None:
        self._server = server

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, rcpt_options: list[str]
    ) -> str:
        code = self._server.refuse.get(address.lower())
        if code is not None:
            return REPLIES.get(code, f"{code} Refused by test server")
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or b""
        message = BytesParser(policy=policy.default).parsebytes(raw)
        assert isinstance(message, EmailMessage)
        auth = session.auth_data
        login = auth.login.decode() if session.authenticated and isinstance(auth, LoginPassword) else None
        mail_from = envelope.mail_from or ""
        self._server._record(
            Received(
                mail_from=mail_from,
                rcpt_tos=tuple(envelope.rcpt_tos),
                raw=raw,
                message=message,
                tls=session.ssl is not None or self._server.tls == "ssl",
                login=login,
                peer=session.peer,
            )
        )
        return "250 2.0.0 Message accepted for delivery"


class _Controller(Controller):
    def __init__(self, *args: Any, implicit_tls: bool, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._implicit_tls = implicit_tls

    def factory(self) -> SMTP:
        smtp: SMTP = super().factory()  # type: ignore[no-untyped-call]
        if self._implicit_tls:
            # The whole session is encrypted, but aiosmtpd only counts STARTTLS as TLS when it allows AUTH.
            smtp._auth_require_tls = False
        return smtp


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class SmtpServer:
    """An aiosmtpd server on 127.0.0.1 that records what it receives."""

    host = "127.0.0.1"

    def __init__(
        self,
        *,
        tls: Literal["none", "starttls", "ssl"] = "none",
        user: str | None = None,
        password: str | None = None,
        auth_require_tls: bool = True,
        refuse: Mapping[str, int] | None = None,
    ) -> None:
        self.tls = tls
        self.user = user
        self.password = password
        self.refuse: dict[str, int] = {addr.lower(): code for addr, code in (refuse or {}).items()}
        self.received: list[Received] = []
        self.failed_logins = 0
        self.port = 0
        self._lock = threading.Lock()
        self._auth_require_tls = auth_require_tls
        self._controller: Controller | None = None
        self._ca = trustme.CA()
        self._cert = self._ca.issue_cert("127.0.0.1", "localhost")
        self.client_ssl_context = ssl.create_default_context()
        self._ca.configure_trust(self.client_ssl_context)

    # -- lifecycle

    def start(self) -> SmtpServer:
        server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._cert.configure_cert(server_context)
        kwargs: dict[str, Any] = {"server_hostname": "smtp.test", "ready_timeout": 10.0}
        if self.tls == "starttls":
            kwargs["tls_context"] = server_context
        elif self.tls == "ssl":
            kwargs["ssl_context"] = server_context
        if self.user is not None:
            kwargs["authenticator"] = self._authenticate
            kwargs["auth_required"] = True
            kwargs["auth_require_tls"] = self._auth_require_tls
        last: OSError | None = None
        for _ in range(5):  # a free port can be taken between probing and binding
            port = _free_port()
            controller = _Controller(
                _Handler(self), hostname=self.host, port=port, implicit_tls=self.tls == "ssl", **kwargs
            )
            try:
                controller.start()
            except OSError as exc:
                last = exc
                continue
            self._controller, self.port = controller, port
            return self
        raise RuntimeError(f"could not start the test SMTP server: {last}")

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    def __enter__(self) -> SmtpServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- helpers for tests

    def settings(self, **overrides: Any) -> MailSettings:
        """MailSettings pointing at this server (security, credentials and a sender filled in)."""
        values: dict[str, Any] = {
            "host": self.host,
            "port": self.port,
            "security": self.tls,
            "username": self.user,
            "password": self.password,
            "sender": "Acme Receivables <ar@acme.example>",
        }
        values.update(overrides)
        return MailSettings(**values)

    def _authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: object
    ) -> AuthResult:
        ok = (
            isinstance(auth_data, LoginPassword)
            and self.user is not None
            and self.password is not None
            and auth_data.login == self.user.encode()
            and auth_data.password == self.password.encode()
        )
        if not ok:
            with self._lock:
                self.failed_logins += 1
        # handled=False: aiosmtpd then answers "535 Authentication credentials invalid" itself.
        return AuthResult(success=ok, handled=False, auth_data=auth_data if ok else None)

    def _record(self, received: Received) -> None:
        with self._lock:
            self.received.append(received)


@contextmanager
def running_smtp_server(**options: Any) -> Iterator[SmtpServer]:
    """An :class:`SmtpServer` started for the duration of the block."""
    server = SmtpServer(**options)
    server.start()
    try:
        yield server
    finally:
        server.stop()
