"""The Xero connector's OAuth calls replayed against traffic Xero's SDK team recorded.

These cassettes are vcrpy's own format, read in place from the shared
reference data; requests are matched on method and path (Xero's identity host
answered ``/Connections`` then, ``/connections`` in its spec now).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import vcr

from connectors.base import OAuthTokens
from connectors.xero.client import XeroAuth, XeroSettings
from tests.refdata import require_refdata
from tests.support import FakeClock

CASSETTES = require_refdata("xero", "xero-python-cassettes")


def replay(name: str) -> Any:
    recorder = vcr.VCR(record_mode="none", match_on=["method", "host", "lower_path"])
    recorder.register_matcher("lower_path", lambda a, b: a.path.lower() == b.path.lower())
    return recorder.use_cassette(str(CASSETTES / name), allow_playback_repeats=False)


def auth(clock: FakeClock) -> XeroAuth:
    settings = XeroSettings(
        connection="rec",
        client_id="xero-client-id",
        client_secret="xero-client-secret",
        redirect_uri="https://example.test/cb",
        api_base="https://api.xero.com/api.xro/2.0",
        identity_base="https://api.xero.com",
        token_url="https://identity.xero.com/connect/token",
        authorize_url="https://login.xero.com/identity/connect/authorize",
        scopes=("offline_access", "accounting.transactions"),
    )
    return XeroAuth(settings, clock, clock.sleep)


def test_refresh_reads_the_recorded_token_answer(clock: FakeClock) -> None:
    stale = OAuthTokens("old-access", "test-refresh-token", clock() - timedelta(minutes=1), None, "tenant-1")
    with replay("test_token_api_refresh_token.yaml") as played:
        fresh = auth(clock).refresh(stale)
    assert played.play_count == 1
    assert (fresh.access_token, fresh.refresh_token) == ("xero-access-token", "xero-refresh-token")
    assert fresh.access_expires_at == clock() + timedelta(seconds=1800)
    assert fresh.account_id == "tenant-1"


def test_organisations_read_the_recorded_connections(clock: FakeClock) -> None:
    with replay("test_get_connections.yaml") as played:
        organisations = auth(clock).organisations("xero-access-token")
    assert played.play_count == 1
    assert [o.tenant_id for o in organisations] == ["a46fcb6f-2773-40c4-a119-8aa08bca1e8e"]
