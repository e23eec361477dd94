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
import json
import uuid
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
    AccountType,
    Actor,
    Clock,
    Entity,
    FatalError,
    LedgerAccount,
    OAuthTokens,
    Page,
    Posting,
    PostingKind,
    PostingResult,
    ReauthRequiredError,
    RetriableError,
    Sleeper,
    TokenStore,
    Window,
)
from connectors.http import HttpTransport, RateBudget
from connectors.oauth import BearerTokens, read_redirect
from connectors.xero.faults import RateHeaders, make_classifier, parse_error, read_rate_headers, validation_messages
from connectors.xero.mapping import (
    COLLECTIONS,
    ID_FIELDS,
    MappingError,
    format_if_modified_since,
    map_list_response,
    parse_xero_date,
)

PAGE_SIZE = 1000
BATCH_SIZE = 50
XERO_ACCOUNT_TYPES = {
    "BANK": AccountType.BANK,
    "EXPENSE": AccountType.EXPENSE,
    "OVERHEADS": AccountType.EXPENSE,
    "DIRECTCOSTS": AccountType.EXPENSE,
    "REVENUE": AccountType.INCOME,
    "SALES": AccountType.INCOME,
    "OTHERINCOME": AccountType.INCOME,
}
"""Xero's account ``Type`` values as write-back needs them; the rest are other."""
"""Xero recommends at most 50 items per PUT."""
LOOKUP_CHUNK = 25
"""Ids or references per ``where`` of a lookup (an ``OR`` of 25 keeps the URL short)."""
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
            classifier=make_classifier(clock, writes_to_caller=True),
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
        """Write payments, fees (SPEND bank transactions), payouts and payout debits (bank transfers: clearing to
        bank, or bank back to clearing when the processor debited the bank), credit applications,
        payment reversals (payments deleted), surcharges (RECEIVE bank transactions), late fees (a line added to
        the overdue invoice, or an invoice of their own) and collections agencies' fees (bills).

        Items go in batches of at most 50 with ``summarizeErrors=false`` where the endpoint takes it, so
        one refused item does not sink the rest; a batch Xero refuses whole (``PUT /BankTransfers`` has
        no ``summarizeErrors``) is sent again without the refused items. Allocations take one parent per
        call: they are grouped per credit note, overpayment or prepayment. A payment is deleted by its own
        call (``POST /Payments/{PaymentID}``: the spec has no batch form). Every call carries an
        ``Idempotency-Key`` made from its postings' identities (key and attempt), so a retried call is
        applied once. A refusal is a result with ``retry=False`` and Xero's messages; throttling, 5xx and
        timeouts raise.
        """
        results: dict[str, PostingResult] = {}
        for kind, group in _by_kind(postings).items():
            if kind == PostingKind.CREDIT_APPLICATION:
                done = self._post_allocations(group)
            elif kind == PostingKind.PAYMENT_REVERSAL:
                done = self._post_reversals(group)
            elif kind == PostingKind.REFUND:
                done = self._post_refunds(group)
            elif kind == PostingKind.SURCHARGE_REVERSAL:
                done = self._post_surcharge_reversals(group)
            elif kind == PostingKind.LATE_FEE:
                done = self._post_late_fees(group)
            elif kind in _WRITERS:
                done = []
                for start in range(0, len(group), BATCH_SIZE):
                    done += self._post_batch(kind, group[start : start + BATCH_SIZE])
            else:
                done = [_refused(p.key, f"Xero cannot post {kind!r}") for p in group]
            results.update((result.key, result) for result in done)
        return [results[p.key] for p in postings]

    def _post_batch(self, kind: str, batch: Sequence[Posting]) -> list[PostingResult]:
        writer = _WRITERS[kind]
        built, refused = _build(batch, writer.build)
        method = getattr(self.api, writer.call)
        extra = {"summarize_errors": False} if writer.summarize else {}

        def send(bodies: list[dict[str, Any]], key: str) -> Any:
            return method(
                self.tenant_id(),
                jsonwire.dumps({writer.collection: bodies}),
                idempotency_key=key,
                _preload_content=False,
                **extra,
            )

        sent = self._send(kind, writer.collection, writer.id_field, built, send, prefix=())
        return [*refused, *sent]

    def _send(
        self,
        kind: str,
        collection: str,
        id_field: str,
        items: Sequence[tuple[Posting, dict[str, Any]]],
        send: Callable[[list[dict[str, Any]], str], Any],
        *,
        prefix: Sequence[str],
        fallback_id: str = "",
    ) -> list[PostingResult]:
        """One write call for ``items`` (then again for those a whole-batch refusal left unapplied)."""
        results: list[PostingResult] = []
        pending = list(items)
        while pending:
            bodies = [body for _, body in pending]
            key = batch_key(self.connection, kind, [*prefix, *(p.identity for p, _ in pending), jsonwire.dumps(bodies)])
            response = send(bodies, key)
            body = _read_json(self.connection, collection, response.data)
            if response.status == 400:
                # Refused whole (nothing applied): park the refused items, send the others again.
                verdicts = _refusals(body, [b for _, b in pending])
                if verdicts is None or not any(verdicts):
                    if len(pending) == 1:
                        raise FatalError(f"{self.connection}: Xero refused {collection}: {_summary(body)}")
                    for item in pending:  # cannot tell which item Xero refused: one call each
                        results += self._send(
                            kind, collection, id_field, [item], send, prefix=prefix, fallback_id=fallback_id
                        )
                    return results
                results += [_refused(p.key, "; ".join(m)) for (p, _), m in zip(pending, verdicts, strict=True) if m]
                pending = [item for item, m in zip(pending, verdicts, strict=True) if not m]
                continue
            answered = body.get(collection) if isinstance(body, Mapping) else None
            if not isinstance(answered, list) or len(answered) != len(pending):
                count = len(answered) if isinstance(answered, list) else 0
                raise FatalError(f"{self.connection}: Xero answered {count} {collection} for {len(pending)} sent")
            for (posting, _), item in zip(pending, answered, strict=True):
                problems = validation_messages(item)
                if problems or item.get("HasValidationErrors") or item.get("StatusAttributeString") == "ERROR":
                    results.append(_refused(posting.key, "; ".join(problems) or "validation error"))
                else:
                    ident = str(item.get(id_field) or fallback_id)
                    results.append(PostingResult(posting.key, True, external_id=ident))
            break
        return results

    # --- credit applications (allocations) --------------------------------------

    def _post_allocations(self, postings: Sequence[Posting]) -> list[PostingResult]:
        results: list[PostingResult] = []
        parents: dict[tuple[str, str], list[Posting]] = {}
        sources = self._credit_sources(postings)
        for posting in postings:
            source = sources[posting.key]
            if isinstance(source, str):
                results.append(_refused(posting.key, source))
            else:
                parents.setdefault(source, []).append(posting)
        for (collection, parent), group in parents.items():
            for start in range(0, len(group), BATCH_SIZE):
                results += self._allocate(collection, parent, group[start : start + BATCH_SIZE])
        return results

    def _allocate(self, collection: str, parent: str, batch: Sequence[Posting]) -> list[PostingResult]:
        built, refused = _build(batch, _allocation)
        method = getattr(self.api, _ALLOCATION_CALLS[collection])

        def send(bodies: list[dict[str, Any]], key: str) -> Any:
            return method(
                self.tenant_id(),
                parent,
                jsonwire.dumps({"Allocations": bodies}),
                summarize_errors=False,
                idempotency_key=key,
                _preload_content=False,
            )

        try:
            sent = self._send(
                PostingKind.CREDIT_APPLICATION.value,
                "Allocations",
                "AllocationID",
                built,
                send,
                prefix=[f"{collection}/{parent}"],
                fallback_id=parent,
            )
        except FatalError as exc:
            if "HTTP 404" not in str(exc):
                raise
            label = _CREDIT_LABELS[collection]
            sent = [_refused(p.key, f"Xero has no {label} {parent}") for p, _ in built]
        return [*refused, *sent]

    def _credit_sources(self, postings: Sequence[Posting]) -> dict[str, tuple[str, str] | str]:
        """Where each credit application's credit sits: ``(collection, id)``, or why it cannot be applied.

        ``source == "credit_note"`` is a CreditNote. Unapplied cash (``source == "payment"``) is an
        Overpayment or a Prepayment in Xero: ``source_kind`` (the ``PaymentRecord.kind`` the sync stored,
        ``overpayment`` / ``prepayment``) says which; without it, the id is looked up in both.
        """
        out: dict[str, tuple[str, str] | str] = {}
        unknown: dict[str, list[str]] = {}
        for posting in postings:
            payload = posting.payload
            source, ident = payload.get("source"), str(payload.get("source_id") or "")
            kind = payload.get("source_kind")
            if not ident:
                out[posting.key] = "credit application without source_id"
            elif source == "credit_note":
                out[posting.key] = ("CreditNotes", ident)
            elif source != "payment":
                out[posting.key] = f"unknown credit source {source!r}"
            elif kind in _CASH_COLLECTIONS:
                out[posting.key] = (_CASH_COLLECTIONS[str(kind)], ident)
            elif kind is None:
                unknown.setdefault(ident, []).append(posting.key)
            else:
                out[posting.key] = (
                    f"unapplied cash {ident} is a {kind}: Xero keeps unapplied cash as an overpayment or a prepayment"
                )
        if unknown:
            found: dict[str, str] = {}
            for collection in ("Overpayments", "Prepayments"):
                wanted = [i for i in unknown if i.lower() not in found]
                for item in self._where_ids(collection, wanted):
                    found[str(item.get(ID_FIELDS[collection], "")).lower()] = collection
            for ident, keys in unknown.items():
                where = found.get(ident.lower())
                for key in keys:
                    out[key] = (where, ident) if where else f"Xero has no overpayment or prepayment {ident}"
        return out

    def _where_ids(
        self, collection: str, ids: Sequence[str], unitdp: int | None = None, *, paged: bool = False
    ) -> Iterator[Mapping[str, Any]]:
        """Items by id, 25 a call. ``paged``: read with ``page`` (Xero lists an invoice's line items only then)."""
        id_field = "BankTransactionID" if collection == "BankTransactions" else ID_FIELDS[collection]
        for start in range(0, len(ids), LOOKUP_CHUNK):
            where = " || ".join(f'{id_field}==Guid("{i}")' for i in ids[start : start + LOOKUP_CHUNK])
            yield from self._read_all(collection, where=where, unitdp=unitdp, paged=paged)

    # --- partial refunds (a credit note refunded from clearing) -------------------

    def _post_refunds(self, postings: Sequence[Posting]) -> list[PostingResult]:
        """Each refund: an ACCRECCREDIT credit note for the amount (``Reference`` the posting's reference), then
        a payment on it from the clearing account (Xero: "refund against the credit"), which leaves it PAID.

        The credit notes are looked up first (by date and reference): one made by an earlier attempt is not
        made again, and one already refunded is ``ok`` without a call. New credit notes go in arrays of 50
        (``summarizeErrors=false``), then their refund payments in arrays of 50. The result's id is the credit
        note's.
        """
        results: list[PostingResult] = []
        built, refused = _build(postings, _credit_note)
        results += refused
        amounts: dict[str, Decimal] = {p.key: p.payload["amount"] for p, _ in built}
        notes = self._find_credit_notes([p for p, _ in built])
        to_make = [(p, body) for p, body in built if p.key not in notes]
        made: dict[str, tuple[str, Decimal]] = {}
        for start in range(0, len(to_make), BATCH_SIZE):
            chunk = to_make[start : start + BATCH_SIZE]

            def make(bodies: list[dict[str, Any]], key: str) -> Any:
                return self.api.create_credit_notes(
                    self.tenant_id(),
                    jsonwire.dumps({"CreditNotes": bodies}),
                    summarize_errors=False,
                    idempotency_key=key,
                    _preload_content=False,
                )

            for result in self._send(PostingKind.REFUND.value, "CreditNotes", "CreditNoteID", chunk, make, prefix=()):
                if result.ok and result.external_id:
                    made[result.key] = (result.external_id, amounts[result.key])
                else:
                    results.append(result)
        to_pay: list[tuple[Posting, dict[str, Any]]] = []
        note_of: dict[str, str] = {}
        for posting, _ in built:
            if posting.key in notes:
                ident, remaining = notes[posting.key]
            elif posting.key in made:
                ident, remaining = made[posting.key]
            else:
                continue
            note_of[posting.key] = ident
            amount = posting.payload["amount"]
            if remaining == 0:
                results.append(PostingResult(posting.key, True, external_id=ident))
            elif remaining != amount:
                results.append(
                    _refused(posting.key, f"credit note {ident} has {remaining} left to refund, not {amount}")
                )
            else:
                try:
                    to_pay.append((posting, _refund_payment(posting.payload, posting.key, ident)))
                except _PayloadError as exc:
                    results.append(_refused(posting.key, f"payload: {exc}"))
        for start in range(0, len(to_pay), BATCH_SIZE):
            chunk = to_pay[start : start + BATCH_SIZE]

            def pay(bodies: list[dict[str, Any]], key: str) -> Any:
                return self.api.create_payments(
                    self.tenant_id(),
                    jsonwire.dumps({"Payments": bodies}),
                    summarize_errors=False,
                    idempotency_key=key,
                    _preload_content=False,
                )

            for result in self._send("refund_payment", "Payments", "PaymentID", chunk, pay, prefix=()):
                external_id = note_of[result.key] if result.ok else None
                results.append(PostingResult(result.key, result.ok, external_id, result.reason, result.retry))
        return results

    def _find_credit_notes(self, postings: Sequence[Posting]) -> dict[str, tuple[str, Decimal]]:
        """Credit notes carrying the postings' references: key -> (CreditNoteID, remaining credit). Read by
        type and date (``Reference`` is not an optimised filter), matched here; deleted and voided ones are left
        out (a person took that one back: a new one is made)."""
        if not postings:
            return {}
        wanted = {_reference(p): p.key for p in postings}
        days = sorted(_as_date(p.payload.get("date"), self.clock) for p in postings)
        where = f'Type=="ACCRECCREDIT" && Date>={_datetime(days[0])} && Date<={_datetime(days[-1])}'
        found: dict[str, tuple[str, Decimal]] = {}
        for item in self._read_all("CreditNotes", where=where, paged=True):
            key = wanted.get(str(item.get("Reference") or ""))
            if key and item.get("Status") not in ("DELETED", "VOIDED"):
                found[key] = (str(item.get("CreditNoteID")), Decimal(str(item.get("RemainingCredit", "0"))))
        return found

    def _find_refunds(self, postings: Sequence[Posting]) -> dict[str, str]:
        """A refund is posted once its credit note is refunded in full (nothing left to refund)."""
        return {key: ident for key, (ident, left) in self._find_credit_notes(postings).items() if left == 0}

    # --- late fees (a line on the overdue invoice, or an invoice of their own) -------

    def _post_late_fees(self, postings: Sequence[Posting]) -> list[PostingResult]:
        """Late fees booked as ``invoice``: ACCREC invoices (AUTHORISED, due on their date, ``Reference`` the
        posting's reference, one line on ``late_fee_account``) in arrays of 50 with ``summarizeErrors=false``.

        Booked as ``line``: the overdue invoices are read (25 a call); a fee whose tag (:func:`fee_tag`) one of
        the invoice's lines carries already is ``ok`` without a call; the others are added in one
        ``POST /Invoices/{InvoiceID}`` per invoice, with every line item it has (by ``LineItemID``) and the new
        ones. Xero refuses to edit an invoice with a payment or a credit note applied: such a fee (seen on the
        read, or refused so by Xero) is booked as an invoice of its own instead, and its result says
        ``booked_as="invoice"`` (its id is then the new invoice's). Any other refusal (a lock date, an invoice
        voided or deleted) parks the fees with Xero's message.
        """
        results: list[PostingResult] = []
        separate: list[tuple[Posting, dict[str, Any]]] = []
        moved: set[str] = set()
        on_invoice: dict[str, list[Posting]] = {}
        for posting in postings:
            try:
                booking = _booking(posting.payload)
                if booking == "invoice":
                    separate.append((posting, _late_fee_invoice(posting.payload, posting.key)))
                else:
                    _late_fee_line(posting.payload, posting.key)
                    on_invoice.setdefault(_guid_of(posting.payload, "invoice_external_id", "InvoiceID"), []).append(
                        posting
                    )
            except _PayloadError as exc:
                results.append(_refused(posting.key, f"payload: {exc}"))
        invoices = {
            str(item.get("InvoiceID", "")).lower(): item
            for item in self._where_ids("Invoices", list(on_invoice), unitdp=4, paged=True)
        }
        for ident, group in on_invoice.items():
            invoice = invoices.get(ident)
            if invoice is None:
                results += [
                    _refused(p.key, f"Xero has no invoice {ident}: no invoice to add the late fee to") for p in group
                ]
                continue
            carried = {str(line.get("Description") or "") for line in _lines_of(invoice)}
            pending = []
            for posting in group:
                tag = fee_tag(_reference(posting))
                if any(tag in text for text in carried):
                    results.append(PostingResult(posting.key, True, external_id=str(invoice["InvoiceID"])))
                else:
                    pending.append(posting)
            if not pending:
                continue
            refused: list[PostingResult] = []
            if _has_payments(invoice):
                refused = [_refused(p.key, INVOICE_HAS_PAYMENTS) for p in pending]
            else:
                for result in self._add_lines(invoice, pending):
                    (results if result.ok else refused).append(result)
            by_key = {p.key: p for p in pending}
            for result in refused:
                if _payments_refusal(result.reason):
                    contact = _mapping(invoice.get("Contact")).get("ContactID")
                    posting = by_key[result.key]
                    try:
                        separate.append((posting, _late_fee_invoice(posting.payload, posting.key, contact)))
                        moved.add(posting.key)
                    except _PayloadError as exc:
                        results.append(_refused(posting.key, f"payload: {exc}"))
                else:
                    results.append(result)
        for start in range(0, len(separate), BATCH_SIZE):
            chunk = separate[start : start + BATCH_SIZE]

            def make(bodies: list[dict[str, Any]], key: str) -> Any:
                return self.api.create_invoices(
                    self.tenant_id(),
                    jsonwire.dumps({"Invoices": bodies}),
                    summarize_errors=False,
                    idempotency_key=key,
                    _preload_content=False,
                )

            for result in self._send(PostingKind.LATE_FEE.value, "Invoices", "InvoiceID", chunk, make, prefix=()):
                if result.ok and result.key in moved:
                    result = PostingResult(result.key, True, result.external_id, booked_as="invoice")
                results.append(result)
        return results

    def _add_lines(self, invoice: Mapping[str, Any], postings: Sequence[Posting]) -> list[PostingResult]:
        """One ``POST /Invoices/{InvoiceID}``: its line items as read (Xero keeps a line sent with its
        ``LineItemID`` and deletes one left out) and one more per late fee."""
        ident = str(invoice["InvoiceID"])
        kept = [{k: line[k] for k in _LINE_KEYS if line.get(k) is not None} for line in _lines_of(invoice)]
        body: dict[str, Any] = {
            "InvoiceID": ident,
            "LineItems": [*kept, *(_late_fee_line(p.payload, p.key) for p in postings)],
        }

        def send(bodies: list[dict[str, Any]], key: str) -> Any:
            return self.api.update_invoice(
                self.tenant_id(),
                ident,
                jsonwire.dumps({"Invoices": bodies}),
                unitdp=4,
                idempotency_key=key,
                _preload_content=False,
            )

        first, *others = postings
        try:
            [result] = self._send(
                PostingKind.LATE_FEE.value,
                "Invoices",
                "InvoiceID",
                [(first, body)],
                send,
                prefix=[f"Invoices/{ident}", *(p.identity for p in others)],
                fallback_id=ident,
            )
        except FatalError as exc:
            if "HTTP 404" not in str(exc):
                raise
            result = _refused(first.key, f"Xero has no invoice {ident}: no invoice to add the late fee to")
        return [result, *(PostingResult(p.key, result.ok, result.external_id, result.reason) for p in others)]

    def _find_late_fees(self, postings: Sequence[Posting]) -> dict[str, str]:
        """A fee added as a line is found by its tag on the invoice's lines; one booked as an invoice of its own
        (asked, or moved there because the invoice had payments) by its ``Reference``."""
        found: dict[str, str] = {}
        on_invoice: dict[str, list[Posting]] = {}
        for posting in postings:
            try:
                if _booking(posting.payload) == "line":
                    ident = _guid_of(posting.payload, "invoice_external_id", "InvoiceID")
                    on_invoice.setdefault(ident, []).append(posting)
            except _PayloadError:
                continue  # post() refuses such a posting: it was never sent
        for item in self._where_ids("Invoices", list(on_invoice), paged=True):
            texts = [str(line.get("Description") or "") for line in _lines_of(item)]
            for posting in on_invoice.get(str(item.get("InvoiceID", "")).lower(), []):
                tag = fee_tag(_reference(posting))
                if any(tag in text for text in texts):
                    found[posting.key] = str(item["InvoiceID"])
        rest = [p for p in postings if p.key not in found]
        if rest:
            found |= self._find_invoices(rest, "ACCREC", "Reference")
        return found

    def _find_invoices(self, postings: Sequence[Posting], kind: str, field_name: str) -> dict[str, str]:
        """Invoices (``ACCREC``) or bills (``ACCPAY``) carrying the postings' references in ``field_name``: read by
        type and date, matched here; one in any status counts (a person voided it: it was posted once)."""
        wanted = {_reference(p): p.key for p in postings}
        days = sorted(_as_date(p.payload.get("date"), self.clock) for p in postings)
        where = f'Type=="{kind}" && Date>={_datetime(days[0])} && Date<={_datetime(days[-1])}'
        matches = _Matches()
        for item in self._read_all("Invoices", where=where, paged=True):
            key = wanted.get(str(item.get(field_name) or ""))
            if key:
                matches.add(key, str(item.get("InvoiceID")), item.get("Status"))
        return matches.best()

    # --- surcharge reversals (RECEIVE bank transactions deleted) -----------------

    def _post_surcharge_reversals(self, postings: Sequence[Posting]) -> list[PostingResult]:
        """Delete each reversed surcharge's RECEIVE bank transaction (``POST /BankTransactions/{id}`` with
        ``Status`` ``DELETED``: the spec's BankTransaction statuses are AUTHORISED, DELETED and VOIDED, and
        updating the status to DELETED is how Xero removes spend or receive money).

        They are read first (25 a call): one already deleted is ``ok`` without a call; one Xero does not have,
        or for another amount, is refused. One call per bank transaction (the endpoint takes one id).
        """
        results: list[PostingResult] = []
        wanted: dict[str, list[Posting]] = {}
        for posting in postings:
            try:
                ident = _guid_of(posting.payload, "surcharge_external_id", "BankTransactionID")
                _money(posting.payload.get("amount"))
            except _PayloadError as exc:
                results.append(_refused(posting.key, f"payload: {exc}"))
                continue
            wanted.setdefault(ident, []).append(posting)
        found = {
            str(item.get("BankTransactionID", "")).lower(): item
            for item in self._where_ids("BankTransactions", list(wanted))
        }
        for ident, group in wanted.items():
            item = found.get(ident)
            if item is None:
                results += [_refused(p.key, f"Xero has no bank transaction {ident}") for p in group]
                continue
            if item.get("Status") == "DELETED":
                results += [PostingResult(p.key, True, external_id=str(item["BankTransactionID"])) for p in group]
                continue
            total = Decimal(str(item.get("Total", "0")))
            sendable = [p for p in group if p.payload["amount"] == total]
            results += [
                _refused(p.key, f"bank transaction {ident} is for {total}, the reversal for {p.payload['amount']}")
                for p in group
                if p.payload["amount"] != total
            ]
            if sendable:
                results += self._delete_bank_transaction(item, sendable)
        return results

    def _delete_bank_transaction(self, item: Mapping[str, Any], postings: Sequence[Posting]) -> list[PostingResult]:
        """The update a deletion is: the transaction as read (the spec requires ``Type``, ``BankAccount`` and
        ``LineItems`` in the body), with ``Status`` DELETED."""
        ident = str(item["BankTransactionID"])
        lines = [
            {k: line[k] for k in ("LineItemID", "Description", "Quantity", "UnitAmount", "AccountCode") if k in line}
            for line in item.get("LineItems") or []
            if isinstance(line, Mapping)
        ]
        body: dict[str, Any] = {
            "BankTransactionID": ident,
            "Type": item.get("Type"),
            "Contact": {"ContactID": _mapping(item.get("Contact")).get("ContactID")},
            "BankAccount": {"AccountID": _mapping(item.get("BankAccount")).get("AccountID")},
            "LineItems": lines,
            "Status": "DELETED",
        }

        def send(bodies: list[dict[str, Any]], key: str) -> Any:
            return self.api.update_bank_transaction(
                self.tenant_id(),
                ident,
                jsonwire.dumps({"BankTransactions": bodies}),
                idempotency_key=key,
                _preload_content=False,
            )

        first, *others = postings
        [result] = self._send(
            PostingKind.SURCHARGE_REVERSAL.value,
            "BankTransactions",
            "BankTransactionID",
            [(first, body)],
            send,
            prefix=[f"BankTransactions/{ident}", *(p.identity for p in others)],
            fallback_id=ident,
        )
        return [result, *(PostingResult(p.key, result.ok, result.external_id, result.reason) for p in others)]

    def _find_surcharge_reversals(self, postings: Sequence[Posting]) -> dict[str, str]:
        wanted: dict[str, list[str]] = {}
        for posting in postings:
            try:
                wanted.setdefault(_guid_of(posting.payload, "surcharge_external_id", "BankTransactionID"), []).append(
                    posting.key
                )
            except _PayloadError:
                continue  # post() refuses such a posting: it was never sent
        found: dict[str, str] = {}
        for item in self._where_ids("BankTransactions", list(wanted)):
            if item.get("Status") == "DELETED":
                for key in wanted.get(str(item.get("BankTransactionID", "")).lower(), []):
                    found[key] = str(item["BankTransactionID"])
        return found

    # --- payment reversals (payments deleted) ------------------------------------

    def _post_reversals(self, postings: Sequence[Posting]) -> list[PostingResult]:
        """Delete each reversed payment (``POST /Payments/{PaymentID}`` with ``{"Status": "DELETED"}``).

        The payments are read first (25 a call): one already deleted is ``ok`` without a call (our answer
        lost, or a person deleted it); one Xero does not have is refused. A reversal undoes the whole
        payment, so its amount must be the payment's. Several reversals of one payment make one call.
        """
        results: list[PostingResult] = []
        wanted: dict[str, list[Posting]] = {}
        for posting in postings:
            try:
                ident = _payment_id(posting.payload)
                _money(posting.payload.get("amount"))
            except _PayloadError as exc:
                results.append(_refused(posting.key, f"payload: {exc}"))
                continue
            wanted.setdefault(ident, []).append(posting)
        payments = {str(item.get("PaymentID", "")).lower(): item for item in self._where_ids("Payments", list(wanted))}
        for ident, group in wanted.items():
            payment = payments.get(ident)
            if payment is None:
                results += [_refused(p.key, f"Xero has no payment {ident}") for p in group]
                continue
            if payment.get("Status") == "DELETED":
                results += [PostingResult(p.key, True, external_id=str(payment["PaymentID"])) for p in group]
                continue
            total = Decimal(str(payment.get("Amount", "0")))
            sendable = []
            for posting in group:
                amount = posting.payload["amount"]
                if amount != total:
                    reason = f"payment {ident} is for {total}, the reversal for {amount}: a payment is deleted whole"
                    results.append(_refused(posting.key, reason))
                else:
                    sendable.append(posting)
            if sendable:
                results += self._delete_payment(str(payment["PaymentID"]), sendable)
        return results

    def _delete_payment(self, ident: str, postings: Sequence[Posting]) -> list[PostingResult]:
        body: dict[str, Any] = {"Status": "DELETED"}

        def send(bodies: list[dict[str, Any]], key: str) -> Any:
            return self.api.delete_payment(
                self.tenant_id(), ident, jsonwire.dumps(bodies[0]), idempotency_key=key, _preload_content=False
            )

        first, *others = postings
        try:
            [result] = self._send(
                PostingKind.PAYMENT_REVERSAL.value,
                "Payments",
                "PaymentID",
                [(first, body)],
                send,
                prefix=[f"Payments/{ident}", *(p.identity for p in others)],
                fallback_id=ident,
            )
        except FatalError as exc:
            if "HTTP 404" not in str(exc):
                raise
            result = _refused(first.key, f"Xero has no payment {ident}")
        return [result, *(PostingResult(p.key, result.ok, result.external_id, result.reason) for p in others)]

    def accounts(self) -> list[LedgerAccount]:
        """The chart of accounts (``GET /Accounts``: not paged), by code; archived ones marked inactive."""
        body = _read_json(
            self.connection, "Accounts", self.api.get_accounts(self.tenant_id(), _preload_content=False).data
        )
        found = []
        for item in body.get("Accounts", []) if isinstance(body, Mapping) else []:
            code = item.get("Code")
            if not code:
                continue  # bank accounts may have no code: postings cannot name them
            kind = XERO_ACCOUNT_TYPES.get(str(item.get("Type")), AccountType.OTHER)
            found.append(LedgerAccount(str(code), str(item.get("Name", "")), kind, item.get("Status") == "ACTIVE"))
        return found

    # --- outcomes unknown: find what Xero already has ---------------------------

    def find_posted(self, postings: Sequence[Posting]) -> dict[str, str]:
        """Of ``postings`` whose outcome is unknown, those Xero already has: key -> Xero's id.

        Payments, spend money and transfers are found by the ``Reference`` that carries the key, read
        with ``where`` filters Xero serves efficiently: payments by ``Invoice.InvoiceID`` (optimised in
        ``OR``), spend money by ``Type`` and ``Date`` (``Reference`` is not an optimised filter there),
        transfers by ``Reference`` itself (a short, unpaged list); the reference is matched here. A
        document found in any status counts (one a person deleted was posted once: posting it again would
        post it twice). Allocations carry no reference: the parent's ``Allocations`` are read and matched by
        invoice, amount and date, each allocation answering for one posting at most. Surcharges are found
        like spend money (``Type=="RECEIVE"``). A reversal is found when its payment (read by id) is
        ``DELETED``: a deleted payment keeps its own reference, and one a person deleted is reversed all the
        same (``post`` answers ``ok`` for it). A late fee is found by its tag on the invoice's lines, or by the
        ``Reference`` of an invoice of its own; an agency's bill by its ``InvoiceNumber`` (``ACCPAY``).
        """
        found: dict[str, str] = {}
        groups = _by_kind(postings)
        if groups.get(PostingKind.PAYMENT):
            found |= self._find_payments(groups[PostingKind.PAYMENT])
        if groups.get(PostingKind.FEE):
            found |= self._find_bank_transactions(groups[PostingKind.FEE], "SPEND")
        if groups.get(PostingKind.SURCHARGE):
            found |= self._find_bank_transactions(groups[PostingKind.SURCHARGE], "RECEIVE")
        if groups.get(PostingKind.PAYMENT_REVERSAL):
            found |= self._find_reversals(groups[PostingKind.PAYMENT_REVERSAL])
        transfers = [*groups.get(PostingKind.PAYOUT, []), *groups.get(PostingKind.PAYOUT_DEBIT, [])]
        if transfers:
            found |= self._find_transfers(transfers)
        if groups.get(PostingKind.CREDIT_APPLICATION):
            found |= self._find_allocations(groups[PostingKind.CREDIT_APPLICATION])
        if groups.get(PostingKind.REFUND):
            found |= self._find_refunds(groups[PostingKind.REFUND])
        if groups.get(PostingKind.OVERPAYMENT):
            found |= self._find_bank_transactions(
                groups[PostingKind.OVERPAYMENT], "RECEIVE-OVERPAYMENT", "OverpaymentID"
            )
        if groups.get(PostingKind.SURCHARGE_REVERSAL):
            found |= self._find_surcharge_reversals(groups[PostingKind.SURCHARGE_REVERSAL])
        if groups.get(PostingKind.LATE_FEE):
            found |= self._find_late_fees(groups[PostingKind.LATE_FEE])
        if groups.get(PostingKind.COLLECTIONS_FEE):
            found |= self._find_invoices(groups[PostingKind.COLLECTIONS_FEE], "ACCPAY", "InvoiceNumber")
        return found

    def _find_payments(self, postings: Sequence[Posting]) -> dict[str, str]:
        wanted = {(_reference(p), str(p.payload.get("invoice_external_id", "")).lower()): p.key for p in postings}
        invoices = sorted({invoice for _, invoice in wanted if invoice})
        matches = _Matches()
        for start in range(0, len(invoices), LOOKUP_CHUNK):
            chunk = invoices[start : start + LOOKUP_CHUNK]
            where = " || ".join(f'Invoice.InvoiceID==Guid("{i}")' for i in chunk)
            for item in self._read_all("Payments", where=where, paged=True):
                invoice = _mapping(item.get("Invoice"))
                key = wanted.get((str(item.get("Reference") or ""), str(invoice.get("InvoiceID", "")).lower()))
                if key:
                    matches.add(key, str(item.get("PaymentID")), item.get("Status"))
        return matches.best()

    def _find_bank_transactions(
        self, postings: Sequence[Posting], kind: str, id_field: str = "BankTransactionID"
    ) -> dict[str, str]:
        wanted = {_reference(p): p.key for p in postings}
        days = sorted(_as_date(p.payload.get("date"), self.clock) for p in postings)
        where = f'Type=="{kind}" && Date>={_datetime(days[0])} && Date<={_datetime(days[-1])}'
        matches = _Matches()
        for item in self._read_all("BankTransactions", where=where, paged=True):
            key = wanted.get(str(item.get("Reference") or ""))
            if key:
                matches.add(key, str(item.get(id_field)), item.get("Status"))
        return matches.best()

    def _find_transfers(self, postings: Sequence[Posting]) -> dict[str, str]:
        wanted = {_reference(p): p.key for p in postings}
        references = sorted(wanted)
        matches = _Matches()
        for start in range(0, len(references), LOOKUP_CHUNK):
            where = " || ".join(f"Reference=={json.dumps(r)}" for r in references[start : start + LOOKUP_CHUNK])
            for item in self._read_all("BankTransfers", where=where, include_deleted="true"):
                key = wanted.get(str(item.get("Reference") or ""))
                if key:
                    matches.add(key, str(item.get("BankTransferID")), item.get("Status"))
        return matches.best()

    def _find_reversals(self, postings: Sequence[Posting]) -> dict[str, str]:
        wanted: dict[str, list[str]] = {}
        for posting in postings:
            try:
                wanted.setdefault(_payment_id(posting.payload), []).append(posting.key)
            except _PayloadError:
                continue  # post() refuses such a posting: it was never sent
        found: dict[str, str] = {}
        for item in self._where_ids("Payments", list(wanted)):
            if item.get("Status") == "DELETED":
                for key in wanted.get(str(item.get("PaymentID", "")).lower(), []):
                    found[key] = str(item["PaymentID"])
        return found

    def _find_allocations(self, postings: Sequence[Posting]) -> dict[str, str]:
        found: dict[str, str] = {}
        parents: dict[tuple[str, str], list[Posting]] = {}
        sources = self._credit_sources(postings)
        for posting in postings:
            source = sources[posting.key]
            if not isinstance(source, str):
                parents.setdefault(source, []).append(posting)
        for (collection, parent), group in parents.items():
            items = self._read_one(collection, parent)
            allocations = [a for item in items for a in item.get("Allocations") or [] if isinstance(a, Mapping)]
            unused = list(allocations)
            for posting in group:
                wanted = (
                    str(posting.payload.get("invoice_external_id", "")).lower(),
                    posting.payload.get("amount"),
                    _as_date(posting.payload.get("date"), self.clock),
                )
                for allocation in unused:
                    if _allocation_key(allocation) == wanted:
                        unused.remove(allocation)
                        found[posting.key] = str(allocation.get("AllocationID") or parent)
                        break
        return found

    def _read_all(
        self,
        collection: str,
        *,
        where: str,
        paged: bool = False,
        include_deleted: str | None = None,
        unitdp: int | None = None,
    ) -> Iterator[Mapping[str, Any]]:
        """Every item of a ``where``-filtered list, page after page when the collection pages."""
        method = getattr(self.api, f"get_{_snake(collection)}")
        page = 1
        while True:
            kwargs: dict[str, Any] = {"where": where, "_preload_content": False}
            if paged:
                kwargs.update(page=page, page_size=self.settings.page_size)
            if include_deleted is not None:
                kwargs["include_deleted"] = include_deleted
            if unitdp is not None:
                kwargs["unitdp"] = unitdp
            body = _read_json(self.connection, collection, method(self.tenant_id(), **kwargs).data)
            items = body.get(collection) if isinstance(body, Mapping) else None
            if not isinstance(items, list):
                raise FatalError(f"{self.connection}: unreadable {collection} response: no {collection} list")
            yield from (item for item in items if isinstance(item, Mapping))
            if not paged or len(items) < self.settings.page_size:
                return
            page += 1

    def _read_one(self, collection: str, ident: str) -> list[Mapping[str, Any]]:
        method = getattr(self.api, f"get_{_snake(collection)[:-1]}")
        try:
            response = method(self.tenant_id(), ident, _preload_content=False)
        except FatalError as exc:
            if "HTTP 404" in str(exc):
                return []
            raise
        body = _read_json(self.connection, collection, response.data)
        items = body.get(collection) if isinstance(body, Mapping) else None
        return [item for item in items or [] if isinstance(item, Mapping)]


