"""No-op build: `lakehouse build` with nothing new, end to end (the CLI process included).

    .venv/bin/python benchmarks/noop_build.py [--env local] [--repeat 3]

Starts the services a build checks (Kafka, PostgreSQL, …; safe when they run), builds once so everything is up
to date (after `make demo` that runs nothing), then times `lakehouse build` --repeat times. Each of those must
run no task: the rebuild reads topic end offsets, the database's fingerprints and the Delta logs, and never
imports Ploomber or starts Spark. Target: <= 5 s.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from lakehouse.config import load_settings
from lakehouse.stack import ServiceManager, ensure_topics

LAKEHOUSE = str(Path(sys.executable).parent / "lakehouse")
SERVICES = ["kafka", "spark", "postgres", "mqtt", "fx_api", "mlflow"]


def _build(env: str) -> tuple[float, str]:
    environ = {**os.environ, "LAKEHOUSE_ENV": env}
    started = time.perf_counter()
    result = subprocess.run(
        [LAKEHOUSE, "build"], env=environ, check=True, capture_output=True, text=True, timeout=3600
    )
    return time.perf_counter() - started, result.stdout


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--env", default="local")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    settings = load_settings(args.env)
    ServiceManager(settings).start(SERVICES)
    ensure_topics(settings)
    settle, _ = _build(args.env)
    print(f"settling build (runs whatever was new): {settle:.1f} s")
    times = []
    for _ in range(args.repeat):
        seconds, output = _build(args.env)
        ran = [line for line in output.splitlines() if line.startswith(("ran ", "failed "))]
        if ran:
            sys.exit("not a no-op build, tasks ran:\n" + "\n".join(ran))
        times.append(seconds)
    print(f"no-op build: median {statistics.median(times):.2f} s, best {min(times):.2f} s  (target <= 5 s)")


if __name__ == "__main__":
    main()
