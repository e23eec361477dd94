"""One tenant's dunning, wired: the plan, its journal, and the senders that carry it out.

The CLI and the daemon call this; it holds no state of its own beyond what
:class:`arsync.bootstrap.App` built.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date

from sqlalchemy.orm import Session, sessionmaker

from arsync.config import TenantConfig
from arsync.config_dunning import DunningConfig
from collect import collections as agency
from collect.collections import CollectionsSender
from collect.dunning import NOTIFY_KIND, WEBHOOK_KIND, DunningPlan, journal_dunning, plan_dunning
from collect.dunning_send import MessageSender, PayUrl
from collect.mail import SmtpSender, Templates
from collect.sms import SmsSender
from collect.webhooks import WebhookSender
from connectors.base import Clock
from sync import journal

WORKER_BATCH = 50


@dataclass
class DunningRun:
    plan: DunningPlan
    recorded: int
    outcomes: list[tuple[str, journal.Outcome]] = field(default_factory=list)

    def counts(self) -> Counter[str]:
        found: Counter[str] = Counter()
        for _, outcome in self.outcomes:
            if isinstance(outcome, journal.Done):
                found["skipped" if outcome.result and "skipped" in outcome.result else "sent"] += 1
            elif isinstance(outcome, journal.RetryAt):
                found["waiting"] += 1
            else:
                found["failed"] += 1
        return found


class Dunner:
    def __init__(
        self,
        sessions: sessionmaker[Session],
        tenant: TenantConfig,
        config: DunningConfig,
        clock: Clock,
        owner: str,
        *,
        mail: SmtpSender | None = None,
        sms: SmsSender | None = None,
        pay_url: PayUrl | None = None,
        stop: Callable[[], bool] = lambda: False,
    ) -> None:
        self.sessions = sessions
        self.tenant = tenant
        self.config = config
        self.clock = clock
        self.owner = owner
        self.stop = stop
        self.connections = [c.name for c in tenant.connections]
        if mail is None and config.mail is not None:
            mail = SmtpSender(config.mail.settings(), clock=clock)
        if sms is None and config.sms is not None:
            from collect.sms import TwilioSms

            sms = TwilioSms(
                config.sms.account_sid,
                config.sms.auth_token.reveal(),
                config.sms.from_number,
                base_url=config.sms.base_url,
                timeout=config.sms.timeout_seconds,
            )
        policy = config.policy
        templates = Templates(config.branding)
        self.messages = MessageSender(
            sessions,
            tenant.name,
            tenant.tzinfo,
            policy.window,
            policy.pacing,
            templates,
            clock,
            mail=mail,
            sms=sms,
            pay_url=pay_url,
            pdf_url=policy.pdf_url,
        )
        self.webhooks = WebhookSender(policy.suspension_webhook, clock=clock)
        self.collections = CollectionsSender(sessions, policy.collections, clock, mail=mail, templates=templates)

    def today(self) -> date:
        return self.clock().astimezone(self.tenant.tzinfo).date()

    def plan(self, day: date | None = None) -> DunningPlan:
        """What a run would do on ``day`` (today in the tenant's time zone). Changes nothing."""
        with self.sessions() as session:
            return self._plan(session, day)

    def run(self, day: date | None = None) -> DunningRun:
        """Plan, journal the plan (one transaction), then send what is due."""
        with self.sessions.begin() as session:
            agency.notice_recoveries(session, self.tenant.name, self.connections, self.clock())
        with self.sessions.begin() as session:
            plan = self._plan(session, day)
            recorded = journal_dunning(session, plan, self.clock(), self.config.policy.collections)
        return DunningRun(plan, recorded, self.send())

    def _plan(self, session: Session, day: date | None) -> DunningPlan:
        payments = self.tenant.payments
        return plan_dunning(
            session,
            self.tenant.name,
            self.connections,
            self.config.policy,
            day or self.today(),
            autopay=payments is not None and bool(payments.autopay.rules),
        )

    def send(self) -> list[tuple[str, journal.Outcome]]:
        """Carry out this tenant's due messages, webhooks and collections hand-offs, until none is left."""
        done: list[tuple[str, journal.Outcome]] = []
        with self.messages.session():
            for kind, handler in (
                (NOTIFY_KIND, self.messages.handle),
                (WEBHOOK_KIND, self.webhooks.handle),
                (agency.KIND, self.collections.handle),
            ):
                while True:
                    settled = journal.run_due(
                        self.sessions,
                        kind,
                        self.owner,
                        handler,
                        self.clock,
                        limit=WORKER_BATCH,
                        tenant=self.tenant.name,
                    )
                    done.extend(settled)
                    if len(settled) < WORKER_BATCH or self.stop():
                        break
        return done
