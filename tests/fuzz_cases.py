"""The fuzz corpus's expectations and its accounting, shared by the unit test (the engine on classic Spark)
and the integration test (the real broker, bronze ingest and the silver build): every input, identified by
its Kafka partition and offset, ends in silver, the quarantine (with its reason) or the duplicate count, and
its category's expectation (``tests/data/fuzz/<source>.yaml``) says which. ``tests/`` is on ``sys.path``
through its ``conftest.py``.
"""

from __future__ import annotations

import dataclasses
import json
import zlib
from collections import Counter, defaultdict
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from lakehouse.config import Settings
from lakehouse.quality.suites import load_suite, rule_name
from lakehouse.silver import engine
from lakehouse.silver.engine import SilverTable
from lakehouse.simulate import Flaws, generate_events
from lakehouse.simulate.fuzz import CATEGORIES, FuzzCase, corpus
from lakehouse.sources.registry import load_registry

EXPECTATIONS = Path(__file__).parent / "data" / "fuzz"


def clickstream_corpus(settings: Settings, per_category: int, seed: int = 7) -> list[FuzzCase]:
    """``per_category`` inputs of every category (at most 50 of ~900 KB), broken from the simulator's
    valid events."""
    payload = load_registry(settings).sources["clickstream"].payload
    assert payload is not None
    valid = [json.loads(e.value) for e in generate_events(60, seed=seed, flaws=Flaws.none())]
    return corpus(valid, payload, count=per_category * len(CATEGORIES), seed=seed, max_huge=50)


def declared_in(settings: Settings, name: str, folder: Path, bronze: str) -> SilverTable:
    """The declared silver table ``name``, reading ``bronze`` (every input) and writing its tables under
    ``folder``."""
    declared = engine.silver_table(settings, name)
    return dataclasses.replace(
        declared,
        path=str(folder / "silver"),
        quarantine=str(folder / "quarantine"),
        audit=str(folder / "silver_batches"),
        checkpoints=str(folder / "checkpoints"),
        input_paths={label: bronze for label in declared.input_paths},
    )


def events_in(settings: Settings, folder: Path, bronze: str) -> SilverTable:
    """The declared silver.events, reading ``bronze`` and writing its tables under ``folder``."""
    return declared_in(settings, "silver.events", folder, bronze)


def land_in_bronze(
    spark: Any, cases: Sequence[FuzzCase], bronze: str, partitions: int = 3
) -> list[tuple[int, int]]:
    """Write ``cases`` to a bronze table at ``bronze`` as the Kafka ingest lands them; their coordinates.

    As Kafka places them: a keyed record's partition by its key, else round robin, each partition in order.
    """
    from lakehouse.sources.kafka import to_bronze

    now = datetime.now(UTC)
    coordinates, sent = [], [0] * partitions
    for case in cases:
        partition = zlib.crc32(case.key) % partitions if case.key else case.index % partitions
        coordinates.append((partition, sent[partition]))
        sent[partition] += 1
    records = spark.createDataFrame(
        [(c.key, c.value, "clickstream", p, o, now) for c, (p, o) in zip(cases, coordinates, strict=True)],
        "key binary, value binary, topic string, partition int, offset long, timestamp timestamp",
    )
    to_bronze(records).write.format("delta").save(bronze)
    return coordinates


def expectations(settings: Settings, source: str, table: SilverTable) -> dict[str, set[str]]:
    """Category → allowed outcomes, ``quarantine:declared`` expanded to the table's reasons."""
    document = yaml.safe_load((EXPECTATIONS / f"{source}.yaml").read_text())
    declared = {r.reason for r in table.build.reject}
    declared |= {rule_name(e) for e in load_suite(settings, table.name).expectations}
    expect: dict[str, set[str]] = {}
    for category, outcomes in document["expect"].items():
        allowed = set(outcomes)
        if "quarantine:declared" in allowed:
            allowed = (allowed - {"quarantine:declared"}) | {f"quarantine:{r}" for r in declared}
        expect[category] = allowed
    assert set(expect) == set(CATEGORIES), "every category needs its expectation"
    return expect


def outcomes(
    spark: Any, table: SilverTable, cases: Sequence[FuzzCase], coordinates: Sequence[tuple[int, int]]
) -> dict[int, str]:
    """Each case's outcome by its (partition, offset) in bronze: silver, quarantine:<reason> or duplicate."""
    silver = {
        (r["source_partition"], r["source_offset"])
        for r in spark.read.format("delta")
        .load(table.path)
        .select("source_partition", "source_offset")
        .collect()
    }
    quarantined = {
        (r["partition"], r["offset"]): r["reason"]
        for r in spark.read.format("delta")
        .load(table.quarantine)
        .select("partition", "offset", "reason")
        .collect()
    }
    found = {}
    for case, at in zip(cases, coordinates, strict=True):
        if at in silver:
            found[case.index] = "silver"
        elif at in quarantined:
            found[case.index] = f"quarantine:{quarantined[at]}"
        else:
            found[case.index] = "duplicate"
    return found


def unexpected(
    cases: Sequence[FuzzCase], found: dict[int, str], expect: dict[str, set[str]]
) -> dict[str, Counter[str]]:
    """Category → the outcomes it had that its expectation does not allow (empty: all as expected)."""
    wrong: dict[str, Counter[str]] = defaultdict(Counter)
    for case in cases:
        outcome, allowed = found[case.index], expect[case.category]
        if outcome not in allowed and not any(
            a.endswith("*") and outcome.startswith(a[:-1]) for a in allowed
        ):
            wrong[case.category][outcome] += 1
    return dict(wrong)


def assert_accounted(
    spark: Any,
    settings: Settings,
    table: SilverTable,
    cases: Sequence[FuzzCase],
    coordinates: Sequence[tuple[int, int]],
) -> dict[str, int]:
    """Every input where its category expects it; the table's audit balances over exactly these inputs.

    Returns the audit's all-time totals.
    """
    totals = engine.check_table(
        spark, table
    )  # input = applied + quarantined + duplicates + dropped, no key twice
    assert totals["input_rows"] == len(cases), totals
    found = outcomes(spark, table, cases, coordinates)
    assert unexpected(cases, found, expectations(settings, "clickstream", table)) == {}
    residual = sum(1 for o in found.values() if o == "duplicate")
    assert (
        residual == totals["duplicates"] + totals["dropped"]
    )  # nothing outside silver and quarantine unaccounted
    return totals
