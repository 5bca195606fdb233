"""Quality suites: loading and checking suite files, and routing rows by each rule's action."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest

from lakehouse.config import Settings
from lakehouse.errors import ConfigError, DataError
from lakehouse.quality import (
    QualityError,
    build_data_docs,
    check_batch,
    list_suites,
    load_suite,
    results_for_run,
    rule_name,
)
from lakehouse.quality.results import results_path
from lakehouse.quality.suites import action_of, parse_suite

pytestmark = pytest.mark.unit

DAG_TABLES = [
    *(
        f"bronze.{n}"
        for n in (
            "clickstream",
            "fx_rates",
            "iot_telemetry",
            "retail_cdc",
            "retail_customers",
            "retail_orders",
            "retail_order_items",
            "retail_products",
        )
    ),
    *(
        f"silver.{n}"
        for n in (
            "events",
            "events_quarantine",
            "telemetry",
            "telemetry_quarantine",
            "fx_rates",
            "fx_rates_quarantine",
            "retail_customers",
            "retail_orders",
            "retail_order_items",
            "retail_products",
            "retail_customers_quarantine",
            "retail_orders_quarantine",
            "retail_order_items_quarantine",
            "retail_products_quarantine",
            "dim_customer",
            "dim_customer_quarantine",
        )
    ),
    *(
        f"gold.{n}"
        for n in (
            "sessions",
            "daily_kpis",
            "funnel",
            "revenue_daily",
            "rt_events_per_minute",
            "rt_sessions_per_minute",
            "rt_device_minute",
            "device_offline",
            "user_history",
            "customer_orders",
            "predictions",
        )
    ),
    "audit.model_promotions",
    "audit.model_monitoring",
]


def _expectation(type_: str, action: str | None, **kwargs: Any) -> dict[str, Any]:
    meta = {} if action is None else {"action": action}
    return {"type": type_, "kwargs": kwargs, "meta": meta}


def test_every_dag_table_has_a_valid_suite(settings: Settings) -> None:
    assert set(DAG_TABLES) <= set(list_suites(settings))
    for table in DAG_TABLES:
        suite = load_suite(settings, table)
        assert suite.name == table and suite.expectations, table


def test_bronze_and_gold_suites_only_warn_or_fail(settings: Settings) -> None:
    for table in list_suites(settings):
        if table.startswith(("bronze.", "gold.")):
            actions = {action_of(e) for e in load_suite(settings, table).expectations}
            assert actions <= {"warn", "fail"}, table


def test_silver_events_suite_uses_row_actions(settings: Settings) -> None:
    suite = load_suite(settings, "silver.events")
    actions = {rule_name(e): action_of(e) for e in suite.expectations}
    assert actions["currency_iso4217"] == "quarantine"
    assert actions["not_internal_test_traffic"] == "drop"
    assert actions["schema_version_supported"] == "fail"


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        (_expectation("expect_column_values_to_not_be_null", None, column="a"), "meta.action must be one of"),
        (_expectation("expect_column_values_to_not_be_null", "explode", column="a"), "got 'explode'"),
        (_expectation("expect_table_row_count_to_be_between", "quarantine", min_value=1), "row-level"),
        (_expectation("expect_column_mean_to_be_between", "drop", column="a", min_value=0), "row-level"),
        (_expectation("expect_no_such_thing", "warn", column="a"), "not a valid expectation"),
    ],
)
def test_a_bad_suite_is_a_config_error_naming_file_and_expectation(
    entry: dict[str, Any], message: str, tmp_path: Path
) -> None:
    good = _expectation("expect_column_values_to_not_be_null", "warn", column="b")
    with pytest.raises(ConfigError, match=message) as raised:
        parse_suite({"name": "silver.x", "expectations": [good, entry]}, "quality/suites/silver/x.json")
    assert "quality/suites/silver/x.json: expectation #1" in str(raised.value)


def test_duplicate_rule_names_and_missing_suites_are_config_errors(settings: Settings) -> None:
    entry = _expectation("expect_column_values_to_not_be_null", "warn", column="a")
    with pytest.raises(ConfigError, match="used twice"):
        parse_suite({"expectations": [entry, entry]}, "x.json")
    with pytest.raises(ConfigError, match=r"no expectation suite for silver\.nothing_here"):
        load_suite(settings, "silver.nothing_here")
    with pytest.raises(ConfigError, match="layer"):
        load_suite(settings, "events")


def test_bad_json_in_a_suite_file_names_the_file(settings: Settings, tmp_path: Path) -> None:
    folder = tmp_path / "quality" / "suites" / "silver"
    folder.mkdir(parents=True)
    (folder / "broken.json").write_text("{ not json")
    moved = settings.model_copy(update={"root": tmp_path})
    with pytest.raises(ConfigError, match=r"broken\.json: not valid JSON"):
        load_suite(moved, "silver.broken")


# --- routing on a small Spark frame (the unit tier's classic local Spark session) -------------------------

_SUITE = parse_suite(
    {
        "name": "silver.crafted",
        "expectations": [
            {
                **_expectation("expect_column_values_to_not_be_null", "quarantine", column="id"),
                "meta": {"action": "quarantine", "rule": "id_present"},
            },
            {
                **_expectation("expect_column_values_to_be_between", "drop", column="amount", min_value=0),
                "meta": {"action": "drop", "rule": "amount_non_negative"},
            },
            {
                **_expectation(
                    "expect_column_values_to_match_regex", "warn", column="cc", regex="^[A-Z]{2}$"
                ),
                "meta": {"action": "warn", "rule": "cc_format"},
            },
            {
                **_expectation(
                    "expect_column_values_to_be_in_set", "fail", column="kind", value_set=["a", "b"]
                ),
                "meta": {"action": "fail", "rule": "kind_known"},
            },
        ],
    },
    "crafted",
)
_ROWS = [
    ("1", 5.0, "DE", "a"),
    (None, 1.0, "FR", "a"),  # quarantine
    ("3", -2.0, "DE", "b"),  # drop
    (None, -1.0, "DE", "a"),  # quarantine wins over drop; both rules recorded
    ("5", 2.0, "germany", "b"),  # warn only: kept
]
_SCHEMA = "id string, amount double, cc string, kind string"


def _check(spark: Any, settings: Settings, rows: list[tuple[Any, ...]], engine: str) -> Any:
    frame = spark.createDataFrame(rows, _SCHEMA)
    return check_batch(
        frame,
        "silver.crafted",
        settings=settings,
        run_id=str(uuid.uuid4()),
        batch_id=7,
        suite=_SUITE,
        engine=engine,
        persist=False,
    )


@pytest.mark.parametrize("engine", ["compiled", "pandas", "spark"])
def test_each_action_routes_rows(spark: Any, settings: Settings, engine: str) -> None:
    checked = _check(spark, settings, _ROWS, engine)
    assert checked.engine == engine
    assert sorted(r["id"] for r in checked.valid.collect()) == ["1", "5"]
    assert checked.valid.columns == ["id", "amount", "cc", "kind"]
    assert checked.dropped == 1 and checked.quarantined_count == 2
    quarantined = sorted((r["amount"], r["reason"], r["failed_rules"]) for r in checked.quarantined.collect())
    assert quarantined == [
        (-1.0, "id_present", ["id_present", "amount_non_negative"]),
        (1.0, "id_present", ["id_present"]),
    ]
    by_rule = {r.rule: r for r in checked.results}
    assert not by_rule["cc_format"].success and by_rule["cc_format"].unexpected_count == 1
    assert by_rule["kind_known"].success and by_rule["kind_known"].action == "fail"
    assert by_rule["amount_non_negative"].unexpected_count == 2
    assert {r.batch_id for r in checked.results} == {7}


def test_compiled_pandas_and_spark_engines_route_the_same_rows(spark: Any, settings: Settings) -> None:
    outcomes = []
    for engine in ("compiled", "pandas", "spark"):
        checked = _check(spark, settings, _ROWS, engine)
        outcomes.append(
            (
                sorted(r["id"] for r in checked.valid.collect()),
                sorted((r["amount"], r["failed_rules"]) for r in checked.quarantined.collect()),
                checked.dropped,
                sorted((r.rule, r.success, r.unexpected_count) for r in checked.results),
            )
        )
    assert outcomes[0] == outcomes[1] == outcomes[2]


def _suite_with(*extra: dict[str, Any]) -> Any:
    return parse_suite(
        {"name": "silver.crafted", "expectations": [*_SUITE.to_json_dict()["expectations"], *extra]},
        "crafted",
    )


def test_rules_the_compiler_does_not_know_run_on_gx_beside_the_compiled_ones(
    spark: Any, settings: Settings, tmp_path: Path
) -> None:
    private = settings.model_copy(update={"workspace": tmp_path / "ws"})
    mean = {
        **_expectation("expect_column_mean_to_be_between", "warn", column="amount", max_value=0),
        "meta": {"action": "warn", "rule": "mean_amount"},
    }
    run_id = str(uuid.uuid4())
    checked = check_batch(
        spark.createDataFrame(_ROWS, _SCHEMA),
        "silver.crafted",
        settings=private,
        run_id=run_id,
        batch_id=3,
        suite=_suite_with(mean),
    )
    assert checked.engine == "compiled"
    assert sorted(r["id"] for r in checked.valid.collect()) == ["1", "5"]
    assert checked.dropped == 1 and checked.quarantined_count == 2
    by_rule = {r.rule: r for r in checked.results}
    assert list(by_rule) == ["id_present", "amount_non_negative", "cc_format", "kind_known", "mean_amount"]
    assert by_rule["mean_amount"].engine == "pandas" and not by_rule["mean_amount"].success
    assert by_rule["id_present"].engine == "compiled" and by_rule["id_present"].unexpected_count == 2
    stored = results_for_run(private, run_id)
    assert sorted(stored["rule"]) == sorted(by_rule)
    (saved,) = (private.workspace / "quality" / "validations" / "silver.crafted").glob(f"{run_id}__3.json")
    document = json.loads(saved.read_text())
    assert len(document["results"]) == 5 and document["statistics"]["unsuccessful_expectations"] == 4


def test_an_uncompiled_rule_that_routes_rows_runs_the_suite_on_gx(spark: Any, settings: Settings) -> None:
    lengths = {
        **_expectation("expect_column_value_lengths_to_be_between", "quarantine", column="cc", max_value=2),
        "meta": {"action": "quarantine", "rule": "cc_short"},
    }
    suite = _suite_with(lengths)
    frame = spark.createDataFrame(_ROWS, _SCHEMA)
    common = {"settings": settings, "run_id": "r", "batch_id": 0, "suite": suite, "persist": False}
    checked = check_batch(frame, "silver.crafted", **common)
    assert checked.engine == "pandas" and checked.quarantined_count == 3  # "germany" is too long
    with pytest.raises(DataError, match="cc_short"):
        check_batch(frame, "silver.crafted", engine="compiled", **common)


def test_a_suite_counted_within_a_larger_aggregate_judges_only_those_rows(spark: Any) -> None:
    """The silver engine counts the suite in the batch's own aggregate, over rows it does not insert too."""
    from pyspark.sql import functions as F

    from lakehouse.quality import compiled as cq

    suite = _suite_with(  # a rule passing by ``mostly`` with failing rows takes the recount branch
        {
            **_expectation("expect_column_values_to_not_be_null", "drop", column="cc", mostly=0.5),
            "meta": {"action": "drop", "rule": "cc_mostly_present"},
        }
    )
    compiled = cq.CompiledSuite.of(suite)
    inside = [(*row, True) for row in [*_ROWS, ("6", 3.0, None, "a")]]
    outside = [(None, -9.0, None, "zzz", False)] * 3  # would fail every rule, were it judged
    frame = spark.createDataFrame([*inside, *outside], _SCHEMA + ", keep boolean")
    alone = cq.evaluate(frame.where("keep"), compiled)
    pending = cq.prepare(frame, compiled, within=F.col("keep"))
    fused = cq.conclude(
        pending, pending.flagged.agg(F.count(F.lit(1)).alias("all"), *pending.aggregates).first()
    )

    def seen(e: cq.Evaluation) -> tuple[Any, ...]:
        marked = sorted((r["id"] or "", r[cq.ROUTE] or "", tuple(r[cq.FAILED])) for r in e.marked.collect())
        return (
            e.rows,
            e.quarantined,
            e.dropped,
            [(o.rule.rule, o.judged, o.unexpected) for o in e.outcomes],
            marked,
        )

    assert seen(fused) == seen(alone)
    assert fused.rows == len(inside) and fused.quarantined == 2 and fused.dropped == 1
    unique = cq.CompiledSuite.of(
        _suite_with({**_expectation("expect_column_values_to_be_unique", "warn", column="id")})
    )
    assert unique.windowed and not compiled.windowed
    with pytest.raises(ValueError, match="uniqueness"):
        cq.prepare(frame, unique, within=F.col("keep"))


