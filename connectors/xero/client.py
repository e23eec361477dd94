"""Xero: OAuth2, the record source and the ledger writer.

xero-python builds every Accounting API request (paths, query parameters,
``If-Modified-Since``, ``Idempotency-Key``) and sends it through our
``HttpTransport`` by way of a small REST adapter, so every call gets the
tenant's and the app's rate budgets, explicit timeouts, the fault table of
``faults.py`` and token refresh. Responses are read raw
(``_preload_content=False``) and parsed with ``Decimal``: the SDK's
float-typed models are never built, and request bodies are serialised by
``connectors.jsonwire`` so no amount passes through a float either.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any
from urllib.parse import urlencode

import requests
from xero_python.accounting import AccountingApi
from xero_python.api_client import ApiClient, Configuration
from xero_python.identity import IdentityApi

from connectors import jsonwire
from connectors.base import (
    Actor,
    Clock,
    Entity,
    FatalError,
    OAuthTokens,
    Page,
    Posting,
    PostingResult,
    ReauthRequiredError,
    RetriableError,
    Sleeper,
    TokenStore,
    Window,
)
from connectors.http import HttpTransport, RateBudget
from connectors.oauth import BearerTokens, read_redirect
from connectors.xero.faults import RateHeaders, make_classifier, read_rate_headers, validation_messages
from connectors.xero.mapping import COLLECTIONS, ID_FIELDS, MappingError, format_if_modified_since, map_list_response

PAGE_SIZE = 1000
BATCH_SIZE = 50
"""Xero recommends at most 50 items per PUT."""
TOKEN_SKEW = timedelta(seconds=120)
REFRESH_ATTEMPTS = 3
"""A refresh whose answer was lost is retried with the same refresh token: Xero honours it for 30 minutes."""

_FILTERS: Mapping[str, str] = {
    "Invoices": 'Type=="ACCREC"',
    "CreditNotes": 'Type=="ACCRECCREDIT"',
    "Overpayments": 'Type=="RECEIVE-OVERPAYMENT"',
    "Prepayments": 'Type=="RECEIVE-PREPAYMENT"',
}
"""Server-side filters, so large organisations are never refused for filtering inefficiently."""


@dataclass(frozen=True)
class XeroSettings:
    connection: str
    client_id: str
    client_secret: str
    redirect_uri: str
    api_base: str
    identity_base: str
    token_url: str
    authorize_url: str
    scopes: tuple[str, ...]
    tenant_id: str | None = None
    timeout: float = 60.0
    per_minute: int = 60
    per_day: int = 5000
    concurrent: int = 5
    page_size: int = PAGE_SIZE
    entities: tuple[Entity, ...] = (Entity.CUSTOMER, Entity.INVOICE, Entity.PAYMENT, Entity.CREDIT_NOTE)


class _Response:
    """What xero-python reads from a REST response."""

    def __init__(self, response: requests.Response) -> None:
        self.response = response
        self.status = response.status_code
        self.reason = response.reason
        self.data = response.content

    def getheaders(self) -> Mapping[str, str]:
        return self.response.headers

    def getheader(self, name: str, default: str | None = None) -> str | None:
        return self.response.headers.get(name, default)


class _TransportRest:
    """Stands in for xero-python's urllib3 client and sends through our transport."""

    def __init__(self, transport: HttpTransport) -> None:
        self.transport = transport

    def request(
        self,
        method: str,
        url: str,
        query_params: Sequence[tuple[str, Any]] | None = None,
        headers: Mapping[str, str] | None = None,
        body: Any = None,
        post_params: Any = None,
        _preload_content: bool = True,
        _request_timeout: Any = None,
    ) -> _Response:
        data = body if body is None or isinstance(body, str | bytes) else jsonwire.dumps(body)
        sent = dict(headers or {})
        if data is not None:
            sent.setdefault("Content-Type", "application/json")
        response = self.transport.request(method, url, params=list(query_params or []), headers=sent, data=data)
        return _Response(response)

    def __getattr__(self, verb: str) -> Callable[..., _Response]:
        if verb not in {"GET", "HEAD", "OPTIONS", "POST", "PUT", "PATCH", "DELETE"}:
            raise AttributeError(verb)
        return lambda url, **kwargs: self.request(verb, url, **kwargs)


