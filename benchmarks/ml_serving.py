"""The ML loop's serving paths and training-set build, each against a baseline run side by side.

Run after `make demo` (a champion, materialized features, the model's endpoint up):

    .venv/bin/python benchmarks/ml_serving.py --env local [--lookups 300] [--label-rows 1000000]

1. Online feature lookup (Feast ``get_online_features`` from Redis) for 1 and for 100 entities, p50/p99;
   baseline: the same hashes read with one redis-py pipeline of ``HGETALL`` (what Feast does underneath,
   without its deserialisation). Target: p99 ≤ 10 ms for one entity.
2. Scoring one entity end to end (features from Redis, then the champion's ``mlflow models serve``
   endpoint), p50/p99; baseline: the champion loaded in process predicting the same row.
3. Building a point-in-time training set for ``--label-rows`` label rows drawn from gold.sessions
   (Feast's Spark store over Spark Connect, written as Parquet and read into pandas); baseline: the same
   as-of join written by hand in Spark SQL (newest row per label by a window), on the same materialized
   label rows, reading the same Delta tables, written and read the same way.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.dataset


def percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return statistics.median(ordered), p99


def timed(action: Callable[[], Any], repeat: int) -> list[float]:
    action()  # warm: connections, caches, first-call imports
    samples = []
    for _ in range(repeat):
        began = time.perf_counter()
        action()
        samples.append((time.perf_counter() - began) * 1000)
    return samples


def report(name: str, ours: list[float], baseline: list[float]) -> None:
    (p50, p99), (b50, b99) = percentiles(ours), percentiles(baseline)
    print(
        f"{name:<34} p50 {p50:8.2f} ms  p99 {p99:8.2f} ms  | baseline p50 {b50:8.2f} ms  p99 {b99:8.2f} ms"
        f"  | ratio p99 {p99 / b99:6.1f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--env", default=None)
    parser.add_argument("--model", default="conversion_propensity")
    parser.add_argument("--lookups", type=int, default=300)
    parser.add_argument("--label-rows", type=int, default=1_000_000)
    parser.add_argument("--part", choices=("all", "serving", "training"), default="all")
    args = parser.parse_args()

    from lakehouse.config import load_settings
    from lakehouse.ml import training

    settings = load_settings(args.env)
    training.use_mlflow(settings)  # models:/…@champion resolves in the environment's store
    spec = training.load_model_spec(settings, args.model)
    if args.part in ("all", "serving"):
        serving_paths(settings, spec, args.lookups)
    if args.part in ("all", "training"):
        training_set_build(settings, spec, args.label_rows)


def serving_paths(settings: Any, spec: Any, lookups: int) -> None:
    """1. online lookups and 2. scoring one entity through the endpoint, for the 100 latest sessions."""
    import mlflow.pyfunc
    import redis
    from deltalake import DeltaTable

    from lakehouse.ml import features as fs
    from lakehouse.ml import serving, training
    from lakehouse.stack.model_serving import endpoint_url

    store = fs.feature_store(settings)
    sessions = DeltaTable(settings.table_path("gold", "sessions")).to_pandas(
        columns=["session_id", "user_id", "session_end"]
    )
    recent = sessions.sort_values("session_end").tail(100)
    rows = [
        {"session_id": s, "user_id": u} for s, u in zip(recent["session_id"], recent["user_id"], strict=True)
    ]
    references = list(spec.features)
    one = timed(
        lambda: store.get_online_features(features=references, entity_rows=rows[:1]).to_dict(), lookups
    )
    hundred = timed(
        lambda: store.get_online_features(features=references, entity_rows=rows).to_dict(), lookups // 3
    )
    client = redis.Redis(host=settings.redis.host, port=settings.redis.port)
    keys = [key for key in client.scan_iter(count=1000, _type="hash")][:200]  # Feast's entity hashes

    def raw(count: int) -> Callable[[], Any]:
        def read() -> Any:
            pipe = client.pipeline(transaction=False)
            for key in keys[: 2 * count]:  # two views: one hash per entity and view
                pipe.hgetall(key)
            return pipe.execute()

        return read

    print(f"online lookups ({len(references)} features of 2 views, Redis at {settings.redis.url})")
    report("get_online_features, 1 entity", one, timed(raw(1), lookups))
    report("get_online_features, 100 entities", hundred, timed(raw(100), lookups // 3))

    url = endpoint_url(settings, spec.registered_name)
    scorer = serving.OnlineScorer(settings, spec, url=url)
    champion = mlflow.pyfunc.load_model(f"models:/{spec.registered_name}@champion")
    inputs = scorer.features(rows[:1])[training.feature_columns(spec)]
    end_to_end = timed(lambda: scorer.score(rows[:1]), lookups)
    endpoint_only = timed(lambda: serving.invoke(url, inputs), lookups)
    in_process = timed(lambda: champion.predict(inputs), lookups)
    print(f"scoring ({url})")
    report("Redis features + endpoint, 1 entity", end_to_end, in_process)
    report("endpoint alone, 1 row", endpoint_only, in_process)


def training_set_build(settings: Any, spec: Any, label_rows: int) -> None:
    """3. a training set of ``label_rows`` rows: the same label rows, in Spark, for both joins."""
    from lakehouse.ml import features as fs

    with tempfile.TemporaryDirectory(dir=settings.workspace) as scratch:
        labels = bench_labels(settings, label_rows, Path(scratch) / "labels")
        began = time.perf_counter()
        built = fs.training_set(settings, labels, list(spec.features), timestamp="session_end")
        feast_seconds = time.perf_counter() - began
        began = time.perf_counter()
        hand = hand_written_join(settings, labels, Path(scratch) / "hand")
        hand_seconds = time.perf_counter() - began
    column = "user_history__sessions_28d"
    print(f"training set, {label_rows:,} label rows, written by Spark and read into pandas")
    print(
        f"{'Feast get_historical_features':<34} {feast_seconds:8.1f} s ({len(built.frame):,} rows, "
        f"{built.frame[column].notna().sum():,} with {column})  | hand-written Spark SQL as-of join "
        f"{hand_seconds:8.1f} s ({len(hand):,} rows, {hand['sessions_28d'].notna().sum():,})  | ratio "
        f"{feast_seconds / hand_seconds:5.2f}"
    )


def bench_labels(settings: Any, count: int, folder: Path) -> Any:
    """``count`` label rows drawn from gold.sessions (ends moved up to an hour later), written once as
    Parquet so both joins read the same materialized rows."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    from lakehouse.spark import get_spark

    spark = get_spark(settings)
    sessions = (
        spark.read.format("delta")
        .load(settings.table_path("gold", "sessions"))
        .select("session_id", "user_id", "session_end")
        .withColumn("pick", F.row_number().over(Window.orderBy("session_id")) - 1)
    )
    total = sessions.count()
    picks = spark.range(count).select(
        "id", (F.abs(F.xxhash64("id")) % total).alias("pick"), F.floor(F.rand(7) * 3600).alias("offset")
    )
    rows = picks.join(F.broadcast(sessions), "pick").select(
        "session_id",
        "user_id",
        (F.col("session_end") + F.make_interval(secs=F.col("offset"))).alias("session_end"),
    )
    rows.write.mode("overwrite").parquet(str(folder))
    return spark.read.parquet(str(folder))


