"""Xero's OpenAPI specs, loaded once, and a validator for one HTTP exchange.

``validate_exchange(method, url, headers, body, status, response_headers,
response_body)`` checks a request and its response the way Xero documents
them, whatever host they went to (the sandbox's URL is mapped onto the spec's
server, ``https://api.xero.com``):

* ``/api.xro/2.0/...`` against ``xero_accounting.yaml`` with openapi-core
  (parameters, required ``xero-tenant-id``, request body with read-only
  properties refused, response body by status);
* ``/connections`` against ``xero-identity.yaml``;
* ``/connect/token`` against the identity spec's ``RefreshToken`` /
  ``AccessToken`` schemas and RFC 6749's error shape.

The spec documents only 200 (and 400 for writes). Other statuses are checked
against what real traffic shows (see ``UNDOCUMENTED``): Xero's problem-details
body for 401/403/404, ``Retry-After`` and ``X-Rate-Limit-Problem`` for 429.

Where the real API and the spec disagree, the real API wins and the
difference is listed in ``KNOWN_DEVIATIONS`` with its evidence; nothing else
is tolerated. The refdata folder is read from ``../shared/refdata`` (skipped
locally, a failure in CI, when absent).
"""

from __future__ import annotations

import functools
import json
import re
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qs, urlsplit

import yaml
from openapi_core import OpenAPI
from openapi_core.configurations import Config
from openapi_core.datatypes import RequestParameters
from openapi_core.templating.responses.exceptions import ResponseNotFound
from openapi_core.validation.schemas import oas30_read_schema_validators_factory
from werkzeug.datastructures import Headers, ImmutableMultiDict

from tests.refdata import require_refdata

__all__ = [
    "KNOWN_DEVIATIONS",
    "XERO_HOST",
    "Deviation",
    "accounting_document",
    "accounting_spec",
    "exchange_errors",
    "identity_spec",
    "schema_errors",
    "validate_exchange",
    "validate_exchanges",
]

XERO_HOST = "https://api.xero.com"


class SchemaError(Protocol):
    """The parts of a ``jsonschema`` ValidationError this module reads."""

    message: str
    validator: Any
    validator_value: Any
    instance: Any
    schema: Any

    @property
    def absolute_path(self) -> Sequence[Any]: ...


API_PREFIX = "/api.xro/2.0"
RATE_PROBLEMS = frozenset({"minute", "day", "appminute", "concurrent"})
OAUTH_ERRORS = frozenset(
    {
        "invalid_request",
        "invalid_client",
        "invalid_grant",
        "unauthorized_client",
        "unsupported_grant_type",
        "invalid_scope",
    }
)


def _spec_path(name: str) -> Path:
    return require_refdata("xero", name)


def _load(name: str) -> OpenAPI:
    # The published spec does not pass OpenAPI validation itself (boolean
    # properties carry string defaults such as ``default: 'false'``), so the
    # spec check is off; request and response validation are unaffected.
    return OpenAPI.from_file_path(str(_spec_path(name)), config=Config(spec_validator_cls=None))


@functools.cache
def accounting_spec() -> OpenAPI:
    """``xero_accounting.yaml`` (Accounting API, server ``https://api.xero.com/api.xro/2.0``)."""
    return _load("xero_accounting.yaml")


@functools.cache
def identity_spec() -> OpenAPI:
    """``xero-identity.yaml`` (``/Connections``, server ``https://api.xero.com``)."""
    return _load("xero-identity.yaml")


@functools.cache
def accounting_document() -> dict[str, Any]:
    """The accounting spec as plain YAML data (for its examples and schema property lists)."""
    with _spec_path("xero_accounting.yaml").open(encoding="utf-8") as handle:
        document: dict[str, Any] = yaml.safe_load(handle)
    return document


# --- deviations the real API shows -------------------------------------------------------------


@dataclass(frozen=True)
class Deviation:
    """A schema error the real API produces too: tolerated, with the evidence."""

    name: str
    evidence: str
    matches: Callable[[str, str, SchemaError], bool]
    """``(request path, what failed e.g. "Invalid header parameter: If-Modified-Since", error)``."""


_CONNECTION_TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{7}$")


def _connection_dates(path: str, head: str, error: SchemaError) -> bool:
    return (
        path.lower().startswith("/connections")
        and error.validator == "format"
        and error.validator_value == "date-time"
        and bool(error.absolute_path)
        and error.absolute_path[-1] in ("createdDateUtc", "updatedDateUtc")
        and isinstance(error.instance, str)
        and bool(_CONNECTION_TIME.match(error.instance))
    )