def _read_json(connection: str, collection: str, data: bytes) -> Any:
    try:
        return jsonwire.loads(data)
    except ValueError as exc:
        raise FatalError(f"{connection}: unreadable {collection} response: {exc}") from exc


def batch_key(connection: str, kind: str, keys: Sequence[str]) -> str:
    """The same postings (keys and request bodies) always make the same Idempotency-Key (at most 128 characters).

    A posting a person corrected (another account, another date) makes another key, so Xero does not replay
    its first refusal; the same request sent again after a refusal within Xero's idempotency window does.
    """
    digest = hashlib.sha256("\n".join([connection, kind, *keys]).encode()).hexdigest()
    return f"arsync-{kind}-{digest[:48]}"


def _by_kind(postings: Sequence[Posting]) -> dict[str, list[Posting]]:
    grouped: dict[str, list[Posting]] = {}
    for posting in postings:
        grouped.setdefault(posting.kind, []).append(posting)
    return grouped


def _snake(collection: str) -> str:
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in collection).lstrip("_")


class _PayloadError(ValueError):
    """A posting's payload lacks what Xero needs: the posting is refused, never sent."""


@dataclass(frozen=True)
class _Writer:
    collection: str
    build: Callable[[Mapping[str, Any], str], dict[str, Any]]
    id_field: str
    call: str
    summarize: bool
    """Whether the endpoint takes ``summarizeErrors`` (PUT /BankTransfers does not)."""


