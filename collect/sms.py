"""Text messages for dunning: a port, and its Twilio implementation.

:class:`SmsSender` is what dunning's sender needs: ``send(to, body, key)``
returns the provider's message id or raises one of

* :class:`SmsUndeliverable` (``code``, ``message``): the number cannot take a
  text (not a valid or not a mobile number, unroutable, or the recipient
  replied STOP: Twilio 21610). Mark the contact's SMS channel undeliverable and
  fall back to the next contact or channel; sending again will not help.
* :class:`SmsTransientError`: 429, 5xx, a connection error or a timeout; try
  again later (``retry_after`` seconds when the provider said). When
  ``maybe_sent`` is set the request may have reached the provider (a timeout
  after sending): look the message up (:meth:`TwilioSms.find_sent`) before
  sending again.
* :class:`SmsConfigError`: the account's settings are wrong (401: the account
  SID or auth token; an unknown account; a ``From`` number the account does not
  own). A person must act.
* :class:`SmsRejected`: any other refusal of this one message (the body too
  long, say).

:class:`TwilioSms` posts ``To``, ``From`` and ``Body`` as form data to
``/2010-04-01/Accounts/{AccountSid}/Messages.json`` with HTTP basic auth
(account SID and auth token); a ``201`` answer carries the Message resource,
whose ``sid`` (``SM...``) is returned. Twilio's error answers are JSON
``{"code", "message", "more_info", "status"}``. Phone numbers must be E.164
(``+`` and up to 15 digits): a ``To`` that is not is refused here, before any
call, as undeliverable.

Twilio's Messages API has no idempotency key, so ``key`` (the journal key) is
not sent; a send whose outcome is unknown is looked up with
:meth:`TwilioSms.find_sent` (same ``To``, ``From`` and body, since the first
attempt) before it is made again. The auth token never appears in an error
message or a ``repr``.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime
from typing import Any, Final, Protocol

import requests
from urllib3.exceptions import NewConnectionError

from connectors import jsonwire
from connectors.base import Clock
from connectors.http import retry_after_seconds

__all__ = [
    "E164",
    "UNDELIVERABLE_CODES",
    "SmsConfigError",
    "SmsError",
    "SmsRejected",
    "SmsSender",
    "SmsTransientError",
    "SmsUndeliverable",
    "TwilioSms",
    "is_e164",
]

E164: Final = re.compile(r"^\+[1-9][0-9]{6,14}$")
"""``+``, a country code and the number: 7 to 15 digits, no spaces or punctuation."""
TWILIO_API: Final = "https://api.twilio.com"
API_VERSION: Final = "2010-04-01"
UNDELIVERABLE_CODES: Final = frozenset({21211, 21217, 21408, 21610, 21612, 21614})
"""Twilio error codes that mean this number cannot take a text: 21211 invalid 'To' number, 21217 number
does not appear valid, 21408 no permission to send to the number's region, 21610 the recipient
unsubscribed (replied STOP), 21612 the number cannot be reached from the 'From' number, 21614 not a
mobile number."""
CONFIG_CODES: Final = frozenset({20003, 20404, 21212, 21606, 21659})
"""Twilio error codes that mean our settings are wrong: 20003 authentication, 20404 no such account,
21212 / 21606 / 21659 a 'From' number that is not valid or not the account's."""
MESSAGE_SHOWN: Final = 200
INVALID_TO: Final = 21211


def _before_sending(exc: requests.ConnectionError) -> bool:
    """True when the connection failed before the request could be sent (refused, no such host)."""
    cause = exc.args[0] if exc.args else None
    reason = getattr(cause, "reason", cause)
    return isinstance(reason, NewConnectionError)


def is_e164(number: str) -> bool:
    return bool(E164.fullmatch(number))


class SmsError(Exception):
    """A text that did not go out."""


class SmsUndeliverable(SmsError):
    """The number cannot take a text (``code``: the provider's error code; a number refused here before
    any call, as not E.164, carries 21211, Twilio's code for an invalid 'To' number)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"{message} (code {code})")
        self.code = code
        self.message = message


class SmsTransientError(SmsError):
    """Try again later; ``maybe_sent``: the provider may have the message (look it up first)."""

    def __init__(self, message: str, *, retry_after: float | None = None, maybe_sent: bool = False) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.maybe_sent = maybe_sent


class SmsConfigError(SmsError):
    """The provider refused our account settings; retrying will not help."""


class SmsRejected(SmsError):
    """The provider refused this message for a reason other than its number (``code``: its error code)."""

    def __init__(self, code: int | None, message: str) -> None:
        super().__init__(f"{message} (code {code})" if code is not None else message)
        self.code = code
        self.message = message


class SmsSender(Protocol):
    def send(self, to: str, body: str, key: str) -> str:
        """Send ``body`` to ``to`` (E.164) for the journal entry ``key``; returns the provider's message id."""
        ...


