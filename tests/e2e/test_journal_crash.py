"""SIGKILL a worker at each dangerous line of an effect: the restart makes every effect exactly once.

The effect service here counts each key's effects and does NOT deduplicate
(like localstripe, it ignores Idempotency-Key), so only the journal's
look-up-before-retry can keep each effect single.
"""

from __future__ import annotations

import http.server
import json
import os
import signal
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import sessionmaker

from sync.db import make_engine, upgrade
from sync.models import JournalEntry, Tenant

pytestmark = pytest.mark.slow
EFFECTS = 12


class EffectService(http.server.ThreadingHTTPServer):
    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.made: Counter[str] = Counter()
        self.lock = threading.Lock()
        self.kill_pid: int | None = None
        self.kill_on_call: int | None = None
        self.kill_after_applying = False
        self.calls = 0


class _Handler(http.server.BaseHTTPRequestHandler):
    server: EffectService

    def log_message(self, *args: object) -> None:
        pass

    def _answer(self, status: int, body: dict[str, str]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        key = self.path.rsplit("/", 1)[-1]
        with self.server.lock:
            found = self.server.made[key] > 0
        self._answer(200 if found else 404, {"id": f"fx_{key}"} if found else {"error": "not found"})

    def do_POST(self) -> None:
        key = self.headers["Idempotency-Key"]
        with self.server.lock:
            self.server.calls += 1
            dying = self.server.calls == self.server.kill_on_call and self.server.kill_pid is not None
            if not (dying and not self.server.kill_after_applying):
                self.server.made[key] += 1
        if dying:
            assert self.server.kill_pid is not None
            os.kill(self.server.kill_pid, signal.SIGKILL)
            self.close_connection = True
            return
        self._answer(200, {"id": f"fx_{key}"})


@pytest.fixture
def service() -> Iterator[EffectService]:
    server = EffectService()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()


@pytest.mark.parametrize("after_applying", [False, True], ids=["killed-before-the-effect", "killed-after-the-effect"])
@pytest.mark.parametrize("on_call", [1, 5, 12])
def test_a_killed_worker_never_doubles_or_loses_an_effect(
    db_url: str, service: EffectService, after_applying: bool, on_call: int
) -> None:
    engine = make_engine(db_url)
    upgrade(engine)
    with sessionmaker(engine).begin() as session:
        session.add(Tenant(id="acme", display_name="Acme"))
    url = f"http://127.0.0.1:{service.server_address[1]}"
    args = [sys.executable, "-m", "tests.e2e.journal_worker", db_url, url, str(EFFECTS)]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}

    service.kill_on_call, service.kill_after_applying = on_call, after_applying
    proc = subprocess.Popen(args, env=env)
    service.kill_pid = proc.pid
    assert proc.wait(timeout=120) == -signal.SIGKILL
    assert sum(service.made.values()) == on_call - (0 if after_applying else 1)

    service.kill_on_call = None
    restarted = subprocess.run(args, env=env, timeout=120, capture_output=True, text=True)
    assert restarted.returncode == 0, restarted.stderr

    assert service.made == Counter({f"effect:acme:{n}": 1 for n in range(EFFECTS)})
    with engine.connect() as conn:
        statuses = Counter(conn.execute(sa.select(JournalEntry.status)).scalars())
    engine.dispose()
    assert statuses == Counter({"done": EFFECTS})