class _Matches:
    """Documents found per key; a live one is preferred to a deleted one."""

    def __init__(self) -> None:
        self.found: dict[str, list[tuple[bool, str]]] = {}

    def add(self, key: str, ident: str, status: object) -> None:
        self.found.setdefault(key, []).append((status == "DELETED", ident))

    def best(self) -> dict[str, str]:
        return {key: min(candidates)[1] for key, candidates in self.found.items()}


def _refused(key: str, reason: str) -> PostingResult:
    """A refusal a person must act on (validation, closed period, deleted invoice): never retried by itself."""
    return PostingResult(key, False, reason=reason, retry=False)


def _build(
    batch: Sequence[Posting], build: Callable[[Mapping[str, Any], str], dict[str, Any]]
) -> tuple[list[tuple[Posting, dict[str, Any]]], list[PostingResult]]:
    built: list[tuple[Posting, dict[str, Any]]] = []
    refused: list[PostingResult] = []
    for posting in batch:
        try:
            built.append((posting, build(posting.payload, posting.key)))
        except _PayloadError as exc:
            refused.append(_refused(posting.key, f"payload: {exc}"))
    return built, refused


def _refusals(body: Any, sent: Sequence[Mapping[str, Any]]) -> list[list[str]] | None:
    """Each sent item's messages in a 400 ``ValidationException`` (``None``: the elements cannot be told apart).

    Elements are read in order when there is one per item sent, else matched by ``Reference``.
    """
    elements = body.get("Elements") if isinstance(body, Mapping) else None
    if not isinstance(elements, list) or not elements:
        return None
    if len(elements) == len(sent):
        return [validation_messages(element) for element in elements]
    by_reference = {
        str(e.get("Reference")): validation_messages(e)
        for e in elements
        if isinstance(e, Mapping) and e.get("Reference")
    }
    references = [str(item.get("Reference") or "") for item in sent]
    if not any(r in by_reference for r in references):
        return None
    return [by_reference.get(r, []) for r in references]


