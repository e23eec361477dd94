"""A local SMTP server that keeps what it receives: where the demo's dunning mail goes.

``python -m collect.mail_sandbox [--port N]`` runs one until interrupted and
prints each message's recipients and subject as it arrives.
"""

from __future__ import annotations

import argparse
import socket
import threading
from dataclasses import dataclass
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session


@dataclass(frozen=True)
class Caught:
    rcpt_tos: tuple[str, ...]
    message: EmailMessage


class _Catcher:
    def __init__(self, sandbox: MailSandbox) -> None:
        self.sandbox = sandbox

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        message = BytesParser(policy=policy.default).parsebytes(envelope.original_content or b"")
        assert isinstance(message, EmailMessage)
        self.sandbox.keep(Caught(tuple(envelope.rcpt_tos), message))
        return "250 2.0.0 Message accepted for delivery"


class MailSandbox:
    """An SMTP server on 127.0.0.1 (no TLS, no login) holding every message in ``caught``."""

    host = "127.0.0.1"

    def __init__(self, port: int = 0, *, echo: bool = False) -> None:
        self.port = port or _free_port()
        self.echo = echo
        self.caught: list[Caught] = []
        self._lock = threading.Lock()
        self._controller = Controller(_Catcher(self), hostname=self.host, port=self.port, ready_timeout=10.0)

    def start(self) -> MailSandbox:
        self._controller.start()
        return self

    def stop(self) -> None:
        self._controller.stop()

    def keep(self, caught: Caught) -> None:
        with self._lock:
            self.caught.append(caught)
        if self.echo:
            print(f"{', '.join(caught.rcpt_tos)}: {caught.message['Subject']}", flush=True)

    def __enter__(self) -> MailSandbox:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=2525)
    args = parser.parse_args()
    with MailSandbox(args.port, echo=True) as sandbox:
        print(f"SMTP sandbox on {sandbox.host}:{sandbox.port}; Ctrl-C to stop", flush=True)
        threading.Event().wait()


if __name__ == "__main__":
    main()