class _NoSdkAuth:
    """The transport sets ``Authorization``; the SDK's own token handling stays idle."""

    def get_auth_settings(self) -> Callable[..., dict[str, str]]:
        return lambda api_client: {"in": "header", "key": "Authorization", "value": ""}


def _post_form(url: str, settings: XeroSettings, form: Mapping[str, str]) -> requests.Response:
    return requests.post(
        url,
        data=form,
        auth=(settings.client_id, settings.client_secret),
        timeout=(10, 30),
        headers={"Accept": "application/json"},
    )


@dataclass(frozen=True)
class Organisation:
    tenant_id: str
    name: str


class XeroAuth:
    """The authorization-code flow, token refresh, and the organisations a grant reaches."""

    def __init__(self, settings: XeroSettings, clock: Clock, sleeper: Sleeper) -> None:
        self.settings = settings
        self.clock = clock
        self.sleeper = sleeper

    def authorize_url(self, state: str) -> str:
        s = self.settings
        query = {
            "response_type": "code",
            "client_id": s.client_id,
            "redirect_uri": s.redirect_uri,
            "scope": " ".join(s.scopes),
            "state": state,
        }
        return f"{s.authorize_url}?{urlencode(query)}"

    def _tokens(self, body: Mapping[str, Any], tenant_id: str | None) -> OAuthTokens:
        return OAuthTokens(
            access_token=str(body["access_token"]),
            refresh_token=str(body["refresh_token"]),
            access_expires_at=self.clock() + timedelta(seconds=int(body.get("expires_in", 1800))),
            refresh_expires_at=self.clock() + timedelta(days=60),
            account_id=tenant_id,
        )

    def exchange(self, answer: str, expected_state: str | None) -> OAuthTokens:
        code, _ = read_redirect(answer, expected_state)
        form = {"grant_type": "authorization_code", "code": code, "redirect_uri": self.settings.redirect_uri}
        try:
            response = _post_form(self.settings.token_url, self.settings, form)
        except requests.RequestException as exc:
            raise RetriableError(f"{self.settings.connection}: token endpoint unreachable: {exc}") from exc
        if response.status_code != 200:
            raise FatalError(f"the authorization code was refused: {response.text[:200]}", actor=Actor.CONFIG)
        return self._tokens(jsonwire.loads(response.content), self.settings.tenant_id)

    def refresh(self, tokens: OAuthTokens) -> OAuthTokens:
        """Spend the refresh token; retried with the same one if the answer is lost."""
        form = {"grant_type": "refresh_token", "refresh_token": tokens.refresh_token}
        last: Exception | None = None
        for attempt in range(1, REFRESH_ATTEMPTS + 1):
            try:
                response = _post_form(self.settings.token_url, self.settings, form)
            except requests.RequestException as exc:
                last = exc
            else:
                if response.status_code == 200:
                    return self._tokens(jsonwire.loads(response.content), tokens.account_id)
                if response.status_code in (400, 401) and (
                    "invalid_grant" in response.text or "invalid_client" in response.text
                ):
                    raise ReauthRequiredError(
                        f"{self.settings.connection}: Xero refused the refresh token ({response.text.strip()[:200]}): "
                        f"run `arsync connect {self.settings.connection}`"
                    )
                last = RetriableError(f"HTTP {response.status_code}")
            self.sleeper(float(2**attempt))
        raise RetriableError(f"{self.settings.connection}: token refresh failed: {last}")

    def organisations(self, access_token: str) -> list[Organisation]:
        """The organisations this grant reaches (``GET /connections``)."""
        try:
            response = requests.get(
                f"{self.settings.identity_base.rstrip('/')}/connections",
                headers={"Authorization": f"Bearer {access_token}", "Accept": "application/json"},
                timeout=(10, 30),
            )
        except requests.RequestException as exc:
            raise RetriableError(f"{self.settings.connection}: /connections unreachable: {exc}") from exc
        if response.status_code != 200:
            raise FatalError(f"/connections answered HTTP {response.status_code}: {response.text[:200]}")
        return [
            Organisation(str(c["tenantId"]), str(c.get("tenantName") or ""))
            for c in jsonwire.loads(response.content)
            if c.get("tenantType", "ORGANISATION") == "ORGANISATION"
        ]