def _summary(body: Any) -> str:
    error = parse_error(body) if isinstance(body, Mapping) else None
    if error is None:
        return "no error body"
    return "; ".join(error.messages) or error.detail or error.title


def _reference(posting: Posting) -> str:
    """The posting's ``Reference`` in Xero: the payload's, else the posting key (``PostingKind``)."""
    return str(posting.payload.get("reference") or posting.key)


def _as_date(value: Any, clock: Clock) -> date:
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    if value is None:
        return clock().date()
    return date.fromisoformat(str(value)[:10])


def _datetime(day: date) -> str:
    """A date in a ``where`` expression: ``DateTime(2026,11,20)``."""
    return f"DateTime({day.year},{day.month:02d},{day.day:02d})"


def _allocation_key(allocation: Mapping[str, Any]) -> tuple[str, Any, date | None]:
    invoice = _mapping(allocation.get("Invoice"))
    try:
        day: date | None = parse_xero_date(allocation.get("Date"))
    except MappingError:
        day = None
    amount = allocation.get("Amount")
    return str(invoice.get("InvoiceID", "")).lower(), Decimal(str(amount)) if amount is not None else None, day


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _day(value: Any) -> str:
    if value is None:
        raise _PayloadError("date missing")
    return value.isoformat() if isinstance(value, date) else str(value)


