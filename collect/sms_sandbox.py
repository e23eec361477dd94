"""A local stand-in for Twilio's Messages API, for tests and the demo.

:class:`TwilioSandbox` is a small threaded HTTP server on ``127.0.0.1`` (a free
port) speaking the part of Twilio's REST API that :class:`collect.sms.TwilioSms`
uses, with Twilio's shapes:

* ``POST /2010-04-01/Accounts/{AccountSid}/Messages.json``, form-encoded
  ``To``, ``From``, ``Body`` (other documented parameters are accepted and
  ignored). HTTP basic auth must be the account SID and auth token (else 401,
  code 20003); the path's SID must be the same account (else 404, code 20404).
  ``To`` and ``Body`` missing: 400, codes 21604 and 21602; ``From`` missing:
  21603; ``To`` not E.164: 400, 21211; ``From`` not the account's number: 400,
  21606; ``Body`` over 1600 characters: 400, 21617. Success: 201 and the Message
  resource (``sid`` ``SM`` + 32 hex digits, ``status`` ``queued``).
* ``GET /2010-04-01/Accounts/{AccountSid}/Messages.json`` with optional ``To``,
  ``From``, ``DateSent>`` (``YYYY-MM-DD``) and ``PageSize``: the account's
  messages, newest first, in Twilio's page shape (``messages``,
  ``next_page_uri``, ...); only the first page is served (``next_page_uri``
  is null), enough for the tests' handful of messages.

Errors are Twilio's JSON: ``{"code", "message", "more_info", "status"}``.

For tests: :attr:`messages` (what was accepted, oldest first),
:attr:`requests` (every request's method, path and form), :meth:`fail_number`
(answer 400 with a given code for one ``To``, e.g. 21610 for a recipient who
replied STOP) and :meth:`fail_next` (answer the next requests with a status,
e.g. 429 or 503, optionally with ``Retry-After``). The clock is injected.
"""

from __future__ import annotations

import base64
import json
import re
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

__all__ = ["ERROR_MESSAGES", "SandboxMessage", "SandboxRequest", "TwilioSandbox"]

API_VERSION = "2010-04-01"
_MESSAGES = re.compile(r"^/2010-04-01/Accounts/([^/]+)/Messages\.json$")
_E164 = re.compile(r"^\+[1-9][0-9]{6,14}$")
MAX_BODY = 1600

ERROR_MESSAGES: dict[int, str] = {
    20003: "Authenticate",
    20404: "The requested resource {path} was not found",
    20429: "Too Many Requests",
    21211: "The 'To' number {to} is not a valid phone number.",
    21602: "Message body is required.",
    21603: "A 'From' phone number is required.",
    21604: "A 'To' phone number is required.",
    21606: "The From phone number {from_} is not a valid, SMS-capable inbound phone number or short code "
    "for your account.",
    21610: "Attempt to send to unsubscribed recipient",
    21612: "The 'To' phone number: {to}, is not currently reachable using the 'From' phone number: {from_} via SMS.",
    21614: "'To' number is not a valid mobile number",
    21617: "The concatenated message body exceeds the 1600 character limit.",
}


@dataclass(frozen=True, slots=True)
class SandboxMessage:
    sid: str
    to: str
    from_: str
    body: str
    date_created: datetime


@dataclass(frozen=True, slots=True)
class SandboxRequest:
    method: str
    path: str
    form: dict[str, str]
    authorized: bool


@dataclass
class _Failure:
    status: int
    code: int
    retry_after: str | None = None
    times: int = 1


@dataclass
class _State:
    account_sid: str
    auth_token: str
    from_numbers: frozenset[str]
    clock: Callable[[], datetime]
    messages: list[SandboxMessage] = field(default_factory=list)
    requests: list[SandboxRequest] = field(default_factory=list)
    failing_numbers: dict[str, int] = field(default_factory=dict)
    next_failures: list[_Failure] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