def choose_organisation(organisations: Sequence[Organisation], wanted: str | None) -> Organisation | None:
    """The organisation named by ``wanted`` (tenant id or name), the only one, or ``None`` to ask."""
    if not organisations:
        raise FatalError("the grant reaches no Xero organisation: approve one when consenting", actor=Actor.CONFIG)
    if wanted:
        for org in organisations:
            if wanted.lower() in (org.tenant_id.lower(), org.name.lower()):
                return org
        known = ", ".join(f"{o.name} ({o.tenant_id})" for o in organisations)
        raise FatalError(f"organisation {wanted!r} is not among those authorised: {known}", actor=Actor.CONFIG)
    return organisations[0] if len(organisations) == 1 else None


@dataclass
class RateState:
    """The last rate headers Xero sent, for status and pacing."""

    last: RateHeaders | None = None
    history: list[RateHeaders] = field(default_factory=list)


class XeroSource:
    """A ``RecordSource`` and a ``LedgerWriter`` over one Xero organisation."""

    change_horizon_days = 36500
    """If-Modified-Since has no horizon."""

    def __init__(
        self,
        settings: XeroSettings,
        tokens: TokenStore,
        clock: Clock,
        sleeper: Sleeper,
        *,
        app_budget: RateBudget | None = None,
        auth: XeroAuth | None = None,
    ) -> None:
        self.settings = settings
        self.connection = settings.connection
        self.entities = settings.entities
        self.clock = clock
        self.tokens = tokens
        self.auth = auth or XeroAuth(settings, clock, sleeper)
        self.bearer = BearerTokens(settings.connection, tokens, self.auth.refresh, clock, TOKEN_SKEW)
        self.budget = RateBudget(
            clock,
            sleeper,
            per_minute=settings.per_minute,
            per_day=settings.per_day,
            concurrent=settings.concurrent,
            parent=app_budget,
            margin=1.0,
        )
        self.transport = HttpTransport(
            classifier=make_classifier(clock),
            budget=self.budget,
            clock=clock,
            sleeper=sleeper,
            timeout=(10.0, settings.timeout),
            authorize=self.bearer.authorization,
            refresh=self.bearer.refresh,
        )
        self.transport.hooks["response"].append(self._note_rate)
        self.rate = RateState()
        client = ApiClient(Configuration(oauth2_token=_NoSdkAuth()), pool_threads=1)
        client.rest_client = _TransportRest(self.transport)
        self.api = AccountingApi(client, base_url=settings.api_base.rstrip("/"))
        self.identity = IdentityApi(client, base_url=settings.identity_base.rstrip("/"))

    # --- rate headers ----------------------------------------------------------

    def _note_rate(self, response: requests.Response, *args: Any, **kwargs: Any) -> None:
        headers = read_rate_headers(response.headers)
        self.rate.last = headers
        if headers.minute_remaining == 0 and self.budget.seconds_until_free() == 0:
            # Xero says the minute is spent though our own budget is not: another app shares
            # this organisation's quota. Wait a minute rather than earn a 429. (When our budget
            # is spent too, it already waits exactly as long as the rolling minute needs.)
            self.budget.pause_until(self.clock().timestamp() + 60.0)

    def tenant_id(self) -> str:
        tenant = self.settings.tenant_id or self.bearer.load().account_id
        if not tenant:
            raise ReauthRequiredError(f"{self.connection}: no organisation: run `arsync connect {self.connection}`")
        return tenant

    # --- reading ---------------------------------------------------------------

    def _list(self, collection: str, *, page: int, since: datetime | None, until: datetime | None) -> Any:
        method = getattr(self.api, f"get_{_snake(collection)}")
        conditions = [c for c in (_FILTERS.get(collection),) if c]
        if until is not None:
            conditions.append(f"UpdatedDateUTC<DateTime({until:%Y,%m,%d,%H,%M,%S})")
        kwargs: dict[str, Any] = {
            "page": page,
            "page_size": self.settings.page_size,
            "order": f"{ID_FIELDS[collection]} ASC",
            "_preload_content": False,
        }
        if conditions:
            kwargs["where"] = " && ".join(conditions)
        if collection == "Contacts":
            kwargs["include_archived"] = "true"  # archived customers still owe money and still have history
        if since is not None:
            kwargs["if_modified_since"] = format_if_modified_since(since)
        response = method(self.tenant_id(), **kwargs)
        return _read_json(self.connection, collection, response.data)

    def _bodies(
        self, entity: Entity, since: datetime | None, until: datetime | None, resume: str | None
    ) -> Iterator[tuple[str, Any, str | None]]:
        """Each list response of the entity's collections, with the position after it (``None`` at the end)."""
        collections = COLLECTIONS[entity]
        start_collection, start_page = collections[0], 1
        if resume:
            start_collection, _, number = resume.partition(":")
            start_page = int(number)
        first = collections.index(start_collection)
        for index, collection in enumerate(collections[first:], first):
            page_no = start_page if index == first else 1
            while True:
                body = self._list(collection, page=page_no, since=since, until=until)
                items = body.get(collection) if isinstance(body, dict) else None
                if not isinstance(items, list):
                    raise FatalError(f"{self.connection}: unreadable {collection} response: no {collection} list")
                if len(items) == self.settings.page_size:
                    yield collection, body, f"{collection}:{page_no + 1}"
                    page_no += 1
                    continue
                following = collections[index + 1] if index + 1 < len(collections) else None
                yield collection, body, f"{following}:1" if following else None
                break

    def _pages(
        self, entity: Entity, since: datetime | None, until: datetime | None, resume: str | None
    ) -> Iterator[Page]:
        for collection, body, position in self._bodies(entity, since, until, resume):
            try:
                records, bad, _ = map_list_response(self.connection, collection, body)
            except MappingError as exc:
                raise FatalError(f"{self.connection}: unreadable {collection} response: {exc}") from exc
            yield Page(entity, records, bad, resume=position, final=position is None)

    def pull(self, entity: Entity, window: Window, resume: str | None) -> Iterator[Page]:
        return self._pages(entity, window.start, window.end, resume)

    def changes(self, entities: Sequence[Entity], since: datetime) -> Iterable[Page]:
        for entity in entities:
            yield from self._pages(entity, since, None, None)

    def external_ids(self, entity: Entity) -> Iterator[list[str]]:
        """Ids as Xero lists them, mapped or not: a record that no longer maps is not a deleted one."""
        for collection, body, _ in self._bodies(entity, None, None, None):
            field_name = ID_FIELDS[collection]
            yield [str(item[field_name]) for item in body[collection] if isinstance(item, dict) and field_name in item]

    def api_calls(self) -> int:
        return self.transport.stats.requests

    # --- writing (the LedgerWriter port) ---------------------------------------

    def post(self, postings: Sequence[Posting]) -> list[PostingResult]:
        """Write payments, fees (SPEND bank transactions) and payouts (bank transfers).

        Items go in batches of at most 50 with ``summarizeErrors=false``, so one
        bad item does not sink the rest; each batch carries an
        ``Idempotency-Key`` made from its postings' keys, so a retried batch
        is applied once.
        """
        results: dict[str, PostingResult] = {}
        for kind, group in _by_kind(postings).items():
            for start in range(0, len(group), BATCH_SIZE):
                batch = group[start : start + BATCH_SIZE]
                for result in self._post_batch(kind, batch):
                    results[result.key] = result
        return [results[p.key] for p in postings]

    def _post_batch(self, kind: str, batch: Sequence[Posting]) -> list[PostingResult]:
        writer = _WRITERS.get(kind)
        if writer is None:
            raise FatalError(f"{self.connection}: Xero cannot post {kind!r}")
        collection, build, id_field, call = writer
        body = {collection: [build(p.payload, p.key) for p in batch]}
        key = batch_key(self.connection, kind, [p.key for p in batch])
        method = getattr(self.api, call)
        extra = {} if call == "create_bank_transfer" else {"summarize_errors": False}
        response = method(self.tenant_id(), jsonwire.dumps(body), idempotency_key=key, _preload_content=False, **extra)
        items = _read_json(self.connection, collection, response.data).get(collection, [])
        if len(items) != len(batch):
            raise FatalError(f"{self.connection}: Xero answered {len(items)} {collection} for {len(batch)} sent")
        results = []
        for posting, item in zip(batch, items, strict=True):
            problems = validation_messages(item)
            if problems or item.get("HasValidationErrors"):
                results.append(PostingResult(posting.key, False, reason="; ".join(problems) or "validation error"))
            else:
                results.append(PostingResult(posting.key, True, external_id=str(item.get(id_field) or "")))
        return results


