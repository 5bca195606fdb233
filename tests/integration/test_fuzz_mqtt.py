"""The fuzz corpus through the running MQTT path: devices → Mosquitto → the bridge → Kafka (records and dead
letters) → bronze → silver.telemetry, every input accounted for as its category expects
(``tests/data/fuzz/iot_telemetry.yaml``).

The source is the demo's ``iot_telemetry`` declaration with topics of its own (a user's copy of the registry,
``$LAKEHOUSE_SOURCES``), so the test's bridge sees only the corpus. An input is identified by its MQTT topic
(each case names its device in it, as devices do) and, once dead-lettered, by its exact bytes.

``make test`` sends a few inputs of each category; ``make fuzz`` sends the full corpus.
"""

from __future__ import annotations

import base64
import json
import os
import uuid
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import pytest
import yaml

from bridge_process import bridge_process, wait_ready
from fuzz_cases import EXPECTATIONS, declared_in
from lakehouse.config import Settings
from lakehouse.silver import engine
from lakehouse.simulate.devices import DeviceMessage, publish, simulate_fleet
from lakehouse.simulate.fuzz import CATEGORIES, FuzzCase, corpus, summary
from lakehouse.sources.kafka import ingest_available
from lakehouse.sources.mqtt import BridgeConfig, ensure_bridge_topics
from lakehouse.sources.registry import load_registry
from topic_records import values

pytestmark = pytest.mark.integration

PER_CATEGORY = int(os.environ.get("LAKEHOUSE_FUZZ_PER_CATEGORY", "3"))


def _registry(stack: Settings, tmp_path: Path, tag: str) -> tuple[Path, dict[str, Any]]:
    """A copy of the project's registry whose iot_telemetry source has topics of its own."""
    document = yaml.safe_load((stack.root / "sources.yaml").read_text())
    source = document["sources"]["iot_telemetry"]
    source.update(
        mqtt_topic=f"fz{tag}/+/telemetry",
        topic_pattern=f"fz{tag}/{{device_id}}/telemetry",
        kafka_topic=f"iot-fz-{tag}",
        dead_letter_topic=f"iot-fz-{tag}.dlq",
    )
    path = tmp_path / "sources.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path, source


def _topic(case: FuzzCase, tag: str) -> str:
    """The topic a device publishes the case on: its own id's, when the case has one MQTT can carry."""
    try:
        device = (case.key or b"").decode("utf-8")
    except UnicodeDecodeError:
        device = ""
    if not device or len(device) > 200 or any(c in device for c in "+#/\x00") or not device.isprintable():
        device = f"fz-case-{case.index}"
    return f"fz{tag}/{device}/telemetry"


def _expectations() -> dict[str, set[str]]:
    document = yaml.safe_load((EXPECTATIONS / "iot_telemetry.yaml").read_text())
    expect = {category: set(outcomes) for category, outcomes in document["expect"].items()}
    assert set(expect) == set(CATEGORIES), "every category needs its expectation"
    return expect


def _allowed(outcome: str, allowed: set[str]) -> bool:
    return outcome in allowed or any(a.endswith("*") and outcome.startswith(a[:-1]) for a in allowed)