_NAIVE_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?$")
_HTTP_DATE = re.compile(r"^[A-Z][a-z]{2}, \d\d [A-Z][a-z]{2} \d{4} \d\d:\d\d:\d\d GMT$")


def _if_modified_since(path: str, head: str, error: SchemaError) -> bool:
    return (
        head.endswith("If-Modified-Since")
        and error.validator == "format"
        and error.validator_value == "date-time"
        and isinstance(error.instance, str)
        and bool(_NAIVE_UTC.match(error.instance) or _HTTP_DATE.match(error.instance))
    )


KNOWN_DEVIATIONS: tuple[Deviation, ...] = (
    Deviation(
        "connections-local-timestamps",
        "xero-identity.yaml declares Connection.createdDateUtc/updatedDateUtc as format: date-time "
        "(RFC 3339, which requires an offset), but the recorded GET /Connections "
        "(xero-python-cassettes/test_get_connections.yaml) and the spec's own example carry "
        '"2020-03-18T21:20:07.7179250": seven fractional digits and no offset.',
        _connection_dates,
    ),
    Deviation(
        "if-modified-since-forms",
        "The spec declares the If-Modified-Since header as format: date-time (RFC 3339, offset "
        "required), but Xero documents it as 'A UTC timestamp (yyyy-mm-ddThh:mm:ss)' with no offset "
        "(quoted from developer.xero.com in freakboy3742/pyxero#261 and thallium205/xero#4), and "
        "pyxero has long sent an RFC 1123 HTTP-date ('%a, %d %b %Y %H:%M:%S GMT', "
        "src/xero/basemanager.py prepare_filtering_date). Both forms are tolerated; anything else "
        "that is not RFC 3339 is still reported.",
        _if_modified_since,
    ),
)

UNDOCUMENTED: Mapping[int, str] = {
    401: "problem details {Type, Title, Status, Detail, Instance, Extensions}: pyxero tests/test_exceptions.py "
    'marks {"Type":null,"Title":"Unauthorized","Status":401,"Detail":"TokenExpired: ..."} as verified '
    "from the live API",
    403: "the same problem-details shape (Title Forbidden, Detail AuthenticationUnsuccessful)",
    404: "the same problem-details shape",
    429: "Retry-After and X-Rate-Limit-Problem (minute|day|appminute) per a Xero maintainer in "
    "XeroAPI/xero-node#634; concurrent is the fourth limit Xero documents",
}


# --- adapters ------------------------------------------------------------------------------------


class _Request:
    def __init__(
        self, method: str, host_url: str, path: str, query: str, headers: Mapping[str, str], body: bytes | None
    ) -> None:
        self.method = method.lower()
        self.host_url = host_url
        self.path = path
        self.body = body or None
        lowered = {k.lower(): v for k, v in headers.items()}
        self.content_type = (lowered.get("content-type") or "application/json").lower()
        self.parameters = RequestParameters(
            query=ImmutableMultiDict(parse_qs(query, keep_blank_values=True)),
            header=Headers(dict(headers)),
            cookie=ImmutableMultiDict(),
        )


class _Response:
    def __init__(self, status: int, headers: Mapping[str, str], body: bytes) -> None:
        self.status_code = status
        self.headers = Headers(dict(headers))
        self.data = body
        lowered = {k.lower(): v for k, v in headers.items()}
        self.content_type = (lowered.get("content-type") or "application/json").lower()


def _canonical(path: str, templates: Iterable[str], prefix: str = "") -> str:
    """``path`` with its literal segments spelled as in the spec (Xero's routes ignore case).

    Xero's own SDK calls ``/Connections`` and Xero's OAuth guide ``/connections``.
    """
    rest = path[len(prefix) :] if prefix and path.lower().startswith(prefix.lower()) else path
    parts = [p for p in rest.split("/") if p]
    best: tuple[int, list[str]] | None = None
    for template in templates:
        pieces = [p for p in template.split("/") if p]
        if len(pieces) != len(parts):
            continue
        literal = 0
        out = []
        for piece, part in zip(pieces, parts, strict=True):
            if piece.startswith("{"):
                out.append(part)
            elif piece.lower() == part.lower():
                out.append(piece)
                literal += 1
            else:
                break
        else:
            if best is None or literal > best[0]:
                best = (literal, out)
    if best is None:
        return path
    return prefix + "/" + "/".join(best[1])