def _read_json(connection: str, collection: str, data: bytes) -> Any:
    try:
        return jsonwire.loads(data)
    except ValueError as exc:
        raise FatalError(f"{connection}: unreadable {collection} response: {exc}") from exc


def batch_key(connection: str, kind: str, keys: Sequence[str]) -> str:
    """The same postings always make the same Idempotency-Key (at most 128 characters)."""
    digest = hashlib.sha256("\n".join([connection, kind, *keys]).encode()).hexdigest()
    return f"arsync-{kind}-{digest[:48]}"


def _by_kind(postings: Sequence[Posting]) -> dict[str, list[Posting]]:
    grouped: dict[str, list[Posting]] = {}
    for posting in postings:
        grouped.setdefault(posting.kind, []).append(posting)
    return grouped


def _snake(collection: str) -> str:
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in collection).lstrip("_")


def _day(value: Any) -> str:
    return value.isoformat() if isinstance(value, date) else str(value)


def _money(value: Any) -> Decimal:
    if not isinstance(value, Decimal):
        raise FatalError(f"amount {value!r} is not a Decimal")
    return value


def _payment(payload: Mapping[str, Any], key: str) -> dict[str, Any]:
    item: dict[str, Any] = {
        "Invoice": {"InvoiceID": payload["invoice_external_id"]},
        "Account": {"Code": payload["account_code"]},
        "Date": _day(payload["date"]),
        "Amount": _money(payload["amount"]),
        "Reference": payload.get("reference") or key,
    }
    if payload.get("currency_rate") is not None:
        item["CurrencyRate"] = _money(payload["currency_rate"])
    return item