def test_uniqueness_over_a_ranked_key_is_judged_by_the_rank_without_a_window(spark: Any) -> None:
    """The silver engine ranks each key's rows for its dedupe; a uniqueness rule on that key reuses it."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    from lakehouse.quality import compiled as cq

    rule = _expectation("expect_column_values_to_be_unique", "quarantine", column="id")
    unique = parse_suite({"name": "silver.crafted", "expectations": [rule]}, "crafted")
    ranked = cq.CompiledSuite.of(unique, cq.KeyRank(("id",), "rank"))
    assert not ranked.windowed and cq.CompiledSuite.of(unique).windowed
    assert cq.CompiledSuite.of(unique, cq.KeyRank(("cc",), "rank")).windowed  # another key: the window
    rows = [("a", 1.0, "DE", "a"), ("b", 2.0, "DE", "a"), ("a", 3.0, "DE", "a"), (None, 4.0, "DE", "a")]
    frame = spark.createDataFrame(rows, _SCHEMA).withColumn(
        "rank", F.row_number().over(Window.partitionBy("id").orderBy("amount"))
    )
    kept = frame.where("rank = 1").localCheckpoint(eager=True)  # what the dedupe keeps
    by_rank, by_window = cq.evaluate(kept, ranked), cq.evaluate(kept, cq.CompiledSuite.of(unique))
    assert [(o.judged, o.unexpected, o.success) for o in by_rank.outcomes] == [(2, 0, True)]
    assert [(o.judged, o.unexpected) for o in by_window.outcomes] == [(2, 0)]
    # Had the second "a" slipped through, the rank catches it (and routes it, not the first copy).
    slipped = cq.evaluate(frame.localCheckpoint(eager=True), ranked)
    assert [(o.judged, o.unexpected, o.success) for o in slipped.outcomes] == [(3, 1, False)]
    routed = slipped.marked.where(F.col(cq.ROUTE) == "quarantine").collect()
    assert [(r["id"], r["amount"]) for r in routed] == [("a", 3.0)]
    (result,) = cq.result_rows(slipped.outcomes, table="t", suite="s", run_id="r", batch_id=0)
    assert "rank within the key" in json.loads(result.details)["judged_by"]
    pending = cq.prepare(kept, ranked, within=F.col("rank") == 1)  # no window: fits a larger aggregate
    assert cq.conclude(pending, pending.flagged.agg(*pending.aggregates).first()).outcomes[0].unexpected == 0


def test_fail_action_raises_quality_error(spark: Any, settings: Settings) -> None:
    with pytest.raises(QualityError, match="kind_known") as raised:
        _check(spark, settings, [*_ROWS, ("9", 1.0, "DE", "zzz")], "pandas")
    assert isinstance(raised.value, DataError)


def test_a_clean_batch_passes_untouched(spark: Any, settings: Settings) -> None:
    checked = _check(spark, settings, [_ROWS[0], _ROWS[4]], "pandas")
    assert checked.dropped == 0 and checked.quarantined.count() == 0 and checked.valid.count() == 2
    assert "reason" in checked.quarantined.columns and "failed_rules" in checked.quarantined.columns


def test_suite_files_are_json_with_names_matching_their_path(settings: Settings) -> None:
    base = settings.root / settings.quality.suites_dir
    for path in base.glob("*/*.json"):
        assert json.loads(path.read_text())["name"] == f"{path.parent.name}.{path.stem}"


def test_clear_pii_caught_by_a_rule_is_not_quoted_in_results_or_data_docs(
    spark: Any, settings: Settings, tmp_path: Path
) -> None:
    """The customers suite stops clear e-mails; what it records about them must not repeat them."""
    private = settings.model_copy(update={"workspace": tmp_path / "ws"})
    clear = [("ann.lee@example.com", "Ann Lee"), ("bo.kim@example.org", "Bo Kim")]
    frame = spark.createDataFrame(
        [(1, email, name, f"mailed {email} from 10.9.8.7") for email, name in clear],
        "customer_id int, email string, name string, note string",
    )
    suite = parse_suite(
        {
            "name": "silver.retail_customers",
            "expectations": [
                {
                    **_expectation(
                        "expect_column_values_to_match_regex", "fail", column=column, regex="^[0-9a-f]{64}$"
                    ),
                    "meta": {"action": "fail", "rule": f"{column}_tokenized"},
                }
                for column in ("email", "name")
            ]
            + [
                {
                    **_expectation("expect_column_values_to_be_null", "warn", column="note"),
                    "meta": {"action": "warn", "rule": "note_empty"},
                }
            ],
        },
        "crafted",
    )
    run_id = str(uuid.uuid4())
    with pytest.raises(QualityError, match="email_tokenized"):
        # GX's engine: its unexpected-value lists are what could quote the PII (compiled rules keep none)
        check_batch(
            frame,
            "silver.retail_customers",
            settings=private,
            run_id=run_id,
            batch_id=0,
            suite=suite,
            engine="pandas",
        )
    results = results_for_run(private, run_id).set_index("rule")
    assert (
        not results.loc["email_tokenized", "success"]
        and results.loc["email_tokenized", "unexpected_count"] == 2
    )
    details = {rule: json.loads(text) for rule, text in results["details"].items()}
    assert details["email_tokenized"]["partial_unexpected_list"] == ["<pii masked>"] * 2
    assert "<email>" in details["note_empty"]["partial_unexpected_list"][0]
    # A validation kept by an older workspace, before masking: rendering masks it too.
    (saved,) = (private.workspace / "quality" / "validations" / "silver.retail_customers").glob("*.json")
    old = json.loads(saved.read_text())
    old["results"][0]["result"]["partial_unexpected_list"] = [email for email, _ in clear]
    planted = saved.with_name(f"{uuid.uuid4()}__0.json")
    planted.write_text(json.dumps(old))
    build_data_docs(private)
    written = [
        *(private.workspace / "quality").rglob("*.json"),
        *(private.reports / "data_docs").rglob("*.html"),
    ]
    written.remove(planted)
    pages = [p for p in written if p.suffix == ".html" and "validations" in p.parts]
    assert len(pages) == 2, "both validations (the new and the planted one) should be rendered"
    for path in [*written, *Path(results_path(private)).rglob("*.parquet")]:
        text = path.read_bytes().decode("utf-8", errors="replace")
        leaked = [value for pair in clear for value in pair if value in text] + ["10.9.8.7"] * (
            "10.9.8.7" in text
        )
        assert not leaked, f"{path} quotes {leaked}"


def test_results_are_appended_by_delta_rs_to_the_table_spark_wrote(
    spark: Any, settings: Settings, tmp_path: Path
) -> None:
    """A workspace whose results table Spark created (before delta-rs wrote them) takes the new rows."""
    from datetime import UTC, datetime

    from lakehouse.quality.results import RESULTS_SCHEMA, ResultRow, results_path, write_results

    private = settings.model_copy(update={"workspace": tmp_path / "ws"})
    at = datetime(2026, 12, 1, 12, 30, 15, 123456, tzinfo=UTC)
    rows = [
        ResultRow(f"run-{n}", n, "silver.crafted", "silver.crafted", "expect_column_values_to_not_be_null",
                  "id_present", "id", "quarantine", n != 1, 10, n, 10.0 * n, "compiled", at, "{}")
        for n in range(3)
    ]  # fmt: skip
    old = spark.createDataFrame(
        [tuple(rows[0].as_dict()[f.name] for f in RESULTS_SCHEMA.fields)], RESULTS_SCHEMA
    )
    old.write.format("delta").save(results_path(private))
    assert write_results(private, rows[1:]) == 2 and write_results(private, []) == 0
    back = spark.read.format("delta").load(results_path(private))
    assert [(f.name, f.dataType) for f in back.schema] == [(f.name, f.dataType) for f in RESULTS_SCHEMA]
    seen = sorted(
        (r["run_id"], r["success"], r["unexpected_count"], r["validated_at"]) for r in back.collect()
    )
    assert [s[:3] for s in seen] == [("run-0", True, 0), ("run-1", False, 1), ("run-2", True, 2)]
    assert len({s[3] for s in seen}) == 1  # the microseconds survive both writers alike
    fresh = settings.model_copy(update={"workspace": tmp_path / "fresh"})
    write_results(fresh, rows)  # and a first write creates it, as Spark reads it
    created = spark.read.format("delta").load(results_path(fresh))
    assert [(f.name, f.dataType) for f in created.schema] == [(f.name, f.dataType) for f in RESULTS_SCHEMA]
    assert created.count() == 3
