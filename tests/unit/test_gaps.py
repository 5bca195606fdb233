"""The gaps transform (lakehouse.gold.gaps) and gold.device_offline, the demo's model of it.

Device offline intervals are gaps in device time longer than gap_factor × the device's expected interval —
given, or the device's median gap; gap_factor ≤ 1 would call every reading a gap and is refused."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import pytest

from lakehouse.config import Settings
from lakehouse.errors import ConfigError
from lakehouse.gold import models
from lakehouse.gold.gaps import gaps

pytestmark = pytest.mark.unit

T0 = datetime(2024, 11, 1, 10)
SERIES = "device_id string, seq long, device_time timestamp, temperature_c double"


def _series(spark: Any) -> Any:
    d1 = [0, 1, 2, 3, 4, 30, 31, 32, 33]  # one 26-minute gap in a 1-minute series
    d2 = list(range(10))  # none
    rows = [("d1", seq, T0 + timedelta(minutes=m), 20.0) for seq, m in enumerate(d1)]
    rows += [("d2", seq, T0 + timedelta(minutes=m), 20.0) for seq, m in enumerate(d2)]
    return spark.createDataFrame(rows, SERIES)


def test_gaps_longer_than_n_median_intervals_are_found(spark: Any) -> None:
    found = gaps(
        _series(spark), entity=["device_id"], time="device_time", order=["seq"], gap_factor=5
    ).collect()
    assert [(r["device_id"], r["gap_seconds"], r["expected_interval_s"]) for r in found] == [
        ("d1", 1560.0, 60.0)
    ]
    assert (found[0]["gap_start"], found[0]["gap_end"]) == (
        T0 + timedelta(minutes=4),
        T0 + timedelta(minutes=30),
    )


def test_a_given_interval_replaces_each_entity_s_median(spark: Any) -> None:
    series = _series(spark)
    assert gaps(series, entity=["device_id"], time="device_time", expected_interval_s=600).count() == 0
    given = gaps(series, entity=["device_id"], time="device_time", gap_factor=1.5, expected_interval_s=30)
    assert given.count() == 8 + 9  # every step of both devices is longer than 1.5 × 30 s
    assert {r["expected_interval_s"] for r in given.collect()} == {30.0}


@pytest.mark.parametrize("factor", [1, 0.5, 0])
def test_a_gap_factor_of_one_or_less_is_refused(spark: Any, factor: float) -> None:
    with pytest.raises(ConfigError, match="gap_factor must be greater than 1"):
        gaps(_series(spark), entity=["device_id"], time="device_time", gap_factor=factor)


def test_rows_out_of_order_and_several_entity_columns(spark: Any) -> None:
    rows = [
        ("s1", "b", 3, T0 + timedelta(minutes=20)),
        ("s1", "a", 1, T0),
        ("s1", "a", 2, T0 + timedelta(minutes=1)),
        ("s1", "a", 3, T0 + timedelta(minutes=20)),
        ("s1", "b", 1, T0),
        ("s1", "b", 2, T0 + timedelta(minutes=19)),
    ]
    frame = spark.createDataFrame(rows, "site string, sensor string, n long, at timestamp")
    found = gaps(
        frame, entity=["site", "sensor"], time="at", expected_interval_s=60, start_as="from", end_as="to"
    ).orderBy("sensor", "from")
    assert [(r["sensor"], r["from"], r["to"]) for r in found.collect()] == [
        ("a", T0 + timedelta(minutes=1), T0 + timedelta(minutes=20)),
        ("b", T0, T0 + timedelta(minutes=19)),
    ]
    assert found.columns == [
        "site",
        "sensor",
        "from",
        "to",
        "gap_seconds",
        "expected_interval_s",
        "detected_at",
    ]


def test_a_missing_column_is_named(spark: Any) -> None:
    with pytest.raises(ConfigError, match=r"no column \['clock'\]"):
        gaps(_series(spark), entity=["device_id"], time="clock")


def test_device_offline_is_the_gaps_model_over_silver_telemetry(spark: Any, settings: Settings) -> None:
    model = models.gold_model(settings, "gold.device_offline")
    assert (model.model.python, model.model.inputs) == ("gaps", ["silver.telemetry"])
    assert models.upstream_tables(settings, "gold.device_offline") == ["silver.telemetry"]
    result = models.TRANSFORMS["gaps"](spark, {"silver.telemetry": _series(spark)}, model.model.params)
    assert result.columns == [c.name for c in model.contract.columns]  # the contract's columns, in order
    rows = result.collect()
    assert [(r["device_id"], r["offline_from"], r["online_at"]) for r in rows] == [
        ("d1", T0 + timedelta(minutes=4), T0 + timedelta(minutes=30))
    ]
    assert rows[0]["expected_interval_s"] == 60.0  # the declared median


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"entity": ["device_id"], "time": "device_time", "gap": 3}, r"unknown params \['gap'\]"),
        ({"time": "device_time"}, "params.entity is required"),
        ({"entity": ["device_id"], "time": "device_time", "gap_factor": "5"}, "gap_factor must be a number"),
        ({"entity": ["device_id"], "time": "device_time", "gap_factor": 1}, "greater than 1"),
        ({"entity": ["device_id"], "time": "device_time", "expected_interval_s": "mean"}, "or 'median'"),
        (
            {"entity": ["device_id"], "time": "device_time", "input": "silver.x"},
            "not one of the model's inputs",
        ),
    ],
)
def test_bad_params_are_config_errors_naming_them(spark: Any, params: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        models.TRANSFORMS["gaps"](spark, {"silver.telemetry": _series(spark)}, params)