def test_every_fuzz_input_through_the_mqtt_bridge_is_accounted_for(
    mqtt: Settings, spark: Any, tmp_path: Path
) -> None:
    tag = uuid.uuid4().hex[:8]
    registry_file, declared = _registry(mqtt, tmp_path, tag)
    payload = load_registry(mqtt).sources["iot_telemetry"].payload
    assert payload is not None
    simulation = simulate_fleet(4, 80, seed=5)
    valid = [json.loads(m.payload) for m in simulation.messages if m.kind == "valid"]
    cases = corpus(valid, payload, count=PER_CATEGORY * len(CATEGORIES), seed=11, max_huge=50)
    messages = [DeviceMessage(_topic(c, tag), c.value, "", None, c.category) for c in cases]

    config = BridgeConfig(
        mqtt_topic=declared["mqtt_topic"],
        kafka_topic=declared["kafka_topic"],
        dead_letter_topic=declared["dead_letter_topic"],
        client_id=f"fz-bridge-{tag}",
        partitions=3,
    )
    ensure_bridge_topics(mqtt, config)
    bridge = wait_ready(
        bridge_process(config, "--once-idle-seconds", "6", env={"LAKEHOUSE_SOURCES": str(registry_file)})
    )
    report = publish(messages, host=mqtt.mqtt.host, port=mqtt.mqtt.port, rate=0)
    assert report.sent == len(cases)  # the broker acknowledged every input
    out, err = bridge.communicate(timeout=600)
    assert bridge.returncode == 0, f"one input stopped the bridge:\n{err[-3000:]}"

    # The bridge: every input is a record or a dead letter, once (no kill here, so no re-delivery).
    records = values(mqtt, config.kafka_topic)
    letters = values(mqtt, config.dead_letter_topic)
    assert len(records) + len(letters) == len(cases), (len(records), len(letters), len(cases))

    bronze = str(tmp_path / "bronze")
    ingested = ingest_available(
        spark, mqtt, config.kafka_topic, table=bronze, checkpoint=str(tmp_path / "cp")
    )
    assert ingested.rows == len(records)
    table = declared_in(mqtt, "silver.telemetry", tmp_path, bronze)
    engine.build_table(spark, mqtt, table.name, table=table)
    totals = engine.check_table(spark, table)  # input = applied + quarantined + duplicates + dropped
    assert totals["input_rows"] == len(records)

    # Each input's outcome: dead letters by their exact bytes, the rest by their topic.
    by_topic: dict[str, list[FuzzCase]] = defaultdict(list)
    for case, message in zip(cases, messages, strict=True):
        by_topic[message.topic].append(case)
    found: dict[int, str] = {}
    for letter in letters:
        candidates = [
            c
            for c in by_topic[letter["mqtt_topic"]]
            if c.index not in found and c.value == base64.b64decode(letter["payload_base64"])
        ]
        assert candidates, f"a dead letter matches no input: {letter['reason']} on {letter['mqtt_topic']}"
        found[candidates[0].index] = f"dead_letter:{letter['reason']}"
    silver = Counter(
        r["mqtt_topic"] for r in spark.read.format("delta").load(table.path).select("mqtt_topic").collect()
    )
    quarantined: dict[str, list[str]] = defaultdict(list)
    for row in spark.read.format("delta").load(table.quarantine).select("record", "reason").collect():
        quarantined[json.loads(row["record"])["mqtt_topic"]].append(row["reason"])
    expect = _expectations()
    for topic, group in by_topic.items():
        # A topic's inputs share a device: its silver row, quarantined rows and duplicates go to the inputs
        # whose category allows them, the earliest first (the first reading of a key is the one kept).
        outcomes = Counter({"silver": silver[topic]}) + Counter(f"quarantine:{r}" for r in quarantined[topic])
        left = [c for c in group if c.index not in found]
        assert outcomes.total() <= len(left), (topic, outcomes, [c.category for c in group])
        outcomes["duplicate"] += len(left) - outcomes.total()
        for case in left:
            fits = [o for o in sorted(+outcomes) if _allowed(o, expect[case.category])] or sorted(+outcomes)
            found[case.index] = fits[0]
            outcomes[fits[0]] -= 1

    wrong = Counter(
        (c.category, found[c.index]) for c in cases if not _allowed(found[c.index], expect[c.category])
    )
    assert wrong == Counter(), sorted(wrong.items())
    outcome_kinds = Counter(o.split(":")[0] for o in found.values())
    assert outcome_kinds["duplicate"] == totals["duplicates"] + totals["dropped"]
    accounted = sum(outcome_kinds.values())
    assert accounted == len(cases)
    print(
        f"\nmqtt fuzz corpus: sent {len(cases)} ({len(summary(cases))} categories), bridged {len(records)}, "
        f"dead letters {len(letters)}, silver {outcome_kinds['silver']}, quarantined "
        f"{outcome_kinds['quarantine']}, duplicates {totals['duplicates']}, dropped {totals['dropped']}, "
        f"lost {len(cases) - accounted}; bridge: {out.strip()[-300:]}"
    )
