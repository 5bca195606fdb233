"""The feature store on the real stack: Feast's Spark store over Spark Connect, Redis as the online store.

Each test module gets its own workspace (lake, registry) on the test stack; entity ids are unique per run, so
the shared Redis holds nothing another test could read back.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from deltalake import DeltaTable

from lakehouse.config import Settings
from lakehouse.errors import ConfigError, DataError
from lakehouse.ml import features

pytestmark = pytest.mark.integration

T0 = datetime(2024, 11, 3, tzinfo=UTC)
HISTORY_FEATURES = ["user_history:sessions_28d", "user_history:conversion_rate_28d"]


@pytest.fixture(scope="module")
def store_settings(
    stack: Settings, redis: Settings, spark: Any, tmp_path_factory: pytest.TempPathFactory
) -> Settings:
    """The test stack with a workspace of this module's own."""
    return redis.model_copy(update={"workspace": tmp_path_factory.mktemp("feature-store")})


@pytest.fixture(scope="module")
def ids() -> dict[str, str]:
    run = uuid.uuid4().hex[:8]
    return {name: f"{name}-{run}" for name in ("u1", "u2", "s1", "s2", "s3", "s4")}


def _history_rows(ids: dict[str, str]) -> pd.DataFrame:
    """u1 active on Nov 3 and Nov 5, u2 on Nov 3: rows known at the next midnight."""
    days = [T0, T0 + timedelta(days=2), T0]
    return pd.DataFrame(
        {
            "user_id": [ids["u1"], ids["u1"], ids["u2"]],
            "day": [d.date() for d in days],
            "as_of": [d + timedelta(days=1) for d in days],
            "sessions_7d": [1, 3, 2],
            "sessions_28d": [1, 3, 2],
            "page_views_28d": [4, 11, 6],
            "add_to_carts_28d": [1, 2, 0],
            "converted_sessions_28d": [0, 1, 0],
            "conversion_rate_28d": [0.0, 1 / 3, 0.0],
            "sessions_to_date": [1, 3, 2],
            "days_since_first_session": [0, 2, 0],
        }
    )


def _session_rows(ids: dict[str, str], names: list[str], ends: list[datetime]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "session_id": [ids[n] for n in names],
            "user_id": [ids["u1"]] * len(names),
            "session_start": [e - timedelta(minutes=10) for e in ends],
            "session_end": ends,
            "platform": ["web"] * len(names),
            "device_type": ["desktop"] * len(names),
            "os": ["linux"] * len(names),
            "channel": [f"channel-{i}" for i in range(len(names))],
            "country": ["DE"] * len(names),
            "page_views": list(range(1, len(names) + 1)),
            "product_views": [0] * len(names),
            "searches": [0] * len(names),
            "add_to_carts": list(range(len(names))),
        }
    )


def _write(spark: Any, settings: Settings, table: str, frame: pd.DataFrame, mode: str = "append") -> None:
    from pyspark.sql import functions as F

    df = spark.createDataFrame(frame)
    if "days_since_first_session" in frame:
        df = df.withColumn("days_since_first_session", F.col("days_since_first_session").cast("int"))
    df.write.format("delta").mode(mode).save(settings.table_path("gold", table))


@pytest.fixture(scope="module")
def applied(store_settings: Settings, spark: Any, ids: dict[str, str]) -> features.ApplyReport:
    ends = [T0 + timedelta(hours=1), T0 + timedelta(days=1, hours=1), T0 + timedelta(days=2, hours=1)]
    _write(spark, store_settings, "sessions", _session_rows(ids, ["s1", "s2", "s3"], ends), "overwrite")
    _write(spark, store_settings, "user_history", _history_rows(ids), "overwrite")
    return features.apply(store_settings)


def test_apply_registers_every_declared_view_and_is_repeatable(
    store_settings: Settings, applied: features.ApplyReport
) -> None:
    repo = features.load_feature_repo(store_settings)
    assert applied.views == sorted(repo.views) and applied.removed == []
    again = features.apply(store_settings)
    assert again.views == applied.views
    registered = features.registered_views(features.feature_store(store_settings))
    assert list(registered.view) == sorted(repo.views)
    row = registered.set_index("view").loc["user_history"]
    assert row["source"] == "gold.user_history" and row["ttl"] == "28 days, 0:00:00"
    # Feast's own CLI reads the same registry through the file written for it
    written = (store_settings.workspace / "features" / "feature_store.yaml").read_text()
    assert str(features.registry_path(store_settings)) in written


def test_a_view_no_longer_declared_leaves_the_registry(
    store_settings: Settings, applied: features.ApplyReport, tmp_path: Path
) -> None:
    import shutil

    root = tmp_path / "features"
    shutil.copytree(features.features_root(store_settings), root)
    (root / "views" / "device_minute.yaml").unlink()
    repo = features.load_feature_repo(store_settings, root=root)
    report = features.apply(store_settings, repo)
    assert report.removed == ["device_minute"]
    names = {v.name for v in features.feature_store(store_settings).list_feature_views()}
    assert "device_minute" not in names
    features.apply(store_settings)  # put it back for the other tests


