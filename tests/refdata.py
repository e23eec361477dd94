"""Helpers to read the shared reference recordings (``../shared/refdata``).

The recordings are never copied into the project. A test module that needs
them calls :func:`require_refdata` at import time: it skips the module with a
clear reason when the folder is absent, except in CI (env ``CI`` set), where a
missing folder is a failure.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator, Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any
from xml.etree.ElementTree import Element

import pytest
import requests
import yaml
from defusedxml.ElementTree import parse as parse_xml

__all__ = [
    "QBO_LIST_ELEMENTS",
    "build_response",
    "iter_entities",
    "iter_json_bodies",
    "load_ruby_cassette",
    "qbo_xml_entities",
    "qbo_xml_to_dict",
    "refdata_dir",
    "require_refdata",
    "response_from_interaction",
]


def refdata_dir() -> Path:
    """``/work/shared/refdata`` seen from the repository root (``<repo>/../shared/refdata``)."""
    return (Path(__file__).resolve().parents[1] / ".." / "shared" / "refdata").resolve()


def require_refdata(*parts: str) -> Path:
    """The refdata path ``parts`` under :func:`refdata_dir`, or skip (fail in CI) if absent."""
    path = refdata_dir().joinpath(*parts)
    if path.exists():
        return path
    reason = f"reference recordings not found at {path} (shared/refdata beside the repository)"
    if os.environ.get("CI"):
        pytest.fail(f"{reason}; CI must have them", pytrace=False)
    pytest.skip(reason, allow_module_level=True)


# --- Ruby VCR cassettes ----------------------------------------------------------


def load_ruby_cassette(path: Path) -> list[dict[str, Any]]:
    """The ``http_interactions`` of a Ruby-VCR YAML cassette."""
    with path.open(encoding="utf-8") as handle:
        document = yaml.safe_load(handle)
    interactions = document.get("http_interactions") if isinstance(document, dict) else None
    if not isinstance(interactions, list):
        raise ValueError(f"{path}: not a VCR cassette (no http_interactions)")
    return interactions


def _body_text(interaction: Mapping[str, Any]) -> str:
    body = interaction["response"].get("body") or {}
    text = body.get("string")
    return text if isinstance(text, str) else ""


def iter_json_bodies(paths: Iterable[Path]) -> Iterator[tuple[Path, int, Any]]:
    """``(cassette, index, body)`` for every recorded response whose body is JSON.

    Bodies are parsed with ``parse_float=Decimal``.
    """
    for path in paths:
        for index, interaction in enumerate(load_ruby_cassette(path)):
            try:
                body = json.loads(_body_text(interaction), parse_float=Decimal)
            except ValueError:
                continue
            yield path, index, body


def _as_list(value: object) -> list[Any]:
    if isinstance(value, list):
        return value
    if isinstance(value, Mapping):
        return [value]
    return []


def iter_entities(body: object, names: Iterable[str]) -> Iterator[tuple[str, Any]]:
    """``(entity name, object)`` for each QuickBooks entity object in a response body.

    Looks where QuickBooks puts entities: the top level (``{"Invoice": {...}}``),
    ``QueryResponse``, ``CDCResponse[].QueryResponse[]`` and
    ``BatchItemResponse[]`` (an item's entity or its ``QueryResponse``). Other
    places that merely use an entity name as a key (a report header's
    ``"Customer": "1"``) are not entities and are not visited.
    """
    wanted = tuple(names)
    if not isinstance(body, Mapping):
        return

    def in_container(container: Mapping[str, Any]) -> Iterator[tuple[str, Any]]:
        for name in wanted:
            for obj in _as_list(container.get(name)):
                yield name, obj

    yield from in_container(body)
    query = body.get("QueryResponse")
    if isinstance(query, Mapping):
        yield from in_container(query)
    for block in _as_list(body.get("CDCResponse")):
        for query in _as_list(block.get("QueryResponse")):
            yield from in_container(query)
    for item in _as_list(body.get("BatchItemResponse")):
        yield from in_container(item)
        query = item.get("QueryResponse")
        if isinstance(query, Mapping):
            yield from in_container(query)


# --- requests.Response from recordings -------------------------------------------


def build_response(
    status: int,
    body: bytes | str,
    headers: Mapping[str, str] | None = None,
    *,
    url: str = "https://sandbox-quickbooks.api.intuit.com/v3/company/1/query",
    method: str = "GET",
) -> requests.Response:
    """A real :class:`requests.Response`, as a transport would hand it to a classifier."""
    response = requests.Response()
    response.status_code = status
    response._content = body.encode("utf-8") if isinstance(body, str) else body
    response.headers.update(headers or {})
    response.url = url
    response.request = requests.Request(method.upper(), url).prepare()
    response.encoding = "utf-8"
    return response


def response_from_interaction(interaction: Mapping[str, Any]) -> requests.Response:
    """The recorded response of one VCR interaction (multi-valued headers joined)."""
    recorded = interaction["response"]
    headers = {
        name: ", ".join(str(v) for v in values) if isinstance(values, list) else str(values)
        for name, values in (recorded.get("headers") or {}).items()
    }
    request = interaction.get("request") or {}
    return build_response(
        int(recorded["status"]["code"]),
        _body_text(interaction),
        headers,
        url=str(request.get("uri") or "https://sandbox-quickbooks.api.intuit.com/v3"),
        method=str(request.get("method") or "GET"),
    )


# --- QuickBooks XML fixtures in the JSON shape -------------------------------------

QBO_LIST_ELEMENTS = frozenset({"Line", "LinkedTxn", "CustomField", "TaxLine", "NameValue"})
"""Elements that are arrays in QuickBooks JSON even when they occur once."""


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def qbo_xml_to_dict(node: Element) -> Any:
    """One QuickBooks XML element in the shape QuickBooks gives it in JSON.

    ``<CustomerRef name="Acme">3</CustomerRef>`` becomes
    ``{"value": "3", "name": "Acme"}``; leaves stay text (``"true"`` and
    ``"false"`` become booleans); repeated elements and those of
    :data:`QBO_LIST_ELEMENTS` become lists; attributes (``domain``,
    ``status``) become keys.
    """
    children = list(node)
    if not children:
        text = (node.text or "").strip()
        if node.attrib:
            return {"value": text, **node.attrib}
        if text in ("true", "false"):
            return text == "true"
        return text
    result: dict[str, Any] = dict(node.attrib)
    for child in children:
        name = _local(child.tag)
        value = qbo_xml_to_dict(child)
        if name in result or name in QBO_LIST_ELEMENTS:
            existing = result.get(name)
            if isinstance(existing, list):
                existing.append(value)
            elif name in result:
                result[name] = [existing, value]
            else:
                result[name] = [value]
        else:
            result[name] = value
    return result


def qbo_xml_entities(path: Path, names: Iterable[str]) -> list[tuple[str, dict[str, Any]]]:
    """Every entity element named in ``names`` in a QuickBooks XML file, JSON-shaped."""
    wanted = set(names)
    root = parse_xml(path).getroot()
    if root is None:
        raise ValueError(f"{path}: empty XML document")
    found: list[tuple[str, dict[str, Any]]] = []
    for node in root.iter():
        name = _local(node.tag)
        if name in wanted and len(node):
            value = qbo_xml_to_dict(node)
            if isinstance(value, dict):
                found.append((name, value))
    return found