def _describe(error: BaseException) -> tuple[str, list[SchemaError | str]]:
    """The error's own message (it names the parameter or the body) and its schema errors."""
    cause = error.__cause__
    found = getattr(cause, "schema_errors", None)
    text = str(error)
    head = (text if len(text) <= 80 else type(error).__name__) if found else ""
    if found:
        return head, list(found)
    return head, [f"{error}" + (f": {cause}" if cause is not None else "")]


def _format(where: str, error: SchemaError | str) -> str:
    if isinstance(error, str):
        return f"{where}: {error}"
    location = "/".join(str(p) for p in error.absolute_path) or "(value)"
    return f"{where}: {location}: {error.message}"


def _filter(where: str, path: str, described: tuple[str, list[SchemaError | str]]) -> list[str]:
    head, errors = described
    label = f"{where} ({head})" if head else where
    out = []
    for error in errors:
        if not isinstance(error, str) and any(d.matches(path, head, error) for d in KNOWN_DEVIATIONS):
            continue
        out.append(_format(label, error))
    return out


def schema_errors(spec: OpenAPI, schema: str, value: Any, *, strict: bool = False) -> list[SchemaError]:
    """Errors of ``value`` against ``#/components/schemas/<schema>`` of ``spec``.

    ``strict`` also refuses properties the schema does not declare.
    """
    schema_path = spec.spec / "components" / "schemas" / schema
    validator = oas30_read_schema_validators_factory.create(
        spec.spec, schema_path, forbid_unspecified_additional_properties=strict
    )
    found: list[SchemaError] = list(validator.validator.iter_errors(value))
    return found


# --- the validator -------------------------------------------------------------------------------


def _json(body: bytes) -> Any:
    try:
        return json.loads(body.decode("utf-8")) if body else None
    except (UnicodeDecodeError, ValueError):
        return None


def _header(headers: Mapping[str, str], name: str) -> str | None:
    for key, value in headers.items():
        if key.lower() == name.lower():
            return value
    return None


def _undocumented(status: int, response_headers: Mapping[str, str], response_body: bytes) -> list[str]:
    errors: list[str] = []
    body = _json(response_body)
    if status in (401, 403, 404):
        if not isinstance(body, dict) or not {"Title", "Status", "Detail"} <= set(body):
            errors.append(f"response {status}: not Xero's problem-details body: {response_body[:200]!r}")
        elif body.get("Status") != status:
            errors.append(f"response {status}: problem Status is {body.get('Status')!r}")
    if status == 429:
        retry = _header(response_headers, "Retry-After")
        if retry is None or not retry.strip().isdigit():
            errors.append(f"response 429: Retry-After must be whole seconds, got {retry!r}")
        problem = _header(response_headers, "X-Rate-Limit-Problem")
        if problem not in RATE_PROBLEMS:
            errors.append(f"response 429: X-Rate-Limit-Problem {problem!r} is not one of {sorted(RATE_PROBLEMS)}")
    return errors


def _rate_headers(status: int, response_headers: Mapping[str, str]) -> list[str]:
    errors: list[str] = []
    if _header(response_headers, "Xero-Correlation-Id") is None:
        errors.append("response: no Xero-Correlation-Id header (every recorded Xero response has one)")
    if status == 200:
        for name in ("X-DayLimit-Remaining", "X-MinLimit-Remaining"):
            value = _header(response_headers, name)
            if value is None or not value.strip().isdigit():
                errors.append(f"response: {name} must be a count (as recorded), got {value!r}")
    return errors


def _token_errors(
    headers: Mapping[str, str], body: bytes, status: int, response_headers: Mapping[str, str], response_body: bytes
) -> list[str]:
    errors: list[str] = []
    form = {k: v[-1] for k, v in parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True).items()}
    grant = form.get("grant_type")
    if grant not in ("authorization_code", "refresh_token", "client_credentials"):
        errors.append(f"request: grant_type {grant!r}")
    if grant == "refresh_token":
        errors += [_format("request", e) for e in schema_errors(identity_spec(), "RefreshToken", form)]
        if not form.get("refresh_token"):
            errors.append("request: refresh_token missing")
    basic = (_header(headers, "Authorization") or "").lower().startswith("basic ")
    if not basic and not (form.get("client_id") and form.get("client_secret")):
        errors.append("request: no client credentials (HTTP Basic or client_id/client_secret)")
    payload = _json(response_body)
    if status == 200:
        if not isinstance(payload, dict):
            return [*errors, "response 200: not a JSON object"]
        errors += [_format("response 200", e) for e in schema_errors(identity_spec(), "AccessToken", payload)]
        for key in ("access_token", "expires_in", "token_type"):
            if key not in payload:
                errors.append(f"response 200: {key} missing")
        if payload.get("token_type") != "Bearer":
            errors.append(f"response 200: token_type {payload.get('token_type')!r}, recorded 'Bearer'")
    elif status in (400, 401) and (not isinstance(payload, dict) or payload.get("error") not in OAUTH_ERRORS):
        errors.append(f"response {status}: not an RFC 6749 error body: {response_body[:200]!r}")
    content_type = _header(response_headers, "Content-Type") or ""
    if not content_type.lower().startswith("application/json"):
        errors.append(f"response: Content-Type {content_type!r}")
    return errors