def test_materialize_writes_each_views_newest_rows_to_redis_and_resumes_where_it_ended(
    store_settings: Settings, spark: Any, applied: features.ApplyReport, ids: dict[str, str]
) -> None:
    done = {m.view: m for m in features.materialize(store_settings)}
    assert done["device_minute"].skipped == "gold.rt_device_minute has no table yet"
    sessions = done["session_activity"]
    assert sessions.skipped is None and sessions.end == T0 + timedelta(days=2, hours=1, microseconds=1)
    assert sessions.start == sessions.end - timedelta(days=2)  # first run: one TTL back
    online = features.online_features(
        store_settings,
        [{"user_id": ids["u1"]}, {"user_id": ids["u2"]}, {"user_id": "never-seen"}],
        HISTORY_FEATURES,
    )
    assert online["sessions_28d"].tolist()[:2] == [3, 2]  # u1's newest row, not its first
    assert pd.isna(online["sessions_28d"].iloc[2])
    # nothing new: nothing to do
    again = {m.view: m for m in features.materialize(store_settings)}
    assert again["session_activity"].skipped == "nothing newer since the last run"
    # a newer session: the next run covers exactly the interval since the last one
    later = T0 + timedelta(days=3)
    _write(spark, store_settings, "sessions", _session_rows(ids, ["s4"], [later]))
    third = {m.view: m for m in features.materialize(store_settings)}
    assert third["session_activity"].start == sessions.end
    assert third["session_activity"].end == later + timedelta(microseconds=1)
    row = features.online_features(
        store_settings, [{"session_id": ids["s4"]}], ["session_activity:page_views"]
    )
    assert row["page_views"].tolist() == [1]
    # an on-demand feature is computed from what Redis holds: s3 has 2 add-to-carts in 3 page views
    ratios = features.online_features(
        store_settings,
        [{"session_id": ids["s3"]}, {"session_id": "never-seen"}],
        ["session_ratios:cart_rate"],
    )
    assert ratios["cart_rate"].iloc[0] == pytest.approx(2 / 3)
    assert pd.isna(ratios["cart_rate"].iloc[1])
    report = features.write_materialize_report(store_settings, list(third.values()))
    assert set(report.view) == set(third)
    assert features.materialize_report_path(store_settings).is_file()


def test_training_sets_use_only_values_known_at_each_rows_time(
    store_settings: Settings, applied: features.ApplyReport, ids: dict[str, str]
) -> None:
    u1, u2 = ids["u1"], ids["u2"]
    labels = pd.DataFrame(
        {
            "user_id": [u1, u1, u1, u1, u2, u2],
            "event_timestamp": [
                T0 + timedelta(hours=23),  # before u1's first row is known (Nov 4 00:00)
                T0 + timedelta(days=1),  # the instant it becomes known
                T0 + timedelta(days=2, hours=12),  # Nov 5 noon: the Nov 3 row, not the Nov 5 one
                T0 + timedelta(days=40),  # beyond the 28-day TTL of the newest row
                T0 + timedelta(days=1, minutes=1),
                T0 - timedelta(days=1),
            ],
            "label": [0, 1, 0, 1, 0, 1],
        }
    )
    built = features.training_set(store_settings, labels, HISTORY_FEATURES)
    frame = built.frame
    assert len(frame) == len(labels)
    assert set(frame.columns) >= {"user_id", "event_timestamp", "label", "user_history__sessions_28d"}
    got = {(row.user_id, row.event_timestamp): row.user_history__sessions_28d for row in frame.itertuples()}

    # The same join, independently: the newest row known at or before t, within the TTL; else nothing.
    history = _history_rows(ids)
    for row in labels.itertuples():
        known = history[
            (history.user_id == row.user_id)
            & (history.as_of <= row.event_timestamp)
            & (history.as_of > row.event_timestamp - timedelta(days=28))
        ]
        expected = known.sort_values("as_of").iloc[-1].sessions_28d if len(known) else None
        value = got[(row.user_id, row.event_timestamp)]
        if expected is None:
            assert pd.isna(value), (row, value)
        else:
            assert value == expected, (row, value, expected)
    # no value comes from after its row's time: the Nov 5 row (3 sessions) is never given to Nov 5 noon
    assert got[(u1, T0 + timedelta(days=2, hours=12))] == 1
    assert built.versions == {
        "gold.user_history": DeltaTable(store_settings.table_path("gold", "user_history")).version()
    }
    assert frame["event_timestamp"].dt.tz is not None


