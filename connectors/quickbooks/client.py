"""QuickBooks Online: OAuth2 and the record source.

The official SDKs do the talking: intuit-oauth for tokens, python-quickbooks
for the v3 API. python-quickbooks sends through our ``HttpTransport`` (it
accepts any ``requests.Session``), so every call gets explicit timeouts, the
realm's rate budget, the fault table of ``faults.py`` and token refresh. The
SDK's dict responses are mapped to canonical records here; no SDK object
leaves this package.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import requests
from intuitlib.client import AuthClient
from intuitlib.enums import Scopes
from intuitlib.exceptions import AuthClientError
from quickbooks import QuickBooks

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
    PostingResult,
    ReauthRequiredError,
    RetriableError,
    Sleeper,
    TokenStore,
    Window,
)
from connectors.http import HttpTransport, RateBudget
from connectors.oauth import BearerTokens, read_redirect
from connectors.quickbooks.faults import make_classifier
from connectors.quickbooks.mapping import (
    ENTITY_NAMES,
    MappingError,
    format_qbo_datetime,
    map_cdc_response,
    map_query_response,
)
from connectors.quickbooks.writer import BatchWriter

PAGE_SIZE = 1000
QUICKBOOKS_ACCOUNT_TYPES = {
    "Bank": AccountType.BANK,
    "Expense": AccountType.EXPENSE,
    "Other Expense": AccountType.EXPENSE,
    "Cost of Goods Sold": AccountType.EXPENSE,
    "Income": AccountType.INCOME,
    "Other Income": AccountType.INCOME,
}
"""QuickBooks' ``AccountType`` values as write-back needs them; the rest (assets, liabilities, equity) are other."""
"""QuickBooks' MAXRESULTS and its per-entity CDC cap."""

CDC_HORIZON_DAYS = 30
TOKEN_SKEW = timedelta(seconds=120)
"""Refresh this long before the access token expires."""


@dataclass(frozen=True)
class QuickBooksSettings:
    connection: str
    client_id: str
    client_secret: str
    redirect_uri: str
    api_base: str
    discovery: str
    """``production``, ``sandbox`` or the URL of an OpenID discovery document."""
    token_url: str | None = None
    realm_id: str | None = None
    minor_version: int = 75
    timeout: float = 60.0
    per_second: int = 10
    per_minute: int = 500
    concurrent: int = 10
    batches_per_minute: int = 40
    """``/batch`` requests per minute per realm (Intuit: 40), on top of the per-second and per-minute limits."""
    home_currency: str = "USD"
    entities: tuple[Entity, ...] = (Entity.CUSTOMER, Entity.INVOICE, Entity.PAYMENT, Entity.CREDIT_NOTE)


