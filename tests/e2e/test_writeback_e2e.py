"""Write-back end to end, on QuickBooks and on Xero: what auto-pay collected lands in the books, exactly once.

Each test starts its own ledger sandbox (QuickBooks or Xero, by parameter) and its own localstripe, writes
the tenant's config with the connection's ``[writeback]`` accounts (:mod:`tests.writeback`), and drives the
real :class:`arsync.bootstrap.App` on the real clock: invoices are entered at the sandbox, synced, the
customer enrols a card through Checkout, auto-pay charges it, the payout is stored (localstripe makes none:
see :func:`tests.writeback.make_payout`), and write-back posts. The ``arsync`` commands (``reconcile run``,
``reconcile report`` in its three formats, ``charge plan``, ``charge batch``, ``status``) run in process
on the same config, as ``tests/e2e/test_cli.py`` runs them.

What is asserted is read back from the ledger sandbox itself (invoices, payments, purchases or spend money,
deposits or transfers, credit memos or credit notes), to the cent.
"""

from __future__ import annotations

import csv
import io
import json
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlmodel import col
from typer.testing import CliRunner

from arsync.cli import app
from collect.autopay import Selection
from sync.models import CreditNote, Invoice, JournalEntry, ProcessorRefund
from tests.writeback import (
    LEDGERS,
    TENANT,
    VISA,
    Posted,
    World,
    make_payout,
    make_refund_payout,
    settle_refunds,
    start_world,
)

D = Decimal
runner = CliRunner()


@dataclass(frozen=True)
class Run:
    code: int
    out: str
    err: str

    @property
    def text(self) -> str:
        return self.out + self.err


def arsync(world: World, *args: str) -> Run:
    result = runner.invoke(app, [*args, "--config", str(world.config)], env={"COLUMNS": "300"})
    return Run(result.exit_code, result.stdout, result.stderr)