def exchange_errors(
    method: str,
    url: str,
    headers: Mapping[str, str],
    body: bytes | str | None,
    status: int,
    response_headers: Mapping[str, str],
    response_body: bytes | str | None,
    *,
    check_request: bool = True,
) -> list[str]:
    """Everything about one exchange that the spec (or, where it is silent, real traffic) contradicts."""
    raw = body.encode("utf-8") if isinstance(body, str) else body or b""
    answer = response_body.encode("utf-8") if isinstance(response_body, str) else response_body or b""
    parts = urlsplit(url)
    path = parts.path
    lower = path.lower()
    with warnings.catch_warnings():
        # openapi-core does not implement the OAuth2 security scheme and says so on every call.
        warnings.filterwarnings("ignore", message="Unsupported scheme type")
        if lower == "/connect/token":
            return _token_errors(headers, raw, status, response_headers, answer)
        if lower.startswith(API_PREFIX.lower() + "/"):
            spec = accounting_spec()
            templates = list(accounting_document()["paths"])
            spec_path = _canonical(path, templates, API_PREFIX)
        elif lower == "/connections" or lower.startswith("/connections/"):
            spec = identity_spec()
            spec_path = _canonical(path, ["/Connections", "/Connections/{id}"])
        else:
            return []  # the authorize redirect and the sandbox's own control paths: no spec
        request = _Request(method, XERO_HOST, spec_path, parts.query, headers, raw)
        errors: list[str] = []
        if check_request:
            for error in spec.iter_request_errors(request):
                errors += _filter("request", path, _describe(error))
        response = _Response(status, response_headers, answer)
        for error in spec.iter_response_errors(request, response):
            if isinstance(error, ResponseNotFound):
                if status == 400 and _json(answer) is not None:
                    found: list[SchemaError | str] = list(schema_errors(accounting_spec(), "Error", _json(answer)))
                    errors += _filter("response 400", path, ("Error schema", found))
                errors += _undocumented(status, response_headers, answer)
                continue
            errors += _filter(f"response {status}", path, _describe(error))
    if lower.startswith(API_PREFIX.lower() + "/") and status < 500:
        errors += _rate_headers(status, response_headers)
    content_type = _header(response_headers, "Content-Type") or ""
    if answer and _json(answer) is not None and not content_type.lower().startswith("application/json"):
        errors.append(f"response: JSON body with Content-Type {content_type!r}")
    return errors


def validate_exchange(
    method: str,
    url: str,
    headers: Mapping[str, str],
    body: bytes | str | None,
    status: int,
    response_headers: Mapping[str, str],
    response_body: bytes | str | None,
    *,
    check_request: bool = True,
) -> None:
    """Raise ``AssertionError`` listing every way the exchange departs from the spec."""
    errors = exchange_errors(
        method, url, headers, body, status, response_headers, response_body, check_request=check_request
    )
    if errors:
        raise AssertionError(f"{method} {url} -> {status}:\n  " + "\n  ".join(errors))


def validate_exchanges(exchanges: Iterable[Sequence[Any]], *, check_request: bool = True) -> int:
    """Validate ``(method, url, headers, body, status, response_headers, response_body)`` tuples.

    All are checked before failing; returns how many were checked.
    """
    problems: list[str] = []
    count = 0
    for exchange in exchanges:
        method, url, headers, body, status, response_headers, response_body = exchange
        count += 1
        errors = exchange_errors(
            method, url, headers, body, status, response_headers, response_body, check_request=check_request
        )
        if errors:
            problems.append(f"{method} {url} -> {status}:\n  " + "\n  ".join(errors))
    if problems:
        raise AssertionError(f"{len(problems)} of {count} exchanges depart from the spec:\n" + "\n".join(problems))
    return count
