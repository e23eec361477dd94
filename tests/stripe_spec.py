"""Stripe's OpenAPI spec (``../shared/refdata/stripe/spec3.yaml``) as a check on requests we send.

:func:`parameter_problems` checks a request's parameters (query for ``GET``, form body for
``POST``, flattened the way the SDK sends them: ``metadata[arsync_key]``,
``line_items[0][price_data][unit_amount]``, ``expand[0]``) against the operation's schema:
every name must be one the spec knows at that depth, and a value given for a field with an
``enum`` must be one of its values. It checks names and enums only, not types or required
fields: cheap, and enough to catch a parameter Stripe does not have.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from functools import cache
from typing import Any

import yaml

from tests.refdata import require_refdata

__all__ = ["load_spec", "operation", "parameter_problems", "split_name"]


@cache
def load_spec() -> dict[str, Any]:
    """The spec, parsed once per test session (skips the caller's module when refdata is absent)."""
    path = require_refdata("stripe", "spec3.yaml")
    with path.open(encoding="utf-8") as handle:
        spec = yaml.load(handle, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    assert isinstance(spec, dict)
    return spec


def operation(spec: Mapping[str, Any], method: str, path: str) -> Mapping[str, Any]:
    """The operation for a concrete ``path`` (``/v1/checkout/sessions/cs_1``), templates matched by segment."""
    paths: Mapping[str, Any] = spec["paths"]
    if path in paths and method.lower() in paths[path]:
        return paths[path][method.lower()]  # type: ignore[no-any-return]
    for template, operations in paths.items():
        pattern = "^" + re.sub(r"\\{[^/]+\\}", "[^/]+", re.escape(template)) + "$"
        if re.match(pattern, path) and method.lower() in operations:
            return operations[method.lower()]  # type: ignore[no-any-return]
    raise AssertionError(f"{method.upper()} {path} is not in Stripe's spec")


def split_name(name: str) -> list[str]:
    """``a[b][0][c]`` -> ``["a", "b", "0", "c"]``."""
    head, _, rest = name.partition("[")
    return [head, *re.findall(r"([^\[\]]*)\]", "[" + rest)] if rest else [head]


def _resolve(spec: Mapping[str, Any], schema: Mapping[str, Any]) -> Mapping[str, Any]:
    while "$ref" in schema:
        node: Any = spec
        for part in schema["$ref"].lstrip("#/").split("/"):
            node = node[part]
        schema = node
    return schema


def _alternatives(spec: Mapping[str, Any], schema: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    schema = _resolve(spec, schema)
    found: list[Mapping[str, Any]] = []
    for key in ("anyOf", "oneOf", "allOf"):
        for option in schema.get(key, ()):
            found.extend(_alternatives(spec, option))
    return found or [schema]


def _children(spec: Mapping[str, Any], schema: Mapping[str, Any], part: str) -> list[Mapping[str, Any]]:
    children: list[Mapping[str, Any]] = []
    for option in _alternatives(spec, schema):
        properties = option.get("properties") or {}
        if part in properties:
            children.append(properties[part])
        elif option.get("type") == "array" and part.isdigit() and "items" in option:
            children.append(option["items"])
        elif isinstance(option.get("additionalProperties"), Mapping):
            children.append(option["additionalProperties"])
        elif option.get("additionalProperties") is True:
            children.append({})
    return children


def _enum_allows(spec: Mapping[str, Any], schemas: Iterable[Mapping[str, Any]], value: str) -> bool:
    options = [option for schema in schemas for option in _alternatives(spec, schema)]
    if any("enum" not in option for option in options):
        return True
    return any(
        value in [str(v).lower() if isinstance(v, bool) else str(v) for v in option["enum"]] for option in options
    )


def parameter_problems(
    spec: Mapping[str, Any], method: str, path: str, parameters: Iterable[tuple[str, str | None]]
) -> list[str]:
    """What in ``parameters`` (flattened names, values or ``None``) Stripe's spec does not have for the call."""
    op = operation(spec, method, path)
    top: dict[str, Mapping[str, Any]] = {}
    for parameter in op.get("parameters", ()):
        if parameter.get("in") == "query":
            top[parameter["name"]] = parameter.get("schema", {})
    body = op.get("requestBody", {}).get("content", {}).get("application/x-www-form-urlencoded", {})
    top.update(_resolve(spec, body.get("schema", {})).get("properties", {}))
    problems: list[str] = []
    for name, value in parameters:
        head, *rest = split_name(name)
        if head not in top:
            problems.append(f"{method.upper()} {path}: no parameter {head!r} ({name})")
            continue
        schemas = [top[head]]
        for part in rest:
            schemas = [child for schema in schemas for child in _children(spec, schema, part)]
            if not schemas:
                problems.append(f"{method.upper()} {path}: {name!r} is not in the schema of {head!r}")
                break
        else:
            if value is not None and not _enum_allows(spec, schemas, value):
                problems.append(f"{method.upper()} {path}: {name}={value!r} is not one of the spec's values")
    return problems