@pytest.fixture(params=LEDGERS)
def world(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[World]:
    with ExitStack() as stack:
        yield start_world(request.param, tmp_path, stack)


def of_kind(posted: list[Posted], kind: str) -> list[Posted]:
    return [p for p in posted if p.kind == kind]


def key(world: World, kind: str, ident: str) -> str:
    return f"post:{TENANT}:{world.name}:{kind}:{ident}"


def plan_json(world: World, *args: str) -> dict[str, Any]:
    run = arsync(world, "charge", "plan", "--format", "json", *args)
    assert run.code == 0, run.text
    document: dict[str, Any] = json.loads(run.out)
    return document


def charged(document: dict[str, Any]) -> dict[str, str]:
    """Invoice -> amount charged, from ``charge plan --format json``."""
    return {row["invoice"]: row["charge"] for row in document["charges"]}


def ledger_invoice(world: World, external_id: str) -> Invoice:
    with world.sessions() as session:
        return session.execute(
            sa.select(Invoice).where(col(Invoice.connection_id) == world.name, col(Invoice.external_id) == external_id)
        ).scalar_one()


def only_payment_intent(world: World) -> str:
    [payment] = world.processor_payments()
    assert payment.processor_id is not None
    return payment.processor_id


# --- payments, fees and the payout ------------------------------------------------------------------------------


def test_collected_payments_fees_and_the_payout_are_booked_once_and_tie_out(world: World) -> None:
    books, today = world.books, world.today()
    customer = books.customer("Harbor Dental", "ap@harbordental.example.com")
    amounts = {books.invoice(customer, amount, today): D(amount) for amount in ("120.00", "75.50", "33.33")}
    world.sync()
    world.enrol(customer)
    collector = world.collector()

    charges = collector.run()

    assert charges.counts() == {"succeeded": 3}
    collector.follow()  # the charge events: each payment's charge id
    paid = {str(p.invoice_external_id): p for p in world.processor_payments()}
    assert {invoice: p.amount for invoice, p in paid.items()} == amounts
    assert {p.state for p in paid.values()} == {"succeeded"}
    payout = make_payout(world.sessions, TENANT, today)
    assert sorted(line.fee for line in payout.lines.values()) == [
        D("1.27"),
        D("2.49"),
        D("3.78"),
    ]  # 2.9% + 0.30 of 33.33, 75.50, 120.00
    assert payout.amount == D("228.83") - D("7.54") == D("221.29")

    first = world.reconciler().run()

    assert first.counts() == {"posted": 7}
    assert (first.derived.payments, first.derived.fees, first.derived.payouts) == (3, 3, 1)
    # The ledger, to the cent: each invoice paid by one payment into clearing, carrying its key.
    posted = books.posted()
    assert sorted(
        (p.invoice, p.amount, p.to_account, p.reference, p.day) for p in of_kind(posted, "payment")
    ) == sorted(
        (invoice, amounts[invoice], books.clearing, key(world, "payment", str(p.processor_id)), today)
        for invoice, p in paid.items()
    )
    assert all(books.paid_in_full(invoice) for invoice in amounts)
    assert {invoice: books.due(invoice) for invoice in amounts} == dict.fromkeys(amounts, D("0.00"))
    # One fee expense per charge, from clearing to the fee account, the exact fee.
    assert sorted(
        (p.amount, p.from_account, p.to_account, p.reference, p.day) for p in of_kind(posted, "fee")
    ) == sorted(
        (line.fee, books.clearing, books.fees, key(world, "fee", line.id), today) for line in payout.lines.values()
    )
    # One deposit equal to the payout, from clearing to the bank, the payout id in its memo / reference.
    [deposit] = of_kind(posted, "deposit")
    assert (deposit.amount, deposit.from_account, deposit.to_account, deposit.reference, deposit.day) == (
        payout.amount,
        books.clearing,
        books.bank,
        payout.payout_id,
        today,
    )
    assert books.balance(books.clearing) == 0  # 228.83 in, 7.54 in fees and 221.29 to the bank out
    assert books.balance(books.bank) == payout.amount
    assert len(posted) == 7

    # Run again: nothing derived, nothing sent.
    requests = books.requests()
    again = world.reconciler().run()
    assert (again.echoes, again.derived.total(), again.outcomes) == (0, 0, [])
    assert books.requests() == requests
    assert books.posted() == posted

    # The next sync reads the payments back: the sync itself recognises them as ours, counted once.
    world.sync()
    assert all(p.applied_in_ledger_at is not None for p in world.processor_payments())
    echoed = world.reconciler().run()
    assert (echoed.echoes, echoed.derived.total(), echoed.outcomes) == (0, 0, [])
    assert {ledger_invoice(world, invoice).balance for invoice in amounts} == {D("0.00")}
    report = world.reconciler().report()
    assert (report.problems(), report.parked, report.waiting) == (0, [], 0)
    [row] = report.payouts
    assert (row.payout_id, row.amount, row.payments, row.fees, row.deposited, row.problems) == (
        payout.payout_id,
        D("221.29"),
        D("228.83"),
        D("7.54"),
        D("221.29"),
        [],
    )
    assert row.deposits == [f"{world.name}: {deposit.ident}"]
    totals = report.totals()["USD"]
    assert totals["payments"] - totals["fees"] - totals["refunds"] - totals["chargebacks"] == totals["deposited"]
    assert totals["deposited"] == totals["amount"] == payout.amount

    as_json = arsync(world, "reconcile", "report", "--format", "json")
    assert as_json.code == 0, as_json.text
    document = json.loads(as_json.out)
    [line] = document["payouts"]
    assert {name: line[name] for name in ("payout", "amount", "payments", "fees", "deposited", "problems")} == {
        "payout": payout.payout_id,
        "amount": "221.29",
        "payments": "228.83",
        "fees": "7.54",
        "deposited": "221.29",
        "problems": [],
    }
    assert (document["parked"], document["waiting"]) == ([], 0)
    usd = {name: D(value) for name, value in document["totals"]["USD"].items()}
    assert usd["payments"] - usd["fees"] - usd["refunds"] - usd["chargebacks"] == usd["deposited"] == usd["amount"]
    as_csv = arsync(world, "reconcile", "report", "--format", "csv")
    assert as_csv.code == 0, as_csv.text
    header, *rows = list(csv.reader(io.StringIO(as_csv.out)))
    expected = {
        "payout": payout.payout_id,
        "arrival": today.isoformat(),
        "status": "paid",
        "currency": "USD",
        "amount": "221.29",
        "payments": "228.83",
        "fees": "7.54",
        "refunds": "0",
        "chargebacks": "0",
        "deposited": "221.29",
        "deposits": f"{world.name}: {deposit.ident}",
        "problems": "",
    }
    assert [{name: value for name, value in zip(header, r, strict=True) if name in expected} for r in rows] == [
        expected
    ]
    plan = plan_json(world)
    assert plan["charges"] == []
    assert set(amounts).isdisjoint(charged(plan))


def test_a_check_entered_in_the_ledger_lowers_what_auto_pay_charges(world: World) -> None:
    books, today = world.books, world.today()
    customer = books.customer("Baker Street Bakery", "accounts@bakery.example.com")
    full, part = books.invoice(customer, "80.00", today), books.invoice(customer, "64.10", today)
    world.sync()
    world.enrol(customer)
    assert charged(plan_json(world)) == {full: "80.00", part: "64.10"}

    books.check(customer, full, "80.00", today)  # the customer mailed checks after all
    books.check(customer, part, "30.00", today)
    world.sync()

    assert (ledger_invoice(world, full).balance, ledger_invoice(world, part).balance) == (D("0.00"), D("34.10"))
    assert charged(plan_json(world)) == {part: "34.10"}
    nothing = world.reconciler().run()  # a check is the ledger's own: nothing to write back
    assert (nothing.derived.total(), nothing.outcomes) == (0, [])
    assert books.posted() == []


# --- refusals: a closed period ----------------------------------------------------------------------------------


def test_payments_dated_in_a_closed_period_are_parked_reported_and_not_retried(world: World) -> None:
    books, today = world.books, world.today()
    customer = books.customer("Quayside Marine", "billing@quayside.example.com")
    invoices = [books.invoice(customer, amount, today) for amount in ("410.00", "19.99")]
    world.sync()
    world.enrol(customer)
    assert world.collector().run().counts() == {"succeeded": 2}
    keys = sorted(key(world, "payment", str(p.processor_id)) for p in world.processor_payments())
    books.close_books(today)  # the accountant closes the period through today
    message = books.lock_message(today)

    run = arsync(world, "reconcile", "run")

    assert run.code == 1, run.text
    assert "outcomes: {'parked': 2}" in run.out
    for parked in keys:
        assert f"{parked}: parked: " in run.err and message in run.err, run.err
    assert books.posted() == []
    assert [books.due(invoice) for invoice in invoices] == [D("410.00"), D("19.99")]

    report = arsync(world, "reconcile", "report")
    assert report.code == 1, report.text
    for parked in keys:
        [line] = [line for line in report.out.splitlines() if line.startswith(f"parked {parked}: ")]
        assert message in line, line
    assert "0 posting(s) waiting; 2 problem(s)" in report.out
    status = arsync(world, "status")
    assert status.code == 0, status.text
    assert "0 waiting, 2 parked: see `arsync reconcile report`" in status.out

    requests = books.requests()
    again = arsync(world, "reconcile", "run")  # a person must act: parked postings are not retried
    assert again.code == 0, again.text
    assert "outcomes: none" in again.out
    assert books.requests() == requests + 1  # the chart of accounts is read; nothing is posted
    with world.sessions() as session:
        entries = session.execute(sa.select(JournalEntry).where(col(JournalEntry.key).in_(keys))).scalars().all()
    assert sorted((e.key, e.status, e.attempts) for e in entries) == [(k, "failed", 1) for k in keys]
    assert all(message in (e.error or "") for e in entries)

    # The accountant reopens the period; the vendor releases the postings; each payment lands once.
    books.close_books(None)
    released = arsync(world, "reconcile", "release", "--all")
    assert released.code == 0 and "2 parked posting(s) released" in released.out, released.text
    posted = arsync(world, "reconcile", "run")
    assert posted.code == 0, posted.text
    assert Counter(p.reference for p in books.posted()) == Counter(keys)
    assert all(books.paid_in_full(invoice) for invoice in invoices)


# --- a partial payment; a credit applied first ------------------------------------------------------------------


def test_a_partial_batch_charge_leaves_the_exact_balance_in_the_ledger(world: World) -> None:
    books, today = world.books, world.today()
    customer = books.customer("Fernhill Nursery", "office@fernhill.example.com")
    invoice = books.invoice(customer, "200.00", today + timedelta(days=20))  # not due: the vendor asks
    world.sync()
    world.enrol(customer)

    batch = arsync(world, "charge", "batch", "--invoice", f"{world.name}:{invoice}", "--amount", "50.00")

    assert batch.code == 0, batch.text
    [payment] = world.processor_payments()
    assert (payment.invoice_external_id, payment.amount, payment.state) == (invoice, D("50.00"), "succeeded")
    assert world.reconciler().run().counts() == {"posted": 1}
    [posted] = books.posted()
    assert (posted.kind, posted.invoice, posted.amount, posted.to_account) == (
        "payment",
        invoice,
        D("50.00"),
        books.clearing,
    )
    assert books.due(invoice) == D("150.00") and not books.paid_in_full(invoice)

    world.sync()  # recognises the echo of the 50.00
    assert all(p.applied_in_ledger_at is not None for p in world.processor_payments())
    row = ledger_invoice(world, invoice)
    assert (row.balance, row.status) == (D("150.00"), "partially_paid")
    # The rest, charged now, is exactly what the ledger says is owed: the 50.00 is counted once.
    [rest] = (
        world.collector().plan(selection=Selection(invoices=frozenset({(world.name, invoice)}), reference="rest")).items
    )
    assert (rest.balance, rest.outstanding, rest.charge.amount) == (D("150.00"), D(0), D("150.00"))


def test_a_credit_note_applied_first_by_auto_pay_reaches_the_ledger(world: World) -> None:
    books, today = world.books, world.today()
    customer = books.customer("Larkspur Studio", "hello@larkspur.example.com")
    invoice = books.invoice(customer, "100.00", today)
    credit = books.credit_note(customer, "30.00", today - timedelta(days=5))
    world.sync()
    world.enrol(customer)
    collector = world.collector()
    [item] = collector.plan().items
    assert [(u.source, u.source_id, u.amount) for u in item.credits] == [("credit_note", credit, D("30.00"))]
    assert item.charge.amount == D("70.00")

    assert collector.run().counts() == {"succeeded": 1}
    result = world.reconciler().run()

    assert result.counts() == {"posted": 2}
    applied = f"apply_credit:{TENANT}:{world.name}:{invoice}:credit_note:{credit}:auto-{today.isoformat()}"
    assert sorted(k for k, _ in result.outcomes) == sorted([key(world, "payment", only_payment_intent(world)), applied])
    posted = books.posted()
    [payment] = of_kind(posted, "payment")
    [application] = of_kind(posted, "credit")
    assert (payment.invoice, payment.amount, payment.to_account) == (invoice, D("70.00"), books.clearing)
    assert (application.invoice, application.credit_note, application.amount, application.day) == (
        invoice,
        credit,
        D("30.00"),
        today,
    )
    if books.kind == "quickbooks":  # a zero Payment linking the invoice and the credit memo, carrying the key
        assert application.reference == applied
    assert books.due(invoice) == 0 and books.paid_in_full(invoice)
    assert books.credit_left(credit) == 0

    world.sync()
    assert all(p.applied_in_ledger_at is not None for p in world.processor_payments())
    assert ledger_invoice(world, invoice).balance == 0
    with world.sessions() as session:
        note = session.execute(sa.select(CreditNote).where(col(CreditNote.external_id) == credit)).scalar_one()
    assert note.remaining == 0
    plan = world.collector().plan()
    assert (plan.items, plan.examined) == ([], 0)


# --- bugs -------------------------------------------------------------------------------------------------------


def test_a_plan_right_after_the_sync_counts_a_posted_payment_once(world: World) -> None:
    books, today = world.books, world.today()
    customer = books.customer("Fernhill Nursery", "office@fernhill.example.com")
    invoice = books.invoice(customer, "200.00", today + timedelta(days=20))
    world.sync()
    world.enrol(customer)
    collector = world.collector()
    only = frozenset({(world.name, invoice)})
    assert collector.run(selection=Selection(invoices=only, amount=D("50.00"))).counts() == {"succeeded": 1}
    assert world.reconciler().run().counts() == {"posted": 1}
    assert books.due(invoice) == D("150.00")

    world.sync()  # the ledger's balance now includes the 50.00 (docs/collecting.md: no longer on its way)

    assert ledger_invoice(world, invoice).balance == D("150.00")
    [rest] = collector.plan(selection=Selection(invoices=only, reference="rest")).items
    assert (rest.outstanding, rest.charge.amount) == (D(0), D("150.00"))  # the plan says 50.00, 100.00


def test_write_back_accounts_are_checked_against_the_chart_of_accounts(world: World) -> None:
    assert world.reconciler().account_problems() == []
    ok = arsync(world, "config", "check", "--ledgers")
    assert ok.code == 0 and "write-back accounts: ok" in ok.out, ok.text
    text = world.config.read_text()
    wrong = text.replace(f'fee_account = "{world.books.fees}"', f'fee_account = "{world.books.clearing}"')
    missing = wrong.replace(f'bank_account = "{world.books.bank}"', 'bank_account = "999999"')
    world.config.write_text(missing)
    checked = arsync(world, "config", "check", "--ledgers")
    assert checked.code == 1, checked.text
    where = f"tenants.*.connections.{world.name}.writeback"
    assert f"{where}.bank_account: the ledger has no account '999999'" in checked.err
    assert f"{where}.fee_account: account '{world.books.clearing}'" in checked.err
    assert "is bank, write-back needs expense" in checked.err
    refused = arsync(world, "reconcile", "run")
    assert refused.code == 2 and "nothing was posted" in refused.err, refused.text


# --- refunds and a payout that debits the bank -------------------------------------------------------------------


def test_refunds_are_booked_and_a_payout_that_debits_the_bank_moves_it_back_to_clearing(world: World) -> None:
    books, today = world.books, world.today()
    customer = books.customer("Lighthouse Optics", "ap@lighthouse.example.com")
    kept, returned = books.invoice(customer, "120.00", today), books.invoice(customer, "80.00", today)
    world.sync()
    world.enrol(customer)
    collector = world.collector()
    assert collector.run().counts() == {"succeeded": 2}
    collector.follow()
    paid = {str(p.invoice_external_id): str(p.processor_id) for p in world.processor_payments()}
    first = make_payout(world.sessions, TENANT, today)
    assert world.reconciler().run().counts() == {"posted": 5}  # two payments, two fees, the deposit

    partial = collector.refund(paid[kept], D("30.00"))  # money back on one, all of the other
    whole = collector.refund(paid[returned], None)
    assert [type(o).__name__ for _, o in partial + whole] == ["Done", "Done"]
    assert set(settle_refunds(world.sessions, world.stripe, TENANT).values()) == {"succeeded"}
    with world.sessions() as session:
        refunds = {r.payment_processor_id: r for r in session.execute(sa.select(ProcessorRefund)).scalars()}
    assert {pi: (r.amount, r.status) for pi, r in refunds.items()} == {
        paid[kept]: (D("30.00"), "succeeded"),
        paid[returned]: (D("80.00"), "succeeded"),
    }
    debit = make_refund_payout(world.sessions, TENANT, today)
    assert debit.amount == D("-110.00")

    run = world.reconciler().run()

    assert (run.derived.refunds, run.derived.reversals, run.derived.payouts) == (1, 1, 1)
    assert run.counts() == {"posted": 3}, run.outcomes
    posted = books.posted()
    [refund] = of_kind(posted, "refund")
    refund_id = refunds[paid[kept]].refund_id
    assert (refund.amount, refund.from_account, refund.reference) == (
        D("30.00"),
        books.clearing,
        key(world, "refund", refund_id),
    )
    assert books.due(kept) == D("0.00")  # the partial refund leaves the invoice paid
    assert books.due(returned) == D("80.00")  # the full refund reverses its payment: owed again
    [back] = [p for p in of_kind(posted, "deposit") if p.reference == debit.payout_id]
    assert (back.amount, back.from_account, back.to_account) == (D("110.00"), books.bank, books.clearing)
    assert books.balance(books.clearing) == 0  # 110.00 back from the bank: 30.00 refunded, 80.00 reversed
    assert books.balance(books.bank) == first.amount - D("110.00")

    report = world.reconciler().report()
    assert (report.problems(), report.parked, report.waiting, report.other) == (0, [], 0, [])
    row = next(r for r in report.payouts if r.payout_id == debit.payout_id)
    assert (row.amount, row.refunds, row.deposited, row.problems) == (D("-110.00"), D("110.00"), D("-110.00"), [])
    totals = report.totals()["USD"]
    assert totals["payments"] - totals["fees"] - totals["refunds"] - totals["chargebacks"] == totals["deposited"]
    assert totals["deposited"] == totals["amount"] == first.amount - D("110.00")

    requests = books.requests()
    again = world.reconciler().run()
    assert (again.derived.total(), again.outcomes) == (0, [])
    assert books.requests() == requests and books.posted() == posted


# --- a link paid for more than is owed: unapplied credit ---------------------------------------------------------


def test_a_balance_link_paid_after_a_check_leaves_unapplied_credit_that_the_next_charge_counts_once(
    world: World,
) -> None:
    books, today = world.books, world.today()
    customer = books.customer("Osprey Surveys", "ap@osprey.example.com")
    first = books.invoice(customer, "70.00", today + timedelta(days=10), issued=today - timedelta(days=20))
    second = books.invoice(customer, "80.00", today + timedelta(days=10), issued=today - timedelta(days=10))
    world.sync()
    world.enrol(customer)
    collector = world.collector()
    link, amount, _ = collector.payment_link(None, customer)  # the whole balance: 150.00
    assert amount == D("150.00")
    books.check(customer, first, "70.00", today)  # a check for the first arrives, then the link is paid too
    world.sync()
    answer = world.stripe.complete_checkout(link.url, world.stripe.card(VISA))
    assert answer.status_code == 200, answer.text
    collector.follow()
    [paid] = [p for p in world.processor_payments() if p.invoice_external_id is None]
    assert (paid.amount, paid.state, paid.customer_external_id) == (D("150.00"), "succeeded", customer)

    run = world.reconciler().run()

    assert run.counts() == {"posted": 2}, run.outcomes  # the 80.00 share and the 70.00 left over
    posted = books.posted()
    [share] = of_kind(posted, "payment")
    [credit] = of_kind(posted, "unapplied")
    assert (share.invoice, share.amount, share.to_account) == (second, D("80.00"), books.clearing)
    assert (credit.amount, credit.to_account, credit.reference) == (
        D("70.00"),
        books.clearing,
        key(world, "overpayment", str(paid.processor_id)),
    )
    assert books.due(second) == 0 and books.balance(books.clearing) == D("150.00")
    again = world.reconciler().run()
    assert (again.derived.total(), again.outcomes) == (0, [])

    world.sync()  # the echo: the credit is the ledger's now, no longer the processor payment's
    [paid] = [p for p in world.processor_payments() if p.invoice_external_id is None]
    assert paid.applied_in_ledger_at is not None
    third = books.invoice(customer, "100.00", today)
    world.sync()
    [item] = collector.plan().items
    assert item.charge.invoice == third
    # 70.00 of credit, counted once: 30.00 to charge (counted twice, as the processor's and the ledger's, 0.00)
    assert [u.amount for u in item.credits] == [D("70.00")]
    assert [u.source for u in item.credits] == ["payment"]
    assert item.charge.amount == D("30.00")
    assert collector.run().counts() == {"succeeded": 1}
    [charge] = [p for p in world.processor_payments() if p.invoice_external_id == third]
    assert charge.amount == D("30.00")
    assert world.reconciler().run().counts() == {"posted": 2}  # the credit applied, and the 30.00 payment
    assert books.due(third) == 0 and books.paid_in_full(third)


# --- a surcharged payment refunded in full ------------------------------------------------------------------------


@pytest.fixture(params=LEDGERS)
def surcharged(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[World]:
    """The world with a card surcharge (2.9% + 0.30, capped at 3%) booked to an income account."""
    with ExitStack() as stack:
        yield start_world(request.param, tmp_path, stack, surcharge=True)


def test_a_surcharged_payment_refunded_in_full_takes_its_surcharge_out_of_the_books_too(surcharged: World) -> None:
    world = surcharged
    books, today = world.books, world.today()
    customer = books.customer("Kestrel Print", "ap@kestrel.example.com")
    invoice = books.invoice(customer, "100.00", today)
    world.sync()
    world.enrol(customer)
    collector = world.collector()
    assert collector.run().counts() == {"succeeded": 1}
    collector.follow()
    [paid] = world.processor_payments()
    assert (paid.amount, paid.surcharge) == (D("100.00"), D("3.00"))  # 2.9% + 0.30 = 3.20, capped at 3%
    first = make_payout(world.sessions, TENANT, today)
    assert world.reconciler().run().counts() == {"posted": 4}  # the payment, its surcharge, the fee, the deposit
    surcharges = [p for p in of_kind(books.posted(), "deposit") if p.to_account == books.clearing]
    assert [(p.amount, p.from_account) for p in surcharges] == [(D("3.00"), books.income)]

    whole = collector.refund(str(paid.processor_id), None)  # amount and surcharge: 103.00
    assert [type(o).__name__ for _, o in whole] == ["Done"]
    assert set(settle_refunds(world.sessions, world.stripe, TENANT).values()) == {"succeeded"}
    debit = make_refund_payout(world.sessions, TENANT, today)
    assert debit.amount == D("-103.00")

    run = world.reconciler().run()

    assert (run.derived.reversals, run.derived.refunds, run.derived.payouts) == (2, 0, 1)
    assert run.counts() == {"posted": 3}, run.outcomes
    posted = books.posted()
    assert [
        p for p in of_kind(posted, "deposit") if p.to_account == books.clearing and p.from_account == books.income
    ] == []
    assert books.due(invoice) == D("100.00")  # the payment undone: owed again until someone credits it
    assert of_kind(posted, "payment") == []
    assert books.balance(books.clearing) == 0  # 103.00 in, fee and payout out, 103.00 back, all undone
    assert books.balance(books.bank) == first.amount - D("103.00")
    report = world.reconciler().report()
    assert (report.problems(), report.other) == (0, [])
    again = world.reconciler().run()
    assert (again.derived.total(), again.outcomes) == (0, [])