def test_the_spark_session_is_left_as_feast_found_it(
    store_settings: Settings, spark: Any, applied: features.ApplyReport, ids: dict[str, str]
) -> None:
    before = spark.conf.get("spark.sql.parser.quotedRegexColumnNames", "false")
    rows = pd.DataFrame({"user_id": [ids["u1"]], "event_timestamp": [T0 + timedelta(days=4)]})
    features.training_set(store_settings, rows, HISTORY_FEATURES)
    assert spark.conf.get("spark.sql.parser.quotedRegexColumnNames", "false") == before


def test_bad_requests_are_clear_errors(store_settings: Settings, applied: features.ApplyReport) -> None:
    with pytest.raises(ConfigError, match="no feature view 'nope'"):
        features.online_features(store_settings, [{"user_id": "x"}], ["nope:x"])
    with pytest.raises(ConfigError, match="has no feature 'revenue'"):
        features.online_features(store_settings, [{"session_id": "x"}], ["session_activity:revenue"])
    with pytest.raises(DataError, match=r"entity row 0 lacks \['user_id'\]"):
        features.online_features(store_settings, [{"session_id": "x"}], HISTORY_FEATURES)
    with pytest.raises(DataError, match="the entity rows lack"):
        features.training_set(store_settings, pd.DataFrame({"user_id": ["x"]}), HISTORY_FEATURES)


def test_entity_rows_in_spark_and_on_demand_features_join_where_they_are(
    store_settings: Settings, spark: Any, applied: features.ApplyReport, ids: dict[str, str]
) -> None:
    at = T0 + timedelta(days=2, hours=2)  # after s2 and s3 ended, within their 2-day TTL
    rows = spark.createDataFrame(
        pd.DataFrame(
            {"session_id": [ids["s2"], ids["s3"], "never-seen"], "seen_at": [at] * 3, "label": [1, 0, 1]}
        )
    )
    built = features.training_set(
        store_settings, rows, ["session_activity:page_views", "session_ratios:cart_rate"], timestamp="seen_at"
    )
    frame = built.frame.set_index("session_id")
    assert frame.loc[ids["s2"], "session_activity__page_views"] == 2
    # computed by the declaration's expression after the point-in-time join, as online
    assert frame.loc[ids["s2"], "session_ratios__cart_rate"] == 0.5
    assert frame.loc[ids["s3"], "session_ratios__cart_rate"] == pytest.approx(2 / 3)
    assert pd.isna(frame.loc["never-seen", "session_ratios__cart_rate"])
    assert frame["label"].tolist() == [1, 0, 1] and frame["seen_at"].dt.tz is not None
    assert set(built.versions) == {"gold.sessions"}
    # Spark wrote the set to Feast's staging folder and it was read from there: nothing is left behind
    staging = features.staging_path(store_settings)
    assert staging.is_dir() and list(staging.iterdir()) == []


def test_erasing_a_user_reaches_the_online_store(
    store_settings: Settings, spark: Any, applied: features.ApplyReport, ids: dict[str, str]
) -> None:
    from lakehouse.privacy.erase import erase_subject

    features.materialize(store_settings)
    u1_sessions = [{"session_id": ids[s]} for s in ("s3", "s4")]
    served = features.online_features(store_settings, u1_sessions, ["session_activity:page_views"])
    assert served["page_views"].notna().all()  # in Redis before

    def erase() -> Any:
        return erase_subject(
            spark,
            store_settings,
            "user",
            ids["u1"],
            "test",
            tables=["gold.sessions", "gold.user_history"],
            copies=[features.OnlineCopies(store_settings)],
        )

    report = erase()
    online = {t.table: t.rows_deleted for t in report.tables}["online:redis"]
    # u1's history and u1's sessions in Redis (s2-s4; s1 ended before the first materialization's window)
    assert online == 1 + 3
    history = HISTORY_FEATURES
    after = features.online_features(
        store_settings, [{"user_id": ids["u1"]}, {"user_id": ids["u2"]}], history
    )
    assert pd.isna(after["sessions_28d"].iloc[0]) and after["sessions_28d"].iloc[1] == 2  # u2 is kept
    gone = features.online_features(store_settings, u1_sessions, ["session_activity:page_views"])
    assert gone["page_views"].isna().all()
    # a second erasure finds nothing left anywhere
    assert all(t.rows_deleted == 0 for t in erase().tables)


def test_an_erasure_with_the_online_store_down_touches_nothing(
    store_settings: Settings, spark: Any, applied: features.ApplyReport, ids: dict[str, str]
) -> None:
    from lakehouse.errors import ServiceError
    from lakehouse.privacy.erase import erase_subject

    down = store_settings.model_copy(
        update={"redis": store_settings.redis.model_copy(update={"port": store_settings.redis.port + 1})}
    )
    before = DeltaTable(store_settings.table_path("gold", "user_history")).version()
    with pytest.raises(ServiceError, match="does not answer"):
        erase_subject(
            spark,
            down,
            "user",
            ids["u2"],
            "test",
            tables=["gold.user_history"],
            copies=[features.OnlineCopies(down)],
        )
    assert DeltaTable(store_settings.table_path("gold", "user_history")).version() == before