def _money(value: Any) -> Decimal:
    if not isinstance(value, Decimal):
        raise _PayloadError(f"amount {value!r} is not a Decimal")
    return value


def _required(payload: Mapping[str, Any], name: str) -> Any:
    value = payload.get(name)
    if value is None or value == "":
        raise _PayloadError(f"{name} missing")
    return value


def _payment(payload: Mapping[str, Any], key: str) -> dict[str, Any]:
    item: dict[str, Any] = {
        "Invoice": {"InvoiceID": _required(payload, "invoice_external_id")},
        "Account": {"Code": _required(payload, "account")},
        "Date": _day(payload.get("date")),
        "Amount": _money(payload.get("amount")),
        "Reference": payload.get("reference") or key,
    }
    if payload.get("currency_rate") is not None:
        item["CurrencyRate"] = xero_rate(_money(payload["currency_rate"]))
    return item


XERO_RATE_PLACES = Decimal("0.000001")
"""Xero keeps a rate to six decimal places (the spec: "max length = [18].[6]")."""


def xero_rate(home_per_unit: Decimal) -> Decimal:
    """Xero's ``CurrencyRate`` for a rate in home units per unit of the document's currency.

    Xero states a rate the other way round: units of the document's currency per unit of the base (home)
    currency (a EUR payment in a USD organisation at 0.92 EUR per USD is ``CurrencyRate`` 0.92, and its bank
    amount is ``Amount / CurrencyRate``). Rounded half-even to six places."""
    if home_per_unit <= 0:
        raise _PayloadError(f"currency_rate {home_per_unit} is not positive")
    return (Decimal(1) / home_per_unit).quantize(XERO_RATE_PLACES)


