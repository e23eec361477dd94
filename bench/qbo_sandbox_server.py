"""A seeded QuickBooks sandbox in its own process, for the benchmarks.

Started by ``bench/backfill_qbo.py`` so that the sync process's memory and CPU
figures never include the sandbox. It seeds the company with
``connectors.quickbooks.seed.seed_bulk``, starts the HTTP server and prints one
JSON line describing itself (URLs, client credentials, seed timing). It then
answers commands read one per line from stdin, each with one JSON line:

* ``stats``: request counts, throttled answers, and the API calls (what each
  was for, in arrival order, and per entity) read from the sandbox's
  ``requests_log``;
* ``quit`` (or end of input): stop the server and exit.

Run by hand: ``python bench/qbo_sandbox_server.py --customers 200 --invoices 5000``.
"""

from __future__ import annotations

import argparse
import json
import re
import resource
import sys
import time
from collections import Counter
from datetime import date
from typing import Any
from urllib.parse import unquote_plus

from connectors.quickbooks.sandbox import QuickBooksSandbox
from connectors.quickbooks.seed import seed_bulk

_FROM = re.compile(r"\bFROM\s+(\w+)", re.IGNORECASE)
_SELECT_IDS = re.compile(r"^\s*SELECT\s+Id\s", re.IGNORECASE)


def classify(method: str, path: str, body: str) -> str | None:
    """What an API request was for: ``"<Entity>"``, ``"<Entity> ids"`` or ``"cdc"``; None if not an API call."""
    if not path.startswith("/v3/"):
        return None
    route = path.split("?", 1)[0]
    if route.endswith("/cdc"):
        return "cdc"
    # python-quickbooks POSTs the query as the body; a GET carries it as ?query=
    query = body if body.strip() else unquote_plus(path.partition("query=")[2])
    match = _FROM.search(query)
    if match is None:
        return f"{method} {route}"
    return f"{match.group(1)} ids" if _SELECT_IDS.match(query) else match.group(1)


def stats(sandbox: QuickBooksSandbox) -> dict[str, Any]:
    with sandbox._lock:  # the log is appended under this lock
        log = list(sandbox.requests_log)
        request_count, throttled = sandbox.request_count, sandbox.throttled_count
        errors = len(sandbox.server_errors)
    calls: list[str] = []
    oauth = 0
    for method, path, body in log:
        kind = classify(method, path, body)
        if kind is None:
            oauth += 1
        else:
            calls.append(kind)
    return {
        "api_calls": len(calls),
        "calls_by_entity": dict(Counter(calls)),
        "calls": calls,
        "other_requests": oauth,
        "request_count": request_count,
        "throttled": throttled,
        "server_errors": errors,
        "rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="A seeded QuickBooks sandbox for the benchmarks.")
    parser.add_argument("--customers", type=int, default=20_000)
    parser.add_argument("--invoices", type=int, default=100_000)
    parser.add_argument("--latency", type=float, default=0.15, help="seconds added to every API call")
    parser.add_argument("--no-limits", action="store_true", help="turn the realm's rate limits off")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)

    sandbox = QuickBooksSandbox(rate_limits=not args.no_limits, latency=args.latency)
    started = time.perf_counter()
    seeded = seed_bulk(sandbox, customers=args.customers, invoices=args.invoices, today=date.today(), seed=args.seed)
    seed_seconds = time.perf_counter() - started
    sandbox.start()
    hello = {
        "url": sandbox.url,
        "api_base": sandbox.api_base,
        "token_url": sandbox.token_url,
        "discovery_url": sandbox.discovery_url,
        "client_id": sandbox.client_id,
        "client_secret": sandbox.client_secret,
        "realm_id": sandbox.realm_id,
        "customers": seeded.customers,
        "invoices": seeded.invoices,
        "seed_seconds": round(seed_seconds, 3),
        "latency": sandbox.latency,
        "rate_limits": sandbox.rate_limits,
        "per_second": sandbox.per_second,
        "per_minute": sandbox.per_minute,
        "concurrent": sandbox.concurrent,
    }
    print(json.dumps(hello), flush=True)
    try:
        for line in sys.stdin:
            command = line.strip()
            if command == "stats":
                print(json.dumps(stats(sandbox)), flush=True)
            elif command == "quit":
                break
            elif command:
                print(json.dumps({"error": f"unknown command {command!r}"}), flush=True)
    finally:
        sandbox.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
