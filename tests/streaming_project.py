"""A user's project streaming their own topic: the catalog plus the topic's bronze and silver contracts and a
gold rollup, and a registry of that one source. Shared by the continuous-mode tests and the kill matrix on a
running stack. ``tests/`` is on ``sys.path`` through its ``conftest.py``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml

from lakehouse.config import Settings
from project_files import copy_declarations


def declared_project(
    stack: Settings, tmp_path: Path, topic: str, name: str, workspace: Path | None = None
) -> Path:
    """A user's project: the catalog plus their topic's bronze and silver contracts, a registry of one source."""
    root = tmp_path / "project"
    root.mkdir()
    copy_declarations(stack.root, root)
    for file in ("pipeline.yaml", "pipeline.declared.yaml"):
        shutil.copy(stack.root / file, root / file)
    env = yaml.safe_load((stack.root / "env.test.yaml").read_text())
    env["workspace"] = str(workspace or stack.workspace)  # the test stack's lake, Kafka and Spark by default
    (root / "env.test.yaml").write_text(yaml.safe_dump(env))
    # The project's registry holds the demo's sources (its declared tables read their payloads) and the
    # user's; continuous mode here runs the user's source alone (--registry, the file this returns beside root).
    source = {"kind": "kafka", "topic": topic, "partitions": 2, "bronze": name}
    registry = yaml.safe_load((stack.root / "sources.yaml").read_text())
    registry["sources"][name] = source
    (root / "sources.yaml").write_text(yaml.safe_dump(registry))
    (tmp_path / "only.yaml").write_text(yaml.safe_dump({"sources": {name: source}}))
    kafka = [("key", "string"), ("value", "string"), ("topic", "string"), ("partition", "integer"),
             ("offset", "long"), ("kafka_timestamp", "timestamp"), ("ingested_at", "timestamp"),
             ("ingest_date", "date"), ("key_bytes", "binary"), ("value_bytes", "binary")]  # fmt: skip
    documents = [
        {
            "table": f"bronze.{name}",
            "columns": [{"name": c, "type": t, "classification": "internal"} for c, t in kafka],
        },
        {
            "table": f"silver.{name}",
            "build": {
                "inputs": [
                    {"table": f"bronze.{name}", "format": "json", "fields": {"id": "string", "n": "bigint"}}
                ],
                "key": ["id"],
                "sequence": ["offset"],
            },
            "columns": [
                {"name": "id", "type": "string", "classification": "internal", "expr": "payload.id"},
                {"name": "n", "type": "long", "classification": "internal", "expr": "payload.n"},
                {"name": "offset", "type": "long", "classification": "internal"},
                # reading n was taken n * 10 s after 2025-01-01: six readings a minute
                {
                    "name": "read_at",
                    "type": "timestamp",
                    "classification": "internal",
                    "expr": "timestamp_seconds(1735689600 + payload.n * 10)",
                },
            ],
        },
        {
            "table": f"gold.{name}_minute",
            "optional": True,
            "rollup": {
                "rows": f"silver.{name}",
                "event_time": "read_at",
                "lateness": "0 seconds",
                "dedupe": ["id"],
                "aggregate": {"readings": "count(1)", "total": "sum(n)"},
            },
            "columns": [
                {"name": c, "type": t, "classification": "internal"}
                for c, t in [
                    ("window_start", "timestamp"),
                    ("window_end", "timestamp"),
                    ("readings", "long"),
                    ("total", "long"),
                    ("batch_id", "long"),
                    ("emitted_at", "timestamp"),
                ]
            ],
        },
    ]
    for document in documents:
        layer, table = str(document["table"]).split(".")
        meta = {"owner": "tests", "description": f"{name} ({layer})", "classification": "internal"}
        (root / "catalog" / layer / f"{table}.yaml").write_text(yaml.safe_dump({**document, **meta}))
    return root