class TwilioSandbox:
    """A Twilio-like Messages API for one account; ``start()`` / ``stop()`` or a ``with`` block."""

    host = "127.0.0.1"

    def __init__(
        self,
        account_sid: str = "AC" + "0" * 32,
        auth_token: str = "sandbox-auth-token",
        from_numbers: tuple[str, ...] = ("+15005550006",),
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self._state = _State(account_sid, auth_token, frozenset(from_numbers), clock or (lambda: datetime.now(UTC)))
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle

    @property
    def account_sid(self) -> str:
        return self._state.account_sid

    @property
    def auth_token(self) -> str:
        return self._state.auth_token

    @property
    def base_url(self) -> str:
        if self._server is None:
            raise RuntimeError("the sandbox is not running")
        return f"http://{self.host}:{self._server.server_address[1]}"

    def start(self) -> TwilioSandbox:
        state = self._state
        handler = type("_BoundHandler", (_Handler,), {"state": state})
        self._server = ThreadingHTTPServer((self.host, 0), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="twilio-sandbox", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def __enter__(self) -> TwilioSandbox:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- what tests read and set

    @property
    def messages(self) -> list[SandboxMessage]:
        with self._state.lock:
            return list(self._state.messages)

    @property
    def requests(self) -> list[SandboxRequest]:
        with self._state.lock:
            return list(self._state.requests)

    def fail_number(self, to: str, code: int) -> None:
        """Answer every send to ``to`` with 400 and Twilio error ``code`` (21610: unsubscribed, ...)."""
        with self._state.lock:
            self._state.failing_numbers[to] = code

    def fail_next(
        self, status: int, *, code: int | None = None, retry_after: str | None = None, times: int = 1
    ) -> None:
        """Answer the next ``times`` requests with ``status`` (and ``Retry-After`` when given)."""
        with self._state.lock:
            self._state.next_failures.append(
                _Failure(status, code if code is not None else (20429 if status == 429 else 20500), retry_after, times)
            )


def _resource(state: _State, message: SandboxMessage) -> dict[str, Any]:
    return {
        "sid": message.sid,
        "account_sid": state.account_sid,
        "to": message.to,
        "from": message.from_,
        "body": message.body,
        "status": "queued",
        "direction": "outbound-api",
        "api_version": API_VERSION,
        "num_segments": str(max(1, -(-len(message.body) // 160))),
        "num_media": "0",
        "price": None,
        "price_unit": "USD",
        "error_code": None,
        "error_message": None,
        "messaging_service_sid": None,
        "date_created": format_datetime(message.date_created, usegmt=True),
        "date_updated": format_datetime(message.date_created, usegmt=True),
        "date_sent": None,
        "uri": f"/{API_VERSION}/Accounts/{state.account_sid}/Messages/{message.sid}.json",
        "subresource_uris": {"media": f"/{API_VERSION}/Accounts/{state.account_sid}/Messages/{message.sid}/Media.json"},
    }


class _Handler(BaseHTTPRequestHandler):
    state: _State
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        return

    # -- plumbing

    def _send(self, status: int, document: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        body = json.dumps(document).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def _error(self, status: int, code: int, headers: dict[str, str] | None = None, **values: str) -> None:
        template = ERROR_MESSAGES.get(code, "Error")
        message = template.format(**{"to": "", "from_": "", "path": self.path, **values})
        document = {
            "code": code,
            "message": message,
            "more_info": f"https://www.twilio.com/docs/errors/{code}",
            "status": status,
        }
        self._send(status, document, headers)

    def _authorized(self) -> bool:
        header = self.headers.get("Authorization", "")
        scheme, _, encoded = header.partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            user, _, password = base64.b64decode(encoded).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return False
        return secrets.compare_digest(user, self.state.account_sid) and secrets.compare_digest(
            password, self.state.auth_token
        )

    def _form(self) -> dict[str, str]:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length).decode() if length else ""
        if raw and not self.headers.get("Content-Type", "").startswith("application/x-www-form-urlencoded"):
            return {}
        return {k: v[-1] for k, v in parse_qs(raw, keep_blank_values=True).items()}

    def _common(self, method: str, form: dict[str, str]) -> str | None:
        """Records the request, answers injected failures and auth; the account SID of the path, or None."""
        state = self.state
        authorized = self._authorized()
        path = urlsplit(self.path).path
        with state.lock:
            state.requests.append(SandboxRequest(method, path, form, authorized))
            failure = state.next_failures[0] if state.next_failures else None
            if failure is not None:
                failure.times -= 1
                if failure.times <= 0:
                    state.next_failures.pop(0)
        if failure is not None:
            headers = {"Retry-After": failure.retry_after} if failure.retry_after else None
            self._error(failure.status, failure.code, headers)
            return None
        match = _MESSAGES.match(path)
        if match is None:
            self._error(404, 20404)
            return None
        if not authorized:
            self._error(401, 20003, {"WWW-Authenticate": 'Basic realm="Twilio API"'})
            return None
        if match.group(1) != state.account_sid:
            self._error(404, 20404)
            return None
        return match.group(1)

    # -- routes

    def do_POST(self) -> None:
        form = self._form()
        if self._common("POST", form) is None:
            return
        state = self.state
        to, from_, body = form.get("To", ""), form.get("From", ""), form.get("Body", "")
        if not to:
            return self._error(400, 21604)
        if not from_:
            return self._error(400, 21603)
        if not body:
            return self._error(400, 21602)
        if not _E164.fullmatch(to):
            return self._error(400, 21211, to=to)
        if from_ not in state.from_numbers:
            return self._error(400, 21606, from_=from_)
        if len(body) > MAX_BODY:
            return self._error(400, 21617)
        with state.lock:
            code = state.failing_numbers.get(to)
        if code is not None:
            return self._error(400, code, to=to, from_=from_)
        message = SandboxMessage("SM" + secrets.token_hex(16), to, from_, body, state.clock())
        with state.lock:
            state.messages.append(message)
        self._send(201, _resource(state, message))

    def do_GET(self) -> None:
        if self._common("GET", {}) is None:
            return
        state = self.state
        query = {k: v[-1] for k, v in parse_qs(urlsplit(self.path).query).items()}
        try:
            page_size = max(1, min(1000, int(query.get("PageSize", "50"))))
            since = date.fromisoformat(query["DateSent>"]) if "DateSent>" in query else None
        except ValueError:
            return self._error(400, 20001)
        with state.lock:
            found = [
                m
                for m in reversed(state.messages)
                if query.get("To", m.to) == m.to
                and query.get("From", m.from_) == m.from_
                and (since is None or m.date_created.date() >= since)
            ]
        uri = f"/{API_VERSION}/Accounts/{state.account_sid}/Messages.json"
        self._send(
            200,
            {
                "messages": [_resource(state, m) for m in found[:page_size]],
                "page": 0,
                "page_size": page_size,
                "start": 0,
                "end": max(0, min(page_size, len(found)) - 1),
                "first_page_uri": f"{uri}?PageSize={page_size}&Page=0",
                "next_page_uri": None,
                "previous_page_uri": None,
                "uri": f"{uri}?PageSize={page_size}&Page=0",
            },
        )
