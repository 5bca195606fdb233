"""A user's own Kafka topic onboarded by configuration alone: registry entry → bronze → silver → gold model.

The user's project is a copy of this one's configuration (registry, catalog, suites, models, DAG files)
with their additions; the notebooks and ``lib/`` are the project's, untouched. The test declares a topic of
partner orders with a nested payload, lands it in bronze with the bronze notebook, drafts the silver table with
``lakehouse table scaffold``, builds it with the silver notebook, adds a SQL gold model and builds that with
the gold notebook — then checks the rows, the quarantine, the suites' results, the lineage and that no file
under ``lib/`` names the source.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from kafka import KafkaProducer

from lakehouse.config import Settings
from lakehouse.dag import ploomber_env
from lakehouse.stack import ensure_topics
from project_files import copy_declarations

pytestmark = pytest.mark.integration


def _project(stack: Settings, tmp_path: Path, source: dict[str, Any], name: str) -> Path:
    root = tmp_path / "project"
    root.mkdir()
    copy_declarations(stack.root, root)
    for file in ("pipeline.yaml", "pipeline.declared.yaml"):
        shutil.copy(stack.root / file, root / file)
    (root / "notebooks").symlink_to(stack.root / "notebooks")
    env = yaml.safe_load((stack.root / "env.test.yaml").read_text())
    env["workspace"] = str(stack.workspace)  # the test stack's lake, Kafka and Spark
    (root / "env.test.yaml").write_text(yaml.safe_dump(env))
    registry = yaml.safe_load((stack.root / "sources.yaml").read_text())
    registry["sources"][name] = source
    (root / "sources.yaml").write_text(yaml.safe_dump(registry))
    return root


def _run(command: list[str], root: Path, stack: Settings) -> subprocess.CompletedProcess[str]:
    env = {**ploomber_env(stack), "LAKEHOUSE_ROOT": str(root)}
    return subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, check=False)


def test_a_new_topic_reaches_silver_and_a_gold_model_by_configuration(
    stack: Settings, spark: Any, tmp_path: Path
) -> None:
    suffix = uuid.uuid4().hex[:6]
    name, topic = f"partner_orders_{suffix}", f"partner.orders.{suffix}"
    source = {
        "kind": "kafka",
        "description": "Orders a partner shop sends us.",
        "owner": "partnerships",
        "topic": topic,
        "partitions": 2,
        "bronze": name,
        "key": ["order_id"],
        "payload": {
            "key": ["order_id"],
            "event_time": "ordered_at",
            "fields": {
                "order_id": {"type": "string"},
                "buyer_email": {"path": "buyer.email", "type": "string"},
                "amount_eur": {"path": "total.amount", "type": "double"},
                "ordered_at": {"path": "at", "type": "timestamp"},
            },
        },
    }
    root = _project(stack, tmp_path, source, name)
    bin_dir = Path(sys.executable).parent
    registry_env = {"LAKEHOUSE_SOURCES": str(root / "sources.yaml")}
    with pytest.MonkeyPatch.context() as patch:
        for key, value in registry_env.items():
            patch.setenv(key, value)
        assert topic in ensure_topics(stack)

    producer = KafkaProducer(bootstrap_servers=stack.kafka.bootstrap_servers, acks="all")
    orders: list[dict[str, Any]] = [
        {"order_id": f"o{i}", "buyer": {"email": f"buyer{i}@example.org"}, "total": {"amount": 10.0 + i},
         "at": f"2026-03-0{1 + i % 3}T12:00:00Z"}
        for i in range(30)
    ]  # fmt: skip
    keyless: dict[str, Any] = {"buyer": {"email": "x@example.org"}}
    for order in [*orders, orders[0], keyless]:  # a re-send and one without its key
        producer.send(topic, key=str(order.get("order_id")).encode(), value=json.dumps(order).encode())
    producer.send(topic, value=b"{not json")
    producer.send(topic, key=b"o\xff", value=b'{"order_id": "o\xe9"}')  # bytes that are not UTF-8
    producer.flush()
    producer.close()

    papermill = str(bin_dir / "papermill")
    landed = _run(
        [papermill, "notebooks/bronze/ingest_events.ipynb", str(tmp_path / "bronze.ipynb"),
         "-p", "lakehouse_env", stack.env_name, "-p", "topic", topic],
        root, stack,
    )  # fmt: skip
    assert landed.returncode == 0, landed.stderr[-3000:]

    drafted = _run(
        [str(bin_dir / "lakehouse"), "--env", "test", "table", "scaffold", name, "--write"], root, stack
    )
    assert drafted.returncode == 0, drafted.stderr[-3000:]
    contract = yaml.safe_load((root / "catalog" / "silver" / f"{name}.yaml").read_text())
    email = next(c for c in contract["columns"] if c["name"] == "buyer_email")
    assert (email["pii"], email["treatment"]) == ("email", "tokenize")

    silver = _run(
        [papermill, "notebooks/silver/build_table.ipynb", str(tmp_path / "silver.ipynb"),
         "-p", "lakehouse_env", stack.env_name, "-p", "table", f"silver.{name}"],
        root, stack,
    )  # fmt: skip
    assert silver.returncode == 0, silver.stderr[-3000:]
    rows = spark.read.format("delta").load(stack.table_path("silver", name))
    assert rows.count() == 30
    assert rows.where("buyer_email LIKE '%@%'").count() == 0  # tokenized, as the contract says
    reasons = {
        r["reason"]
        for r in spark.read.format("delta").load(stack.table_path("silver", f"{name}_quarantine")).collect()
    }
    assert reasons == {"missing_order_id", "malformed_json", "invalid_utf8"}
    kept = spark.read.format("delta").load(stack.table_path("bronze", name)).where("value_bytes IS NOT NULL")
    assert [(bytes(r["key_bytes"]), bytes(r["value_bytes"])) for r in kept.collect()] == [
        (b"o\xff", b'{"order_id": "o\xe9"}')
    ]  # bronze keeps the bytes exact

    (root / "models" / "gold" / f"{name}_daily.sql").write_text(
        f"SELECT CAST(ordered_at AS DATE) AS day, count(*) AS orders, sum(amount_eur) AS revenue_eur\n"
        f"FROM {{{{ ref('silver.{name}') }}}} GROUP BY 1\n"
    )
    (root / "catalog" / "gold" / f"{name}_daily.yaml").write_text(
        yaml.safe_dump(
            {
                "table": f"gold.{name}_daily",
                "owner": "partnerships",
                "description": "Partner orders per day.",
                "classification": "internal",
                "model": {"sql": f"models/gold/{name}_daily.sql"},
                "columns": [
                    {"name": "day", "type": "date"},
                    {"name": "orders", "type": "long"},
                    {"name": "revenue_eur", "type": "double"},
                ],
            }
        )
    )
    synced = _run([str(bin_dir / "lakehouse"), "--env", "test", "dag", "sync"], root, stack)
    assert synced.returncode == 0, synced.stderr[-3000:]
    tasks = {t["name"]: t for t in yaml.safe_load((root / "pipeline.declared.yaml").read_text())}
    silver_task = f"silver-{name.replace('_', '-')}"
    assert tasks[f"gold-{name.replace('_', '-')}-daily"]["upstream"] == [silver_task]
    assert tasks[silver_task]["upstream"] == ["bronze-ingest-events"]

    gold = _run(
        [papermill, "notebooks/gold/build_model.ipynb", str(tmp_path / "gold.ipynb"),
         "-p", "lakehouse_env", stack.env_name, "-p", "table", f"gold.{name}_daily"],
        root, stack,
    )  # fmt: skip
    assert gold.returncode == 0, gold.stderr[-3000:]
    daily = (
        spark.read.format("delta").load(stack.table_path("gold", f"{name}_daily")).orderBy("day").collect()
    )
    assert [r["orders"] for r in daily] == [10, 10, 10]
    assert sum(r["revenue_eur"] for r in daily) == pytest.approx(sum(10.0 + i for i in range(30)))

    events = [
        json.loads(line)
        for line in (stack.reports / "lineage" / "openlineage.jsonl").read_text().splitlines()
    ]
    completed = {e["job"]["name"] for e in events if e["eventType"] == "COMPLETE"}
    assert {silver_task, f"gold-{name.replace('_', '-')}-daily"} <= completed
    lib = stack.root / "lib"
    assert not any(name in path.read_text(errors="ignore") for path in lib.rglob("*.py"))
    assert (
        subprocess.run(
            ["git", "status", "--porcelain", "lib"], cwd=stack.root, capture_output=True, text=True
        ).stdout
        == ""
    )
