"""Privacy on the real stack: Spark tokens equal Python's, untagged PII fails, erasure reaches every version."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any

import pytest

from lakehouse.config import Settings
from lakehouse.governance.catalog import load_catalog
from lakehouse.privacy import PrivacyError
from lakehouse.privacy.erase import erase_subject, subject_predicate
from lakehouse.privacy.tokenize import assert_no_untagged_pii, protect, token, token_column
from lakehouse.tables import delta_ref

pytestmark = pytest.mark.integration

SUBJECT = 42
OTHER = 7


def _cdc(table: str, columns: dict[str, Any]) -> str:
    return json.dumps(
        {
            "action": "I",
            "lsn": "0/1",
            "schema": "public",
            "table": table,
            "columns": [{"name": k, "type": "text", "value": v} for k, v in columns.items()],
        }
    )


def _event(user: str, ip: str) -> str:
    return json.dumps({"schema_version": 1, "event_id": f"e-{user}", "user_id": user, "client_ip": ip})


def _append(spark: Any, path: str, rows: list[tuple[Any, ...]], schema: str) -> None:
    spark.createDataFrame(rows, schema).write.format("delta").mode("append").save(path)


def test_spark_tokens_equal_python_hmac(spark: Any, stack: Settings) -> None:
    key = stack.privacy.tokenization_key
    values = ["ada@example.com", "203.0.113.7", "ünïcode", "", None]
    frame = spark.createDataFrame([(v,) for v in values], "v string")
    got = [row["t"] for row in frame.select(token_column("v", key).alias("t")).collect()]
    assert got == [token(v, key) for v in values]


def _events(settings: Settings, tmp_path: Path) -> Any:
    """The declared silver.events, reading ``tmp_path/bronze`` and writing a private lake."""
    from lakehouse.silver import engine

    declared = engine.silver_table(settings, "silver.events")
    return dataclasses.replace(
        declared,
        path=str(tmp_path / "silver"),
        quarantine=str(tmp_path / "quarantine"),
        audit=str(tmp_path / "silver_batches"),
        checkpoints=str(tmp_path / "checkpoint"),
        input_paths={label: str(tmp_path / "bronze") for label in declared.input_paths},
    )


def test_the_events_declaration_tokenizes_client_ip(spark: Any, stack: Settings, tmp_path: Path) -> None:
    from datetime import UTC, datetime

    from lakehouse.silver import engine

    value = json.dumps(
        {
            "schema_version": 1,
            "event_id": "e1",
            "event_type": "page_view",
            "ts": 1_730_419_200_000,
            "user_id": "u-1",
            "client_ip": "2a02:1:2:3:4::5",
            "country": "de",
        }
    )
    bronze = spark.createDataFrame(
        [(value, 0, 1, datetime(2025, 1, 1, tzinfo=UTC))],
        "value string, partition int, offset long, ingested_at timestamp",
    )
    table = dataclasses.replace(_events(stack, tmp_path), tokenization_key="k")
    engine.ensure_tables(spark, table)
    spec = table.build.inputs[0]
    ctx = engine.RunContext(table=table, spec=spec, settings=stack, run_id="r", app_id="a", quality=False)
    counts = engine.process_batch(bronze, 0, ctx)
    assert (counts.applied, counts.quarantined) == (1, 0)
    row = spark.read.format("delta").load(table.path).collect()[0]
    assert row["client_ip"] == token("2a02:1:2:3:4::5", "k")


def test_untagged_pii_in_a_silver_frame_fails(spark: Any, stack: Settings) -> None:
    contract = load_catalog(stack).contract("silver.retail_customers")
    key = stack.privacy.tokenization_key
    rows = [(i, f"Person {i}", f"person.{i}@example.com", f"+44 20 7946 0{i:03d}") for i in range(30)]
    frame = spark.createDataFrame(rows, "customer_id long, name string, email string, phone string")
    with pytest.raises(PrivacyError, match=r"silver\.retail_customers") as info:
        assert_no_untagged_pii(frame, contract)
    assert "email is tagged tokenize but holds clear email" in str(info.value)
    assert "phone looks like phone" in str(info.value)
    protected = protect(frame.drop("phone"), contract, key)
    assert_no_untagged_pii(protected, contract)
    assert protected.where("customer_id = 3").collect()[0]["email"] == token("person.3@example.com", key)


def test_erasure_removes_a_subject_from_every_layer_and_every_version(
    spark: Any, stack: Settings, tmp_path: Path
) -> None:
    # A private lake: the DAG tests later build the real tables of the test workspace.
    settings = stack.model_copy(update={"workspace": tmp_path / "ws"})
    key = settings.privacy.tokenization_key
    path = {
        t: settings.table_path(*t.split("."))
        for t in (
            "bronze.retail_customers",
            "bronze.retail_cdc",
            "silver.retail_customers",
            "silver.dim_customer",
            "bronze.clickstream",
            "silver.events",
            "gold.sessions",
        )
    }
    email = {c: f"person.{c}@example.com" for c in (SUBJECT, OTHER)}
    for c in (SUBJECT, OTHER):  # two commits each: the subject is in several versions of every table
        _append(
            spark,
            path["bronze.retail_customers"],
            [(c, f"Person {c}", email[c])],
            "customer_id long, name string, email string",
        )
        _append(
            spark,
            path["bronze.retail_cdc"],
            [
                (f"public.customers:[{c}]", _cdc("customers", {"customer_id": c, "email": email[c]})),
                (f"public.orders:[{c}00]", _cdc("orders", {"order_id": c * 100, "customer_id": c})),
                # a change of a table without customer_id: no subject to find, never an error
                (f"public.products:[{c}]", _cdc("products", {"product_id": c, "name": "mug"})),
            ],
            "key string, value string",
        )
        _append(
            spark,
            path["silver.retail_customers"],
            [(c, token(email[c], key))],
            "customer_id long, email string",
        )
        _append(
            spark,
            path["silver.dim_customer"],
            [(c, token(email[c], key), True)],
            "customer_id long, email string, is_current boolean",
        )
        user = f"u-{c:06d}"
        _append(
            spark,
            path["bronze.clickstream"],
            [(user, _event(user, "198.51.100.1"))],
            "key string, value string",
        )
        _append(
            spark,
            path["silver.events"],
            [(f"e-{user}", user, token("198.51.100.1", key))],
            "event_id string, user_id string, client_ip string",
        )
        _append(spark, path["gold.sessions"], [(f"s-{user}", user)], "session_id string, user_id string")
    # A dimension row that only the email token ties to the subject (e.g. a merged duplicate account).
    _append(
        spark,
        path["silver.dim_customer"],
        [(999, token(email[SUBJECT], key), False)],
        "customer_id long, email string, is_current boolean",
    )
    # Deletion vectors on: a DELETE only marks rows, so the erasure must purge before it vacuums.
    spark.sql(
        f"ALTER TABLE {delta_ref(path['silver.dim_customer'])} "
        "SET TBLPROPERTIES ('delta.enableDeletionVectors' = 'true')"
    )

    catalog = load_catalog(settings)
    customer_tables = [
        "bronze.retail_customers",
        "bronze.retail_cdc",
        "silver.retail_customers",
        "silver.dim_customer",
    ]
    report = erase_subject(
        spark, settings, "customer", str(SUBJECT), "ticket-1", catalog=catalog, tables=customer_tables
    )
    deleted = {t.table: t.rows_deleted for t in report.tables}
    assert deleted == {
        "bronze.retail_customers": 1,
        "bronze.retail_cdc": 2,
        "silver.retail_customers": 1,
        "silver.dim_customer": 2,
    }
    user_report = erase_subject(
        spark,
        settings,
        "user",
        f"u-{SUBJECT:06d}",
        "ticket-2",
        catalog=catalog,
        tables=["bronze.clickstream", "silver.events", "gold.sessions"],
    )
    assert {t.table: t.rows_deleted for t in user_report.tables} == {
        "bronze.clickstream": 1,
        "silver.events": 1,
        "gold.sessions": 1,
    }

    tokens = [token(email[SUBJECT], key)]
    for table_report, kind, subject in [
        (report, "customer", str(SUBJECT)),
        (user_report, "user", f"u-{SUBJECT:06d}"),
    ]:
        for erased in table_report.tables:
            contract = catalog.contract(erased.table)
            refs = [r for r in contract.subjects if r.kind == kind]
            predicate = subject_predicate(refs, subject, tokens)
            other = subject_predicate(refs, str(OTHER) if kind == "customer" else f"u-{OTHER:06d}", [])
            ref = delta_ref(path[erased.table])
            assert spark.sql(f"SELECT count(*) AS n FROM {ref} WHERE {other}").collect()[0]["n"] >= 1
            assert erased.version_before is not None
            gone = 0
            for version in range(erased.version_before + 1):
                try:
                    count = spark.sql(
                        f"SELECT count(*) AS n FROM {ref} VERSION AS OF {version} WHERE {predicate}"
                    ).collect()[0]["n"]
                except Exception as exc:  # only a vacuumed version may fail, and only for its missing files
                    assert _files_gone(exc), f"{erased.table} version {version} failed otherwise: {exc}"
                    gone += 1
                    continue
                assert count == 0, f"{erased.table} version {version} still returns the subject"
            assert gone >= 1, f"{erased.table}: no earlier version lost its files — VACUUM did not run"

    audit = spark.read.format("delta").load(settings.table_path("audit", "erasures"))
    rows = audit.where(f"erasure_id = '{report.erasure_id}'").collect()
    assert sorted(r["table"] for r in rows) == sorted(customer_tables)
    assert {r["reason"] for r in rows} == {"ticket-1"}
    assert {r["subject_token"] for r in rows} == {token(f"customer:{SUBJECT}", key)}
    assert all(str(SUBJECT) not in r["subject_token"] or len(r["subject_token"]) == 64 for r in rows)


def test_simulated_client_ip_reaches_silver_only_as_a_token(
    spark: Any, stack: Settings, tmp_path: Any
) -> None:
    from datetime import UTC, datetime

    from lakehouse.privacy.scanner import scan_frame
    from lakehouse.silver import engine
    from lakehouse.simulate.clickstream import Flaws, generate_events
    from lakehouse.sources.kafka import BRONZE_KAFKA

    now = datetime.now(UTC)
    events = list(generate_events(200, seed=11, flaws=Flaws.none()))
    rows = [
        (e.key.decode(), e.value.decode(), "t", 0, offset, now, now, now.date(), None, None)
        for offset, e in enumerate(events)
    ]
    table = _events(stack, tmp_path)
    spark.createDataFrame(rows, BRONZE_KAFKA).write.format("delta").save(str(tmp_path / "bronze"))
    report = engine.build_table(spark, stack, table.name, table=table)
    assert report.total.applied == len(events)
    expected = {json.loads(e.value)["event_id"]: json.loads(e.value)["client_ip"] for e in events}
    silver = spark.read.format("delta").load(table.path).select("event_id", "client_ip").toPandas()
    key = stack.privacy.tokenization_key
    assert dict(zip(silver["event_id"], silver["client_ip"], strict=True)) == {
        event_id: token(ip, key) for event_id, ip in expected.items()
    }
    # Only the column's name still says "ip": no value in silver looks like an address any more.
    assert [(f.column, f.evidence) for f in scan_frame(silver)] == [("client_ip", "name")]
    assert_no_untagged_pii(silver, load_catalog(stack).contract("silver.events"))


def test_silver_customers_are_tokenized_and_scd2_still_sees_an_email_change(
    spark: Any, stack: Settings, tmp_path: Any
) -> None:
    import dataclasses
    from datetime import UTC, datetime

    from lakehouse.silver import engine
    from lakehouse.silver.engine import RunContext

    key = stack.privacy.tokenization_key
    schema = "customer_id long, name string, email string, country string, segment string, "
    schema += "created_at timestamp, updated_at timestamp"
    t0, t1 = datetime(2025, 1, 1, tzinfo=UTC), datetime(2025, 2, 1, tzinfo=UTC)
    versions = [
        [(1, "Ada Baker", "ada@example.com", "GB", "gold", t0, t0)],
        [(1, "Ada Baker", "ada.baker@example.org", "GB", "gold", t0, t1)],  # only the email changes
    ]
    paths = {}
    for name in ("silver.retail_customers", "silver.dim_customer"):  # the declarations, in a private lake
        short = name.split(".")[1]
        table = dataclasses.replace(
            engine.silver_table(stack, name),
            path=str(tmp_path / short),
            quarantine=str(tmp_path / f"{short}_quarantine"),
            audit=str(tmp_path / "silver_batches"),
        )
        engine.ensure_tables(spark, table)
        (extract,) = [s for s in table.build.inputs if s.label == "extract"]
        ctx = RunContext(table=table, spec=extract, settings=stack, run_id="r", app_id=f"test-tokens-{short}")
        for batch_id, rows in enumerate(versions):
            engine.process_batch(spark.createDataFrame(rows, schema), batch_id, ctx)
        paths[name] = table.path
    current = spark.read.format("delta").load(paths["silver.retail_customers"]).collect()
    assert [(r["name"], r["email"]) for r in current] == [
        (token("Ada Baker", key), token("ada.baker@example.org", key))
    ]
    dim = spark.read.format("delta").load(paths["silver.dim_customer"]).orderBy("valid_from").collect()
    assert [(r["email"], r["is_current"]) for r in dim] == [
        (token("ada@example.com", key), False),
        (token("ada.baker@example.org", key), True),
    ]
    catalog = load_catalog(stack)
    for name, path in paths.items():
        assert_no_untagged_pii(spark.read.format("delta").load(path), catalog.contract(name))


_FILES_GONE = re.compile(
    r"FileNotFound|FILE_NOT_EXIST|DELTA_FILE_NOT_FOUND|FAILED_READ_FILE|No such file|does not exist", re.I
)


def _files_gone(exc: Exception) -> bool:
    """Whether reading a table version failed because VACUUM removed its data files (and nothing else)."""
    return bool(_FILES_GONE.search(str(exc)))