def hand_written_join(settings: Any, labels: Any, folder: Path) -> pd.DataFrame:
    """The as-of join Feast does, by hand: per label row, the newest user_history row known by then (28 d)
    and its own session's row (2 d), written by Spark and read into pandas as Feast's is."""
    from lakehouse.spark import get_spark

    spark = get_spark(settings)
    labels.createOrReplaceTempView("bench_labels")
    history, sessions = settings.table_path("gold", "user_history"), settings.table_path("gold", "sessions")
    query = f"""
    WITH labelled AS (SELECT *, monotonically_increasing_id() AS row_id FROM bench_labels),
    candidates AS (
      SELECT l.row_id, h.sessions_7d, h.sessions_28d, h.page_views_28d, h.add_to_carts_28d,
             h.converted_sessions_28d, h.conversion_rate_28d, h.sessions_to_date, h.days_since_first_session,
             row_number() OVER (PARTITION BY l.row_id ORDER BY h.as_of DESC) AS newest
      FROM labelled l JOIN delta.`{history}` h
        ON h.user_id = l.user_id AND h.as_of <= l.session_end
       AND h.as_of > l.session_end - INTERVAL 28 DAYS
    )
    SELECT l.session_id, l.user_id, l.session_end, c.* EXCEPT (row_id, newest),
           s.platform, s.device_type, s.os, s.channel, s.country, s.page_views, s.product_views, s.searches,
           s.add_to_carts
    FROM labelled l
    LEFT JOIN (SELECT * FROM candidates WHERE newest = 1) c ON c.row_id = l.row_id
    LEFT JOIN delta.`{sessions}` s
      ON s.session_id = l.session_id AND s.session_end <= l.session_end
     AND s.session_end > l.session_end - INTERVAL 2 DAYS
    """
    spark.sql(query).write.mode("overwrite").parquet(str(folder))
    frame: pd.DataFrame = pyarrow.dataset.dataset(str(folder), format="parquet").to_table().to_pandas()
    return frame


if __name__ == "__main__":
    main()