def _spend(payload: Mapping[str, Any], key: str) -> dict[str, Any]:
    return {
        "Type": "SPEND",
        "Contact": {"Name": payload.get("contact_name") or "Payment processor"},
        "BankAccount": {"Code": _required(payload, "from_account")},
        "Date": _day(payload.get("date")),
        "Reference": payload.get("reference") or key,
        "LineAmountTypes": "NoTax",
        "LineItems": [
            {
                "Description": payload.get("description") or "Processing fees",
                "Quantity": Decimal("1"),
                "UnitAmount": _money(payload.get("amount")),
                "AccountCode": _required(payload, "expense_account"),
            }
        ],
    }


def _receive(payload: Mapping[str, Any], key: str) -> dict[str, Any]:
    """A surcharge: money received into the clearing account, its one line income (Contact: the customer)."""
    return {
        "Type": "RECEIVE",
        "Contact": {"ContactID": _required(payload, "customer_external_id")},
        "BankAccount": {"Code": _required(payload, "account")},
        "Date": _day(payload.get("date")),
        "Reference": payload.get("reference") or key,
        "LineAmountTypes": "NoTax",
        "LineItems": [
            {
                "Description": payload.get("description") or "Card surcharge",
                "Quantity": Decimal("1"),
                "UnitAmount": _money(payload.get("amount")),
                "AccountCode": _required(payload, "income_account"),
            }
        ],
    }


