"""A dunning sender for the crash tests: sends the journaled messages through an SMTP server.

``python -m tests.e2e.dunning_worker DB_URL SMTP_PORT``
"""

from __future__ import annotations

import sys
import zoneinfo
from datetime import UTC, datetime, time, timedelta

from sqlalchemy.orm import sessionmaker

from collect.dunning import NOTIFY_KIND
from collect.dunning_send import MessageSender
from collect.mail import Branding, MailSettings, SmtpSender, Templates
from collect.send_window import Pacing, SendWindow
from sync import journal
from sync.db import make_engine

TENANT = "acme"


def main(db_url: str, port: int) -> None:
    engine = make_engine(db_url)
    sessions = sessionmaker(engine, expire_on_commit=False)

    def now() -> datetime:
        return datetime.now(UTC)

    settings = MailSettings(host="127.0.0.1", port=port, security="none", sender="Acme <ar@acme.example>")
    sender = MessageSender(
        sessions,
        TENANT,
        zoneinfo.ZoneInfo("UTC"),
        SendWindow(start=time(0), end=time(23, 59, 59), business_days_only=False),
        Pacing(min_gap=timedelta(0)),
        Templates(Branding(company_name="Acme Ltd")),
        now,
        mail=SmtpSender(settings, clock=now),
    )
    while journal.run_due(
        sessions, NOTIFY_KIND, "dunning-worker", sender.handle, now, lease=timedelta(0), tenant=TENANT
    ):
        pass
    engine.dispose()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
