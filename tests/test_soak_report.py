"""The soak's report aggregator on synthetic observations: every defect it exists to
catch must fail a verdict, and a clean run must pass (no server, no processes)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from redis_cache import exceptions
from tests.support.soak import (
    OPERATIONS,
    Entry,
    Observation,
    SoakReport,
    Verdicts,
    soak_expected,
)

F = Entry("fcache", "soak_fkernel", 1)
FI = Entry("fcache", "soak_finsert", 10**8)
D = Entry("dcache", "soak_dkernel", 2)
DI = Entry("dcache", "soak_dinsert", 10**8 + 1)
NAMED = {"F": F, "FI": FI, "D": D, "DI": DI}


def clean_workers() -> list[SoakReport]:
    """Two workers whose every operation saw a correct, durable result."""
    workers = [SoakReport(), SoakReport()]
    for w in workers:
        w.observe("fcache.record", Observation(F, soak_expected(1), soak_expected(1)))
        w.observe("fcache.get", Observation(F, soak_expected(1), soak_expected(1)))
        w.observe("fcache.get", None)  # a miss
        w.observe("dcache.record", Observation(D, "2@7@1", durable=True))
        w.observe("dcache.get", Observation(D, "2@7@1", durable=True))
        w.observe("dcache.insert", None)  # the entry existed
        w.observe("fcache.insert", None)
        # dcache fails closed while the server is away: a SystemError is allowed.
        w.failed("dcache.record", exceptions.RemoteUnavailableError("away"))
    workers[0].observe("fcache.insert", Observation(FI, soak_expected(10**8), durable=True))
    workers[1].observe("dcache.insert", Observation(DI, "x@9@2", durable=True))
    workers[1].observe(
        "fcache.insert", Observation(FI, soak_expected(10**8), kept_local=True)
    )  # Redis away: the same value kept local
    return workers


def redis_holding(report: SoakReport) -> dict[Entry, str | None]:
    """What Redis would hold if every durable write survived."""
    return {e: next(iter(report.values[e])) for e in report.durable}


def judge(*workers: SoakReport, **held: str | None) -> Verdicts:
    report = SoakReport.merge(workers)
    redis = redis_holding(report)
    redis.update({NAMED[k]: v for k, v in held.items()})
    return report.verdicts(redis)


def test_a_clean_run_passes_and_reports_its_figures() -> None:
    verdicts = judge(*clean_workers())
    assert verdicts.failures() == []
    figures = verdicts.figures()
    assert figures["operations"] == 19
    assert figures["operations_by_kind"]["dcache.record"] == 4  # two raised
    assert figures["errors_surfaced"] == {"fcache": 0, "dcache": 2}
    assert figures["errors_by_type"]["dcache"] == {"RemoteUnavailableError": 2}
    assert figures["acknowledged_writes_checked"] == {
        "dcache_results": 1, "dcache_inserts": 1, "fcache_inserts": 1,
    }  # fmt: skip
    assert figures["fcache_inserts_kept_local_while_redis_was_away"] == 1
    assert figures["entries_lost"] == {
        "dcache_results": 0, "dcache_inserts_acknowledged": 0,
        "fcache_inserts_acknowledged_by_redis": 0,
    }  # fmt: skip


def divergent(workers: list[SoakReport]) -> None:
    workers[1].observe("dcache.record", Observation(D, "2@8@5", durable=True))


def wrong_fcache_value(workers: list[SoakReport]) -> None:
    workers[0].observe("fcache.get", Observation(F, list(soak_expected(1)), soak_expected(1)))


def fcache_raised(workers: list[SoakReport]) -> None:
    workers[0].failed("fcache.get", exceptions.RemoteError("fcache fails open", transient=True))


def dcache_raised_a_user_error(workers: list[SoakReport]) -> None:
    workers[1].failed("dcache.get", exceptions.ValueDecodingError("not a SystemError"))


def an_operation_never_ran(workers: list[SoakReport]) -> None:
    for w in workers:
        del w.ops["dcache.get"]


def no_fcache_insert_reached_redis(workers: list[SoakReport]) -> None:
    workers[0].durable.discard(FI)


DIVERGED = "entries that gave callers more than one value"


@pytest.mark.parametrize(
    ("defect", "verdicts"),
    [
        (divergent, {DIVERGED}),
        (wrong_fcache_value, {"calls given a wrong value", DIVERGED}),  # beside the right one
        (fcache_raised, {"fail-open interfaces surfaced exceptions"}),
        (dcache_raised_a_user_error, {"exceptions that are not redis_cache.SystemError"}),
        (an_operation_never_ran, {"operations that never ran"}),
        (no_fcache_insert_reached_redis, {"functions with no durable entry to check"}),
    ],
)
def test_each_defect_fails_its_verdicts(
    defect: Callable[[list[SoakReport]], None], verdicts: set[str]
) -> None:
    workers = clean_workers()
    defect(workers)
    failures = judge(*workers).failures()
    failed = {line.split(" (")[0].split(":")[0] for line in failures}
    assert failed == {*verdicts, "first message of each exception type"}, failures


@pytest.mark.parametrize("name", ["D", "DI", "FI"])
def test_a_lost_durable_entry_fails(name: str) -> None:
    verdicts = judge(*clean_workers(), **{name: None})
    assert list(verdicts.lost) == [NAMED[name]]
    assert [line for line in verdicts.failures() if line.startswith("durable entries lost")]
    key = {"D": "dcache_results", "DI": "dcache_inserts_acknowledged",
           "FI": "fcache_inserts_acknowledged_by_redis"}[name]  # fmt: skip
    assert verdicts.figures()["entries_lost"][key] == 1


def test_redis_holding_another_value_fails() -> None:
    verdicts = judge(*clean_workers(), D=repr("2@9@9"))
    assert verdicts.mismatched == {D: ([repr("2@7@1")], repr("2@9@9"))}
    assert verdicts.failures()
    assert verdicts.figures()["entries_lost"]["dcache_results"] == 1


def test_a_wrong_type_is_a_wrong_value() -> None:
    """A list where the pure function returns a tuple: ``repr`` keeps them apart."""
    workers = clean_workers()
    wrong_fcache_value(workers)
    verdicts = judge(*workers)
    assert verdicts.wrong == {F: {repr(list(soak_expected(1))): 1}}
    assert verdicts.figures()["fcache_wrong_values"] == 1


def test_every_operation_of_the_table_is_judged() -> None:
    """The coverage verdict names each operation: a new one cannot go unexercised."""
    report = SoakReport()
    failures = report.verdicts({}).failures()
    assert all(op.name in "".join(failures) for op in OPERATIONS), failures
    assert sum(op.weight for op in OPERATIONS) == pytest.approx(1.0)