class TwilioSms:
    """:class:`SmsSender` over Twilio's REST API (``base_url``: Twilio's, or a local sandbox's)."""

    def __init__(
        self,
        account_sid: str,
        auth_token: str,
        from_number: str,
        base_url: str = TWILIO_API,
        timeout: float = 30,
        *,
        session: requests.Session | None = None,
        clock: Clock | None = None,
    ) -> None:
        if not account_sid:
            raise ValueError("the Twilio account SID must not be empty")
        if not auth_token:
            raise ValueError("the Twilio auth token must not be empty")
        if not is_e164(from_number):
            raise ValueError(f"the SMS from_number must be E.164, such as +15551234567 (got {from_number!r})")
        if timeout <= 0:
            raise ValueError(f"the SMS timeout must be positive, not {timeout}")
        self.account_sid = account_sid
        self._auth_token = auth_token
        self.from_number = from_number
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.session = session or requests.Session()
        self._clock = clock or (lambda: datetime.now(UTC))

    def __repr__(self) -> str:
        return (
            f"TwilioSms(account_sid={self.account_sid!r}, from_number={self.from_number!r}, base_url={self.base_url!r})"
        )

    @property
    def messages_url(self) -> str:
        return f"{self.base_url}/{API_VERSION}/Accounts/{self.account_sid}/Messages.json"

    def send(self, to: str, body: str, key: str) -> str:
        if not is_e164(to):
            raise SmsUndeliverable(INVALID_TO, f"{to!r} is not an E.164 phone number (such as +15551234567)")
        if not body.strip():
            raise SmsRejected(None, f"message {key} has an empty body")
        form = {"To": to, "From": self.from_number, "Body": body}
        try:
            response = self.session.post(
                self.messages_url, data=form, auth=(self.account_sid, self._auth_token), timeout=self.timeout
            )
        except requests.ConnectTimeout as exc:
            raise SmsTransientError(f"Twilio: cannot connect: {self._scrub(exc)}") from None
        except requests.Timeout as exc:
            raise SmsTransientError(f"Twilio: no answer in time: {self._scrub(exc)}", maybe_sent=True) from None
        except requests.ConnectionError as exc:
            raise SmsTransientError(
                f"Twilio: connection failed: {self._scrub(exc)}", maybe_sent=not _before_sending(exc)
            ) from None
        if response.status_code in (200, 201):
            sid = self._json(response).get("sid")
            if not isinstance(sid, str) or not sid:
                raise SmsTransientError("Twilio answered without a message sid", maybe_sent=True)
            return sid
        raise self._error(response, to)

    def find_sent(self, to: str, body: str, since: date | datetime) -> str | None:
        """The sid of a message already sent from our number to ``to`` with exactly ``body``, on or after
        ``since``'s day (Twilio filters by day), or None. For a send whose outcome is unknown."""
        day = since.date() if isinstance(since, datetime) else since
        params = {"To": to, "From": self.from_number, "DateSent>": day.isoformat(), "PageSize": "100"}
        url: str | None = self.messages_url
        while url:
            try:
                response = self.session.get(
                    url, params=params, auth=(self.account_sid, self._auth_token), timeout=self.timeout
                )
            except (requests.Timeout, requests.ConnectionError) as exc:
                raise SmsTransientError(f"Twilio: looking up messages failed: {self._scrub(exc)}") from None
            if response.status_code != 200:
                raise self._error(response, to)
            page = self._json(response)
            for message in page.get("messages") or []:
                if message.get("body") == body and message.get("to") == to and message.get("sid"):
                    return str(message["sid"])
            next_uri = page.get("next_page_uri")
            url, params = (f"{self.base_url}{next_uri}", {}) if next_uri else (None, {})
        return None

    # -- internals

    def _scrub(self, value: object) -> str:
        return str(value).replace(self._auth_token, "***")

    @staticmethod
    def _json(response: requests.Response) -> dict[str, Any]:
        try:
            document = jsonwire.loads(response.content)
        except ValueError:
            return {}
        return document if isinstance(document, dict) else {}

    def _error(self, response: requests.Response, to: str) -> SmsError:
        status = response.status_code
        document = self._json(response)
        raw_code = document.get("code")
        code = raw_code if isinstance(raw_code, int) else None
        message = self._scrub(str(document.get("message") or response.text[:MESSAGE_SHOWN] or response.reason))
        where = f"Twilio answered {status}" + (f" (code {code})" if code is not None else "")
        if status == 429 or status >= 500:
            wait = retry_after_seconds(response.headers, self._clock())
            return SmsTransientError(f"{where}: {message}", retry_after=wait)
        if status in (401, 403) or code in CONFIG_CODES:
            return SmsConfigError(
                f"{where} for account {self.account_sid}: {message}"
                + (" (check the account SID and auth token)" if status == 401 else "")
            )
        if status == 404:
            return SmsConfigError(f"{where} for account {self.account_sid}: {message} (check the account SID)")
        if code is not None and code in UNDELIVERABLE_CODES:
            return SmsUndeliverable(code, f"{to}: {message}")
        return SmsRejected(code, f"{where}: {message}")