def _credit_note(payload: Mapping[str, Any], key: str) -> dict[str, Any]:
    """A partial refund's credit note: the customer's, for the amount, one line on the refund account."""
    account = payload.get("income_account")
    if not account:
        raise _PayloadError("no refund_account in [writeback]: a credit note line needs a revenue account")
    return {
        "Type": "ACCRECCREDIT",
        "Contact": {"ContactID": _required(payload, "customer_external_id")},
        "Date": _day(payload.get("date")),
        "Status": "AUTHORISED",
        "CurrencyCode": str(_required(payload, "currency")).upper(),
        "Reference": payload.get("reference") or key,
        "LineAmountTypes": "NoTax",
        "LineItems": [
            {
                "Description": payload.get("description") or "Refund",
                "Quantity": Decimal("1"),
                "UnitAmount": _money(payload.get("amount")),
                "AccountCode": account,
            }
        ],
    }


def _refund_payment(payload: Mapping[str, Any], key: str, credit_note: str) -> dict[str, Any]:
    """The refund of ``credit_note``: money paid back to the customer from the clearing account."""
    return {
        "CreditNote": {"CreditNoteID": credit_note},
        "Account": {"Code": _required(payload, "account")},
        "Date": _day(payload.get("date")),
        "Amount": _money(payload.get("amount")),
        "Reference": payload.get("reference") or key,
    }


def _overpayment(payload: Mapping[str, Any], key: str) -> dict[str, Any]:
    """The customer's unapplied credit: a RECEIVE-OVERPAYMENT into the clearing account. Xero books the line
    to accounts receivable itself (an overpayment's line carries no account); its ``OverpaymentID`` is the
    unapplied cash the sync reads back."""
    return {
        "Type": "RECEIVE-OVERPAYMENT",
        "Contact": {"ContactID": _required(payload, "customer_external_id")},
        "BankAccount": {"Code": _required(payload, "account")},
        "Date": _day(payload.get("date")),
        "Reference": payload.get("reference") or key,
        "LineAmountTypes": "NoTax",
        "LineItems": [
            {
                "Description": payload.get("description") or "Unapplied credit",
                "LineAmount": _money(payload.get("amount")),
            }
        ],
    }


def _payment_id(payload: Mapping[str, Any]) -> str:
    """The payment a reversal undoes, as Xero writes ids (a GUID, lower case)."""
    return _guid_of(payload, "payment_external_id", "PaymentID")