def _spend(payload: Mapping[str, Any], key: str) -> dict[str, Any]:
    return {
        "Type": "SPEND",
        "Contact": {"Name": payload.get("contact_name", "Payment processor")},
        "BankAccount": {"Code": payload["bank_account_code"]},
        "Date": _day(payload["date"]),
        "Reference": payload.get("reference") or key,
        "LineAmountTypes": "NoTax",
        "LineItems": [
            {
                "Description": payload.get("description", "Processing fees"),
                "Quantity": Decimal("1"),
                "UnitAmount": _money(payload["amount"]),
                "AccountCode": payload["expense_account_code"],
            }
        ],
    }


def _transfer(payload: Mapping[str, Any], key: str) -> dict[str, Any]:
    return {
        "FromBankAccount": {"Code": payload["from_account_code"]},
        "ToBankAccount": {"Code": payload["to_account_code"]},
        "Amount": _money(payload["amount"]),
        "Date": _day(payload["date"]),
        "Reference": payload.get("reference") or key,
    }


_WRITERS: Mapping[str, tuple[str, Callable[[Mapping[str, Any], str], dict[str, Any]], str, str]] = {
    "payment": ("Payments", _payment, "PaymentID", "create_payments"),
    "fee": ("BankTransactions", _spend, "BankTransactionID", "create_bank_transactions"),
    "payout": ("BankTransfers", _transfer, "BankTransferID", "create_bank_transfer"),
}
