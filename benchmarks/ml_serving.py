"""The ML loop's serving paths and training-set build, each against a baseline run side by side.

Run after `make demo` (a champion, materialized features, the model's endpoint up):

    .venv/bin/python benchmarks/ml_serving.py --env local [--lookups 300] [--label-rows 1000000]

1. Online feature lookup (Feast ``get_online_features`` from Redis) for 1 and for 100 entities, p50/p99;
   baseline: the same hashes read with one redis-py pipeline of ``HGETALL`` (what Feast does underneath,
   without its deserialisation). Target: p99 ≤ 10 ms for one entity.
2. Scoring one entity end to end (features from Redis, then the champion's ``mlflow models serve``
   endpoint), p50/p99; baseline: the champion loaded in process predicting the same row.
3. Building a point-in-time training set for ``--label-rows`` label rows (Feast's Spark store over Spark
   Connect); baseline: the same as-of join written by hand in Spark SQL (window over the union), timed on
   the same rows, reading the same Delta tables.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd


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
    args = parser.parse_args()

    import mlflow.pyfunc
    import redis
    from deltalake import DeltaTable

    from lakehouse.config import load_settings
    from lakehouse.ml import features as fs
    from lakehouse.ml import serving, training
    from lakehouse.stack.model_serving import endpoint_url

    settings = load_settings(args.env)
    training.use_mlflow(settings)  # models:/…@champion resolves in the environment's store
    spec = training.load_model_spec(settings, args.model)
    store = fs.feature_store(settings)
    sessions = DeltaTable(settings.table_path("gold", "sessions")).to_pandas(
        columns=["session_id", "user_id", "session_end"]
    )
    recent = sessions.sort_values("session_end").tail(100)
    rows = recent[["session_id", "user_id"]].to_dict("records")

    # 1. online lookups
    references = list(spec.features)
    one = timed(
        lambda: store.get_online_features(features=references, entity_rows=rows[:1]).to_dict(), args.lookups
    )
    hundred = timed(
        lambda: store.get_online_features(features=references, entity_rows=rows).to_dict(), args.lookups // 3
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
    report("get_online_features, 1 entity", one, timed(raw(1), args.lookups))
    report("get_online_features, 100 entities", hundred, timed(raw(100), args.lookups // 3))

    # 2. scoring one entity through the endpoint
    url = endpoint_url(settings, spec.registered_name)
    scorer = serving.OnlineScorer(settings, spec, url=url)
    champion = mlflow.pyfunc.load_model(f"models:/{spec.registered_name}@champion")
    inputs = scorer.features(rows[:1])[training.feature_columns(spec)]
    end_to_end = timed(lambda: scorer.score(rows[:1]), args.lookups)
    endpoint_only = timed(lambda: serving.invoke(url, inputs), args.lookups)
    in_process = timed(lambda: champion.predict(inputs), args.lookups)
    print(f"scoring ({url})")
    report("Redis features + endpoint, 1 entity", end_to_end, in_process)
    report("endpoint alone, 1 row", endpoint_only, in_process)

    # 3. a training set of --label-rows rows
    rng = np.random.default_rng(7)
    picks = rng.integers(0, len(sessions), args.label_rows)
    labels = sessions.iloc[picks][["session_id", "user_id", "session_end"]].reset_index(drop=True)
    labels["session_end"] = pd.to_datetime(labels["session_end"], utc=True) + pd.to_timedelta(
        rng.integers(0, 3600, args.label_rows), "s"
    )
    began = time.perf_counter()
    built = fs.training_set(settings, labels, references, timestamp="session_end")
    feast_seconds = time.perf_counter() - began
    began = time.perf_counter()
    hand_rows = hand_written_join(settings, labels)
    hand_seconds = time.perf_counter() - began
    print(f"training set, {args.label_rows:,} label rows")
    print(
        f"{'Feast get_historical_features':<34} {feast_seconds:8.1f} s ({len(built.frame):,} rows)  | "
        f"hand-written Spark SQL as-of join {hand_seconds:8.1f} s ({hand_rows:,} rows)  | ratio "
        f"{feast_seconds / hand_seconds:5.2f}"
    )


def hand_written_join(settings: Any, labels: pd.DataFrame) -> int:
    """The as-of join Feast does, by hand: per label row, the newest user_history row known by then (28 d)
    and its own session's row; counted on the server."""
    from lakehouse.spark import get_spark

    spark = get_spark(settings)
    spark.createDataFrame(labels).createOrReplaceTempView("bench_labels")
    history, sessions = settings.table_path("gold", "user_history"), settings.table_path("gold", "sessions")
    query = f"""
    WITH labelled AS (SELECT *, monotonically_increasing_id() AS row_id FROM bench_labels),
    candidates AS (
      SELECT l.row_id, h.*, row_number() OVER (PARTITION BY l.row_id ORDER BY h.as_of DESC) AS newest
      FROM labelled l LEFT JOIN delta.`{history}` h
        ON h.user_id = l.user_id AND h.as_of <= l.session_end
       AND h.as_of > l.session_end - INTERVAL 28 DAYS
    )
    SELECT count(*) FROM labelled l
    LEFT JOIN (SELECT * FROM candidates WHERE newest = 1) c ON c.row_id = l.row_id
    LEFT JOIN delta.`{sessions}` s
      ON s.session_id = l.session_id AND s.session_end <= l.session_end
     AND s.session_end > l.session_end - INTERVAL 2 DAYS
    """
    return int(spark.sql(query).collect()[0][0])


if __name__ == "__main__":
    main()