class _TimedAuthClient(AuthClient):  # type: ignore[misc]
    """intuit-oauth sends with no timeout; give every call one."""

    http_timeout: float = 30.0

    def request(self, method: str, url: str, *args: Any, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", self.http_timeout)
        response: requests.Response = super().request(method, url, *args, **kwargs)
        return response


class QuickBooksAuth:
    """The OAuth2 authorization-code flow and token refresh, via intuit-oauth."""

    def __init__(self, settings: QuickBooksSettings, clock: Clock) -> None:
        self.settings = settings
        self.clock = clock
        self._client: AuthClient | None = None

    def _auth_client(self) -> AuthClient:
        # AuthClient reads the discovery document when constructed: do it on first use.
        if self._client is None:
            s = self.settings
            try:
                client = _TimedAuthClient(
                    s.client_id, s.client_secret, s.redirect_uri, s.discovery, realm_id=s.realm_id
                )
            except (requests.RequestException, AuthClientError) as exc:
                raise RetriableError(f"{s.connection}: cannot read the OAuth discovery document: {exc}") from exc
            if s.token_url:
                client.token_endpoint = s.token_url
            self._client = client
        return self._client

    def authorize_url(self, state: str) -> str:
        url: str = self._auth_client().get_authorization_url([Scopes.ACCOUNTING], state_token=state)
        return url

    def _tokens(self, client: AuthClient, realm_id: str | None) -> OAuthTokens:
        now = self.clock()
        refresh_in = getattr(client, "x_refresh_token_expires_in", None)
        return OAuthTokens(
            access_token=str(client.access_token),
            refresh_token=str(client.refresh_token),
            access_expires_at=now + timedelta(seconds=int(client.expires_in or 3600)),
            refresh_expires_at=now + timedelta(seconds=int(refresh_in)) if refresh_in else None,
            account_id=realm_id,
        )

    def exchange(self, answer: str, expected_state: str | None) -> OAuthTokens:
        """Trade the pasted redirect URL (or the bare code) for tokens."""
        code, query = read_redirect(answer, expected_state)
        realm_id = query.get("realmId", [self.settings.realm_id])[0]
        if not realm_id:
            raise FatalError(
                "no realm id: paste the whole redirect URL (it carries realmId) or set realm_id in the config",
                actor=Actor.CONFIG,
            )
        client = self._auth_client()
        try:
            client.get_bearer_token(code, realm_id=realm_id)
        except AuthClientError as exc:
            raise FatalError(f"the authorization code was refused: {exc.content!r}", actor=Actor.CONFIG) from exc
        return self._tokens(client, realm_id)

    def refresh(self, tokens: OAuthTokens) -> OAuthTokens:
        client = self._auth_client()
        try:
            client.refresh(refresh_token=tokens.refresh_token)
        except AuthClientError as exc:
            body = exc.content.decode("utf-8", "replace") if isinstance(exc.content, bytes) else str(exc.content)
            if "invalid_grant" in body or "invalid_client" in body:
                raise ReauthRequiredError(
                    f"{self.settings.connection}: QuickBooks refused the refresh token "
                    f"({body.strip()[:200]}): run `arsync connect {self.settings.connection}`"
                ) from exc
            raise RetriableError(f"{self.settings.connection}: token refresh failed: HTTP {exc.status_code}") from exc
        except requests.RequestException as exc:
            raise RetriableError(f"{self.settings.connection}: token refresh failed: {exc}") from exc
        return self._tokens(client, tokens.account_id)


class QuickBooksSource:
    """A ``RecordSource`` and a ``LedgerWriter`` over one QuickBooks Online company (realm)."""

    change_horizon_days = CDC_HORIZON_DAYS

    def __init__(
        self,
        settings: QuickBooksSettings,
        tokens: TokenStore,
        clock: Clock,
        sleeper: Sleeper,
        auth: QuickBooksAuth | None = None,
    ) -> None:
        self.settings = settings
        self.connection = settings.connection
        self.entities = settings.entities
        self.clock = clock
        self.tokens = tokens
        self.auth = auth or QuickBooksAuth(settings, clock)
        self.bearer = BearerTokens(settings.connection, tokens, self.auth.refresh, clock, TOKEN_SKEW)
        budget = RateBudget(
            clock,
            sleeper,
            per_second=settings.per_second,
            per_minute=settings.per_minute,
            concurrent=settings.concurrent,
            # Intuit counts arrivals: a first call slowed by opening the connection lands later than it left,
            # and the eleventh sent exactly a second after it would land inside the same second (a 429 and a
            # minute lost, as QuickBooks sends no Retry-After). 50 ms covers that jitter.
            margin=0.05,
        )
        self.transport = self._transport(budget, clock, sleeper)
        # /batch calls go through a transport of their own whose budget (40 a minute) takes the realm's
        # budget after its own, so every attempt, retries included, counts against both.
        batches = RateBudget(clock, sleeper, per_minute=settings.batches_per_minute, parent=budget, margin=0.05)
        self.batch_transport = self._transport(batches, clock, sleeper)
        self._sdk: QuickBooks | None = None
        self._batch_sdk: QuickBooks | None = None
        self.writer = BatchWriter(settings.connection, self._query, self._send_batch)

    def _transport(self, budget: RateBudget, clock: Clock, sleeper: Sleeper) -> HttpTransport:
        transport = HttpTransport(
            classifier=make_classifier(clock),
            budget=budget,
            clock=clock,
            sleeper=sleeper,
            timeout=(10.0, self.settings.timeout),
            authorize=self.bearer.authorization,
            refresh=self.bearer.refresh,
        )
        transport.headers["Accept"] = "application/json"
        return transport

    # --- the SDK ---------------------------------------------------------------

    def _new_sdk(self, transport: HttpTransport) -> QuickBooks:
        realm = self.settings.realm_id or self.bearer.load().account_id
        if not realm:
            raise ReauthRequiredError(f"{self.connection}: no realm id: run `arsync connect {self.connection}`")
        sdk = QuickBooks(company_id=realm, minorversion=self.settings.minor_version, use_decimal=True)
        sdk.session = transport
        sdk.sandbox = False
        sdk.api_url_v3 = self.settings.api_base.rstrip("/")
        return sdk

    def _client(self) -> QuickBooks:
        if self._sdk is None:
            self._sdk = self._new_sdk(self.transport)
        return self._sdk

    def _query(self, statement: str) -> dict[str, Any]:
        result: dict[str, Any] = self._client().query(statement)
        return result

    def accounts(self) -> list[LedgerAccount]:
        """The chart of accounts, 1000 a page (``Active`` in and out, so a deactivated one is named as such)."""
        found: list[LedgerAccount] = []
        start = 1
        while True:
            body = self._query(
                f"SELECT * FROM Account WHERE Active IN (true, false) STARTPOSITION {start} MAXRESULTS {PAGE_SIZE}"
            )
            rows = body.get("QueryResponse", {}).get("Account", [])
            for row in rows:
                kind = QUICKBOOKS_ACCOUNT_TYPES.get(str(row.get("AccountType")), AccountType.OTHER)
                found.append(
                    LedgerAccount(str(row["Id"]), str(row.get("Name", "")), kind, bool(row.get("Active", True)))
                )
            if len(rows) < PAGE_SIZE:
                return found
            start += PAGE_SIZE

    def _send_batch(self, body: Mapping[str, Any], request_id: str) -> dict[str, Any]:
        """POST ``/batch?requestid=…`` through the SDK (its ``batch_operation`` cannot carry a requestid)."""
        if self._batch_sdk is None:
            self._batch_sdk = self._new_sdk(self.batch_transport)
        sdk = self._batch_sdk
        url = f"{sdk.api_url}/company/{sdk.company_id}/batch"
        result: dict[str, Any] = sdk.make_request("POST", url, request_body=jsonwire.dumps(body), request_id=request_id)
        return result

    # --- RecordSource ----------------------------------------------------------

    def _where(self, entity: Entity, window: Window) -> str:
        conditions = []
        if entity is Entity.CUSTOMER:
            conditions.append("Active IN (true, false)")
        if window.start is not None:
            conditions.append(f"Metadata.LastUpdatedTime >= '{format_qbo_datetime(window.start)}'")
        if window.end is not None:
            conditions.append(f"Metadata.LastUpdatedTime < '{format_qbo_datetime(window.end)}'")
        return f" WHERE {' AND '.join(conditions)}" if conditions else ""

    def pull(self, entity: Entity, window: Window, resume: str | None) -> Iterator[Page]:
        name = ENTITY_NAMES[entity]
        position = int(resume) if resume else 1
        where = self._where(entity, window)
        while True:
            body = self._query(
                f"SELECT * FROM {name}{where} ORDERBY Id STARTPOSITION {position} MAXRESULTS {PAGE_SIZE}"
            )
            try:
                records, bad, raw = map_query_response(self.connection, entity, body, self.settings.home_currency)
            except MappingError as exc:
                raise FatalError(f"{self.connection}: unreadable {name} query response: {exc}") from exc
            position += raw
            done = raw < PAGE_SIZE
            yield Page(entity, records, bad, resume=None if done else str(position))
            if done:
                return

    def changes(self, entities: Sequence[Entity], since: datetime) -> list[Page]:
        names = ",".join(ENTITY_NAMES[e] for e in entities)
        body: dict[str, Any] = self._client().change_data_capture(names, format_qbo_datetime(since))
        try:
            mapped = map_cdc_response(self.connection, body, entities, self.settings.home_currency)
        except MappingError as exc:
            raise FatalError(f"{self.connection}: unreadable change feed response: {exc}") from exc
        pages = []
        for entity in entities:
            records, bad, raw = mapped[entity]
            pages.append(Page(entity, records, bad, truncated=raw >= PAGE_SIZE))
        return pages

    def external_ids(self, entity: Entity) -> Iterator[list[str]]:
        name = ENTITY_NAMES[entity]
        where = " WHERE Active IN (true, false)" if entity is Entity.CUSTOMER else ""
        position = 1
        while True:
            body = self._query(
                f"SELECT Id FROM {name}{where} ORDERBY Id STARTPOSITION {position} MAXRESULTS {PAGE_SIZE}"
            )
            objects = body.get("QueryResponse", {}).get(name, [])
            yield [str(o["Id"]) for o in objects if isinstance(o, dict) and "Id" in o]
            position += len(objects)
            if len(objects) < PAGE_SIZE:
                return

    def api_calls(self) -> int:
        return self.transport.stats.requests + self.batch_transport.stats.requests

    # --- LedgerWriter ----------------------------------------------------------

    def post(self, postings: Sequence[Posting]) -> list[PostingResult]:
        """Payments, fees, payouts, credit applications, payment reversals (voids) and surcharges through
        ``/batch`` (see ``writer.py``).

        One result per posting, in order. An item QuickBooks refuses is ``ok=False``: ``retry`` for a
        throttle or a system fault, not for validation, a closed period, a deleted invoice or payment. Raises
        ``RetriableError`` when a whole request's outcome is unknown: the caller then uses :meth:`find_posted`.
        """
        return self.writer.post(postings)

    def find_posted(self, postings: Sequence[Posting]) -> dict[str, str]:
        """Of ``postings``, those already in QuickBooks: key -> Id, by the reference their PrivateNote carries."""
        return self.writer.find_posted(postings)
