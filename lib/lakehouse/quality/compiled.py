"""A suite's rules compiled into Spark predicates: validate and route a batch in one pass over its rows.

GX stays the suite format, the results store and Data Docs; what changes is who evaluates the rules. Each
row-level expectation GX's column-map family defines the same way everywhere (not null, between, in set,
regex, unique, column pair) becomes a boolean Spark column that is true on a *failing* row, with GX's
semantics: nulls are not judged except by ``not_be_null``, ``mostly`` sets the share of non-null rows that
must pass, and a rule that fails routes its failing rows by its action. Table-level row counts and column
sets come from the batch's count and schema. One aggregate over the (materialised) batch counts every
rule's failures; the routing is then a projection the write itself evaluates — no join, no copy of the
batch to the driver. Expectations this module does not know (other aggregates, custom ones) are handed to
GX's own engine (:func:`lakehouse.quality.validate.check_batch`) on a suite of just those.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import reduce
from typing import Any, Final

import great_expectations as gx
from great_expectations.expectations.expectation import Expectation
from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from lakehouse.quality.results import ResultRow
from lakehouse.quality.suites import (
    ROW_ACTIONS,
    action_of,
    expectation_column,
    rule_name,
)

log = logging.getLogger(__name__)

ENGINE: Final = "compiled"
_Predicate = Callable[[dict[str, Any]], Column]


def _col(name: str) -> Column:
    return F.col(f"`{name}`")


def _not_null(kw: dict[str, Any]) -> Column:
    return _col(kw["column"]).isNull()


def _between(kw: dict[str, Any]) -> Column:
    column = _col(kw["column"])
    failing = F.lit(False)
    low, high = kw.get("min_value"), kw.get("max_value")
    if low is not None:
        failing = failing | (column <= F.lit(low) if kw.get("strict_min") else column < F.lit(low))
    if high is not None:
        failing = failing | (column >= F.lit(high) if kw.get("strict_max") else column > F.lit(high))
    return failing


def _in_set(kw: dict[str, Any]) -> Column:
    return ~_col(kw["column"]).isin(*kw["value_set"])


def _not_in_set(kw: dict[str, Any]) -> Column:
    return _col(kw["column"]).isin(*kw["value_set"])


def _regex(kw: dict[str, Any]) -> Column:
    return ~_col(kw["column"]).cast("string").rlike(kw["regex"])


def _not_regex(kw: dict[str, Any]) -> Column:
    return _col(kw["column"]).cast("string").rlike(kw["regex"])


def _unique(kw: dict[str, Any]) -> Column:
    column = _col(kw["column"])
    return F.count(F.lit(1)).over(Window.partitionBy(column)) > 1


def _compound_unique(kw: dict[str, Any]) -> Column:
    columns = [_col(c) for c in kw["column_list"]]
    return F.count(F.lit(1)).over(Window.partitionBy(*columns)) > 1


def _a_greater_than_b(kw: dict[str, Any]) -> Column:
    a, b = _col(kw["column_A"]), _col(kw["column_B"])
    return ~(a >= b) if kw.get("or_equal") else ~(a > b)


# expectation type -> (failing-row predicate, the rows it judges: None = all rows, else "non-null" columns)
_ROW_RULES: Final[dict[str, tuple[_Predicate, Callable[[dict[str, Any]], list[str]] | None]]] = {
    "expect_column_values_to_not_be_null": (_not_null, None),
    "expect_column_values_to_be_between": (_between, lambda kw: [kw["column"]]),
    "expect_column_values_to_be_in_set": (_in_set, lambda kw: [kw["column"]]),
    "expect_column_values_to_not_be_in_set": (_not_in_set, lambda kw: [kw["column"]]),
    "expect_column_values_to_match_regex": (_regex, lambda kw: [kw["column"]]),
    "expect_column_values_to_not_match_regex": (_not_regex, lambda kw: [kw["column"]]),
    "expect_column_values_to_be_unique": (_unique, lambda kw: [kw["column"]]),
    "expect_compound_columns_to_be_unique": (_compound_unique, lambda kw: list(kw["column_list"])),
    "expect_column_pair_values_a_to_be_greater_than_b": (
        _a_greater_than_b,
        lambda kw: [kw["column_A"], kw["column_B"]],
    ),
}
_WINDOWED: Final = frozenset({"expect_column_values_to_be_unique", "expect_compound_columns_to_be_unique"})
_TABLE_RULES: Final = frozenset({"expect_table_row_count_to_be_between", "expect_table_columns_to_match_set"})
# GX's defaults for which rows a multi-column rule skips: compound uniqueness skips rows whose every value
# is missing, the column pair skips rows where both are.
_SKIP_WHEN_ALL_MISSING: Final = frozenset(
    {"expect_compound_columns_to_be_unique", "expect_column_pair_values_a_to_be_greater_than_b"}
)


def compilable(expectation: Expectation) -> bool:
    """Whether this module evaluates the expectation (otherwise GX does)."""
    kind = expectation.expectation_type
    kwargs = expectation.configuration.kwargs
    if kind in _ROW_RULES:
        # Options that change GX's semantics beyond what is compiled here go to GX.
        unsupported = {"parse_strings_as_datetimes", "ignore_row_if", "allow_cross_type_comparisons"}
        return not (unsupported & set(kwargs))
    return kind in _TABLE_RULES


@dataclass(frozen=True, eq=False)
class CompiledRule:
    """One expectation as Spark columns: which rows fail it, which rows it judges."""

    expectation: Expectation
    rule: str
    action: str
    failing: Column | None  # None for table-level rules
    judged: Column
    by_rank: bool = False  # a uniqueness rule judged by a caller's rank over the same key (no window)

    @property
    def kind(self) -> str:
        return str(self.expectation.expectation_type)

    @property
    def kwargs(self) -> dict[str, Any]:
        return {k: v for k, v in self.expectation.configuration.kwargs.items() if k != "batch_id"}


@dataclass(frozen=True)
class KeyRank:
    """Rows already ranked within their key by the caller (``row_number`` over a window on ``key``).

    A uniqueness rule over exactly these columns is then judged by the rank: a row fails when another row of
    its key came before it (rank > 1). That is one flag per row, no second window over the batch. Unlike
    GX's window, the first row of a repeated key passes (GX fails every copy); where the caller keeps one row
    per key (the silver engine's dedupe), the two agree, and a row that slipped through is still caught.
    """

    key: tuple[str, ...]
    column: str

    def covers(self, kind: str, kwargs: dict[str, Any]) -> bool:
        if kind == "expect_column_values_to_be_unique":
            return (kwargs.get("column"),) == self.key
        if kind == "expect_compound_columns_to_be_unique":
            return sorted(kwargs.get("column_list") or []) == sorted(self.key)
        return False


def _compile(expectation: Expectation, ranked: KeyRank | None = None) -> CompiledRule:
    kind = expectation.expectation_type
    kwargs = dict(expectation.configuration.kwargs)
    rule, action = rule_name(expectation), action_of(expectation)
    if kind in _TABLE_RULES:
        return CompiledRule(expectation, rule, action, None, F.lit(True))
    predicate, judged_columns = _ROW_RULES[kind]
    rank = _col(ranked.column) if ranked is not None and ranked.covers(kind, kwargs) else None
    if judged_columns is None:
        judged = F.lit(True)
    elif kind in _SKIP_WHEN_ALL_MISSING:
        judged = reduce(lambda a, b: a | b, [_col(c).isNotNull() for c in judged_columns(kwargs)])
    else:
        judged = reduce(lambda a, b: a & b, [_col(c).isNotNull() for c in judged_columns(kwargs)])
    # A judged row fails when the predicate is true or cannot be evaluated (null); unjudged rows pass. By
    # rank, a row the caller left unranked (null: one it does not keep) is not judged a repeat.
    if rank is None:
        failing = judged & F.coalesce(predicate(kwargs), F.lit(True))
    else:
        failing = judged & F.coalesce(rank > 1, F.lit(False))
    return CompiledRule(expectation, rule, action, failing, judged, by_rank=rank is not None)


@dataclass
class CompiledSuite:
    """A suite split into the rules compiled here and the rest (left to GX)."""

    suite: gx.ExpectationSuite
    rules: list[CompiledRule]
    rest: list[Expectation]

    @classmethod
    def of(cls, suite: gx.ExpectationSuite, ranked: KeyRank | None = None) -> CompiledSuite:
        """Split and compile ``suite``; uniqueness over ``ranked``'s key is judged by its rank column."""
        rules = [_compile(e, ranked) for e in suite.expectations if compilable(e)]
        rest = [e for e in suite.expectations if not compilable(e)]
        return cls(suite=suite, rules=rules, rest=rest)

    @property
    def windowed(self) -> bool:
        """Whether a rule judges a row by the other rows (uniqueness: a window over the batch)."""
        return any(r.kind in _WINDOWED and not r.by_rank for r in self.rules)

    def rest_suite(self) -> gx.ExpectationSuite | None:
        """The expectations GX evaluates, as their own suite (None when every rule compiled)."""
        if not self.rest:
            return None
        return gx.ExpectationSuite(name=self.suite.name, expectations=[e.configuration for e in self.rest])


@dataclass
class RuleOutcome:
    """What one compiled rule found in a batch."""

    rule: CompiledRule
    element_count: int
    judged: int
    unexpected: int
    observed: Any = None

    @property
    def success(self) -> bool:
        kind, kwargs = self.rule.kind, self.rule.kwargs
        if kind == "expect_table_row_count_to_be_between":
            low, high = kwargs.get("min_value"), kwargs.get("max_value")
            return (low is None or self.element_count >= low) and (high is None or self.element_count <= high)
        if kind == "expect_table_columns_to_match_set":
            return not self.unexpected
        mostly = float(kwargs.get("mostly", 1.0))
        if self.judged == 0:
            return True
        return (self.judged - self.unexpected) / self.judged >= mostly

    @property
    def unexpected_percent(self) -> float:
        return 100.0 * self.unexpected / self.judged if self.judged else 0.0


ROUTE: Final = "_dq_route"
REASON: Final = "_dq_reason"
FAILED: Final = "_dq_failed_rules"


@dataclass
class Evaluation:
    """A batch judged by its compiled rules.

    Attributes:
        marked: the batch's columns plus ``_dq_route`` (null, ``quarantine`` or ``drop``; quarantine wins),
            ``_dq_reason`` (the first routing rule the row broke) and ``_dq_failed_rules`` (all of them).
            It is lazy: the write that consumes it evaluates the routing.
        outcomes: each rule's counts and success, in suite order.
        quarantined, dropped: how many rows the routing sends where.
        rows: how many rows the batch has (counted by the same aggregate).
        route, failed: the expressions behind ``_dq_route`` and ``_dq_failed_rules``, over the flagged
            rows (:attr:`Pending.flagged`), for a caller that projects them over the rows it did not judge
            too (wrapped in its own condition).
    """

    marked: DataFrame
    outcomes: list[RuleOutcome]
    quarantined: int
    dropped: int
    rows: int = 0
    route: Column | None = None
    failed: Column | None = None

    def failures(self) -> list[str]:
        """The failed ``fail`` rules, as ``rule (n rows)``."""
        return [
            f"{o.rule.rule} failed ({o.unexpected if o.rule.failing is not None else o.observed})"
            for o in self.outcomes
            if o.rule.action == "fail" and not o.success
        ]


def _any(columns: Sequence[Column]) -> Column:
    return reduce(lambda a, b: a | b, columns) if columns else F.lit(False)


@dataclass
class Pending:
    """A batch with its rules' failure flags, and the aggregate columns that count them.

    The counts can be computed by any aggregate over :attr:`flagged` (a caller may add its own columns to the
    same pass); :func:`conclude` turns that aggregate's row into the :class:`Evaluation`.
    """

    compiled: CompiledSuite
    frame: DataFrame
    flagged: DataFrame
    flags: dict[int, str]
    within: Column | None
    aggregates: list[Column]

    def rows(self) -> DataFrame:
        """The flagged rows the rules judge (those ``within``)."""
        return self.flagged if self.within is None else self.flagged.where(self.within)

    def materialised(self) -> Pending:
        """The same, with the flags computed once and kept (``localCheckpoint``): the aggregate and every
        write of the marked rows then read each row's flags instead of evaluating every rule again."""
        return dataclasses.replace(self, flagged=self.flagged.localCheckpoint(eager=True))


def _count(condition: Column, within: Column | None) -> Column:
    return F.count(F.when(condition if within is None else within & condition, 1))


def prepare(frame: DataFrame, compiled: CompiledSuite, within: Column | None = None) -> Pending:
    """Flag each row's failures and build the aggregate that counts them.

    Args:
        frame: the batch, materialised (a ``localCheckpoint``: it is read by the aggregate and again by
            whoever writes the marked rows), or lazy with :meth:`Pending.materialised` called on the result.
        compiled: the suite; rules over a window (uniqueness) need ``within`` to be None, since the window
            would count rows outside it.
        within: only rows where it holds are judged, counted and marked (the rest of ``frame`` is another
            outcome of the caller's, counted in the same aggregate).
    """
    if within is not None and compiled.windowed:
        raise ValueError(
            "a suite with uniqueness rules is evaluated on its own rows, not within a larger frame"
        )
    rules = compiled.rules
    flag = {id(r): f"_dq_f{i}" for i, r in enumerate(rules) if r.failing is not None}
    flagged = frame.select("*", *[r.failing.alias(flag[id(r)]) for r in rules if r.failing is not None])
    quarantine_all, drop_all = _routed(flag, rules)
    aggregates = [
        _count(F.lit(True), within).alias("_dq_rows"),
        _count(quarantine_all, within).alias("_dq_q"),
        _count(drop_all, within).alias("_dq_d"),
    ]
    for rule in rules:
        if rule.failing is not None:
            name = flag[id(rule)]
            aggregates += [
                _count(F.col(name), within).alias(f"{name}_u"),
                _count(rule.judged, within).alias(f"{name}_j"),
            ]
    return Pending(compiled, frame, flagged, flag, within, aggregates)


def _routed(flag: dict[int, str], active: Sequence[CompiledRule]) -> tuple[Column, Column]:
    """Whether a row goes to quarantine, and whether it is dropped, by the ``active`` routing rules."""
    routing = [r for r in active if id(r) in flag and r.action in ROW_ACTIONS]
    quarantine = _any([F.col(flag[id(r)]) for r in routing if r.action == "quarantine"])
    drop = _any([F.col(flag[id(r)]) for r in routing if r.action == "drop"])
    return quarantine, ~quarantine & drop


def conclude(pending: Pending, totals: Any, columns: Sequence[str] | None = None) -> Evaluation:
    """The evaluation, from the row of an aggregate that included ``pending.aggregates``.

    Args:
        columns: the table's columns, for column-set rules (default: the frame's; a batch may carry
            bookkeeping columns the table does not have).
    """
    flag, frame = pending.flags, pending.frame
    rows = int(totals["_dq_rows"])
    table_columns = set(columns if columns is not None else frame.columns)
    outcomes: list[RuleOutcome] = []
    for rule in pending.compiled.rules:
        if rule.kind == "expect_table_row_count_to_be_between":
            outcomes.append(RuleOutcome(rule, rows, rows, 0, observed=rows))
        elif rule.kind == "expect_table_columns_to_match_set":
            expected = set(rule.kwargs.get("column_set") or [])
            missing, extra = expected - table_columns, table_columns - expected
            bad = len(missing) + (len(extra) if rule.kwargs.get("exact_match", True) else 0)
            outcomes.append(RuleOutcome(rule, rows, rows, bad, observed=sorted(table_columns)))
        else:
            name = flag[id(rule)]
            outcomes.append(RuleOutcome(rule, rows, int(totals[f"{name}_j"]), int(totals[f"{name}_u"])))
    # A rule routes its rows only when it fails as a whole (``mostly`` may let some failing rows pass).
    routing = [o for o in outcomes if id(o.rule) in flag and o.rule.action in ROW_ACTIONS]
    active = [o.rule for o in routing if not o.success]
    quarantine, drop = _routed(flag, active)
    judged = pending.rows()
    if len(active) == len([o for o in routing if o.unexpected]):
        counts = (int(totals["_dq_q"]), int(totals["_dq_d"]))
    else:  # a passing rule with failing rows (mostly): count again with only the failed rules routing
        again = judged.agg(F.count(F.when(quarantine, 1)), F.count(F.when(drop, 1))).first()
        counts = (int(again[0]), int(again[1])) if again is not None else (0, 0)
    names = [F.when(F.col(flag[id(r)]), F.lit(r.rule)) for r in active]
    failed = F.filter(F.array(*names), lambda x: x.isNotNull()) if names else F.array().cast("array<string>")
    route = F.when(quarantine, F.lit("quarantine")).when(drop, F.lit("drop"))
    marked = judged.select(
        *[_col(c) for c in frame.columns],
        route.alias(ROUTE),
        failed.alias(FAILED),
    ).withColumn(REASON, F.try_element_at(F.col(FAILED), F.lit(1)))
    return Evaluation(
        marked=marked,
        outcomes=outcomes,
        quarantined=counts[0],
        dropped=counts[1],
        rows=rows,
        route=route,
        failed=failed,
    )


def evaluate(frame: DataFrame, compiled: CompiledSuite, columns: Sequence[str] | None = None) -> Evaluation:
    """Count every rule's failures in one aggregate and mark each row with its route.

    Args:
        frame: the batch, materialised (a ``localCheckpoint``): it is read by the aggregate and again by
            whoever writes the marked rows.
        compiled: the suite.
        columns: the table's columns, for column-set rules (default: the frame's).
    """
    pending = prepare(frame, compiled)
    totals = pending.flagged.agg(*pending.aggregates).first()
    if totals is None:  # an aggregate always has a row
        raise RuntimeError("the quality aggregate returned no row")
    return conclude(pending, totals, columns)


def result_rows(
    outcomes: Sequence[RuleOutcome],
    *,
    table: str,
    suite: str,
    run_id: str,
    batch_id: int,
    samples: dict[str, list[Any]] | None = None,
) -> list[ResultRow]:
    """The ``audit.validation_results`` rows of compiled outcomes (details hold kwargs and what was seen)."""
    now = datetime.now(UTC)
    rows = []
    for outcome in outcomes:
        rule = outcome.rule
        details: dict[str, Any] = {"kwargs": rule.kwargs}
        if rule.by_rank:
            details["judged_by"] = "rank within the key (rows after their key's first fail)"
        if outcome.observed is not None:
            details["observed_value"] = outcome.observed
        if samples and rule.rule in samples:
            details["partial_unexpected_list"] = samples[rule.rule]
        rows.append(
            ResultRow(
                run_id=run_id,
                batch_id=int(batch_id),
                table=table,
                suite=suite,
                expectation=rule.kind,
                rule=rule.rule,
                column=expectation_column(rule.expectation),
                action=rule.action,
                success=outcome.success,
                element_count=outcome.element_count,
                unexpected_count=outcome.unexpected,
                unexpected_percent=outcome.unexpected_percent,
                engine=ENGINE,
                validated_at=now,
                details=json.dumps(details, default=str),
            )
        )
    return rows


def validation_result(outcomes: Sequence[RuleOutcome], suite: gx.ExpectationSuite) -> Any:
    """The outcomes as a GX suite validation result, so Data Docs render compiled runs like GX's own."""
    from great_expectations.core import ExpectationValidationResult

    results = [
        ExpectationValidationResult(
            success=o.success,
            expectation_config=o.rule.expectation.configuration,
            result={
                "element_count": o.element_count,
                "unexpected_count": o.unexpected,
                "unexpected_percent": o.unexpected_percent,
                "missing_count": o.element_count - o.judged,
                **({"observed_value": o.observed} if o.observed is not None else {}),
            },
        )
        for o in outcomes
    ]
    return suite_result(results, suite.name)


def suite_result(results: Sequence[Any], suite_name: str) -> Any:
    """GX expectation results as one suite validation result, with its statistics (for Data Docs)."""
    from great_expectations.core import ExpectationSuiteValidationResult

    passed = sum(1 for r in results if r.success)
    return ExpectationSuiteValidationResult(
        success=passed == len(results),
        results=list(results),
        suite_name=suite_name,
        statistics={
            "evaluated_expectations": len(results),
            "successful_expectations": passed,
            "unsuccessful_expectations": len(results) - passed,
            "success_percent": 100.0 * passed / len(results) if results else 100.0,
        },
    )