def _guid_of(payload: Mapping[str, Any], name: str, what: str = "id") -> str:
    """``payload[name]`` as Xero writes ids (a GUID, lower case)."""
    value = str(_required(payload, name))
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise _PayloadError(f"{name} {value!r} is not a Xero {what}") from None


def _transfer(payload: Mapping[str, Any], key: str) -> dict[str, Any]:
    return {
        "FromBankAccount": {"Code": _required(payload, "from_account")},
        "ToBankAccount": {"Code": _required(payload, "to_account")},
        "Amount": _money(payload.get("amount")),
        "Date": _day(payload.get("date")),
        "Reference": payload.get("reference") or key,
    }


def _allocation(payload: Mapping[str, Any], key: str) -> dict[str, Any]:
    """An allocation has no Reference: it is found again by invoice, amount and date (``find_posted``)."""
    return {
        "Invoice": {"InvoiceID": _required(payload, "invoice_external_id")},
        "Amount": _money(payload.get("amount")),
        "Date": _day(payload.get("date")),
    }


INVOICE_HAS_PAYMENTS = "This document cannot be edited as it has a payment or credit note allocated to it."
"""Xero's refusal of an edit to an invoice's lines once a payment or a credit note is applied to it."""
_LINE_KEYS = (
    "LineItemID",
    "Description",
    "Quantity",
    "UnitAmount",
    "ItemCode",
    "AccountCode",
    "TaxType",
    "TaxAmount",
    "LineAmount",
    "DiscountRate",
)
"""What of a line item read back is sent again when lines are added to an invoice."""


def fee_tag(reference: str) -> str:
    """The tag a late fee's line carries in its description (``LF-`` and ten hex digits of the reference's
    SHA-256): a line has no reference of its own in Xero, and the tag, unlike the key, reads well on an
    invoice the customer sees. It is how the line is found again."""
    return "LF-" + hashlib.sha256(reference.encode()).hexdigest()[:10].upper()


def _booking(payload: Mapping[str, Any]) -> str:
    booking = str(_required(payload, "booking"))
    if booking not in ("line", "invoice"):
        raise _PayloadError(f"a late fee's booking must be 'line' or 'invoice', not {booking!r}")
    return booking


def _late_fee_line(payload: Mapping[str, Any], key: str) -> dict[str, Any]:
    """The late fee's line: on ``late_fee_account``, its description ending with the fee's tag."""
    account = payload.get("late_fee_account")
    if not account:
        raise _PayloadError("no late_fee_account in [writeback]: a late fee's line needs a revenue account")
    description = str(payload.get("description") or "Late fee")
    return {
        "Description": f"{description} [{fee_tag(str(payload.get('reference') or key))}]",
        "Quantity": Decimal("1"),
        "UnitAmount": _money(payload.get("amount")),
        "AccountCode": str(account),
        "TaxType": "NONE",
    }


def _late_fee_invoice(payload: Mapping[str, Any], key: str, contact: str | None = None) -> dict[str, Any]:
    """A late-fee invoice of its own: the customer's (or ``contact``: the overdue invoice's), AUTHORISED, due on
    its date, ``Reference`` the posting's reference, one line on ``late_fee_account``."""
    day = _day(payload.get("date"))
    return {
        "Type": "ACCREC",
        "Contact": {"ContactID": contact or _required(payload, "customer_external_id")},
        "Date": day,
        "DueDate": day,
        "Status": "AUTHORISED",
        "CurrencyCode": str(_required(payload, "currency")).upper(),
        "Reference": payload.get("reference") or key,
        "LineAmountTypes": "NoTax",
        "LineItems": [_late_fee_line(payload, key)],
    }


def _bill(payload: Mapping[str, Any], key: str) -> dict[str, Any]:
    """A collections agency's fee: a bill (ACCPAY) from the agency's contact, found by name (Xero makes the
    contact when it has none by that name), AUTHORISED, due on its date, one line on the expense account. A
    bill has no ``Reference`` in Xero (ACCREC only): the posting's reference is its ``InvoiceNumber``, the
    number the supplier gave the bill."""
    account = payload.get("collections_fee_account")
    if not account:
        raise _PayloadError("no collections_fee_account in [writeback]: the agency's fee needs an expense account")
    day = _day(payload.get("date"))
    return {
        "Type": "ACCPAY",
        "Contact": {"Name": str(_required(payload, "contact_name"))},
        "Date": day,
        "DueDate": day,
        "Status": "AUTHORISED",
        "CurrencyCode": str(_required(payload, "currency")).upper(),
        "InvoiceNumber": payload.get("reference") or key,
        "LineAmountTypes": "NoTax",
        "LineItems": [
            {
                "Description": payload.get("description") or "Collections agency fee",
                "Quantity": Decimal("1"),
                "UnitAmount": _money(payload.get("amount")),
                "AccountCode": str(account),
            }
        ],
    }


def _lines_of(invoice: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return [line for line in invoice.get("LineItems") or [] if isinstance(line, Mapping)]


def _has_payments(invoice: Mapping[str, Any]) -> bool:
    """A payment or a credit applied: Xero will not let its lines change."""
    paid = Decimal(str(invoice.get("AmountPaid") or "0")) + Decimal(str(invoice.get("AmountCredited") or "0"))
    return paid > 0 or invoice.get("Status") == "PAID"


def _payments_refusal(reason: str | None) -> bool:
    return "payment or credit note allocated" in (reason or "").lower()


_WRITERS: Mapping[str, _Writer] = {
    PostingKind.PAYMENT: _Writer("Payments", _payment, "PaymentID", "create_payments", True),
    PostingKind.FEE: _Writer("BankTransactions", _spend, "BankTransactionID", "create_bank_transactions", True),
    PostingKind.PAYOUT: _Writer("BankTransfers", _transfer, "BankTransferID", "create_bank_transfer", False),
    PostingKind.PAYOUT_DEBIT: _Writer("BankTransfers", _transfer, "BankTransferID", "create_bank_transfer", False),
    PostingKind.SURCHARGE: _Writer("BankTransactions", _receive, "BankTransactionID", "create_bank_transactions", True),
    PostingKind.OVERPAYMENT: _Writer(
        "BankTransactions", _overpayment, "OverpaymentID", "create_bank_transactions", True
    ),
    PostingKind.COLLECTIONS_FEE: _Writer("Invoices", _bill, "InvoiceID", "create_invoices", True),
}
_ALLOCATION_CALLS: Mapping[str, str] = {
    "CreditNotes": "create_credit_note_allocation",
    "Overpayments": "create_overpayment_allocations",
    "Prepayments": "create_prepayment_allocations",
}
_CASH_COLLECTIONS: Mapping[str, str] = {"overpayment": "Overpayments", "prepayment": "Prepayments"}
"""``PaymentRecord.kind`` of unapplied cash (``mapping.map_overpayment`` / ``map_prepayment``) -> collection."""
_CREDIT_LABELS: Mapping[str, str] = {
    "CreditNotes": "credit note",
    "Overpayments": "overpayment",
    "Prepayments": "prepayment",
}
