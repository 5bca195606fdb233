"""DAG wall time: shared Spark Connect server ÷ one classic Spark session per notebook; rebuild time; memory.

    .venv/bin/python benchmarks/dag.py [--env local]

Runs `lakehouse build --force` twice on the same lake — once with every notebook attaching to the running
Spark Connect server, once with LAKEHOUSE_SPARK_MODE=classic so each notebook starts its own local Spark —
then a rebuild with nothing new. While the Connect build runs, it samples the resident memory of the whole
local stack (services plus the notebook kernels). Targets: ratio <= 0.5, rebuild <= 5 s, memory <= 6 GiB.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

from lakehouse.config import load_settings
from lakehouse.simulate import simulate_to_kafka
from lakehouse.stack import ServiceManager, ensure_topics, tree_rss

LAKEHOUSE = str(Path(sys.executable).parent / "lakehouse")


def _build(env: str, *extra: str, spark_mode: str | None = None) -> float:
    environ = {**os.environ, "LAKEHOUSE_ENV": env}
    # The services' health checks attached to Spark Connect in this process: do not hand that on.
    for variable in ("SPARK_CONNECT_MODE_ENABLED", "SPARK_REMOTE"):
        environ.pop(variable, None)
    if spark_mode:
        environ["LAKEHOUSE_SPARK_MODE"] = spark_mode
    started = time.perf_counter()
    subprocess.run([LAKEHOUSE, "build", *extra], env=environ, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


class MemorySampler(threading.Thread):
    """Peak RSS of the service process trees plus every Jupyter kernel on the machine."""

    def __init__(self, manager: ServiceManager) -> None:
        super().__init__(daemon=True)
        self.manager, self.peak, self.running = manager, 0, True

    def run(self) -> None:
        while self.running:
            total = sum(
                tree_rss(pid)
                for name in ("kafka", "spark", "mlflow", "dashboard")
                if (pid := self.manager.pid(name))
            )
            for proc in psutil.process_iter(["cmdline", "memory_info"]):
                cmdline = " ".join(proc.info["cmdline"] or [])
                if "ipykernel_launcher" in cmdline and proc.info["memory_info"]:
                    total += proc.info["memory_info"].rss
            self.peak = max(self.peak, total)
            time.sleep(0.5)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--env", default="local")
    args = parser.parse_args()
    settings = load_settings(args.env)
    manager = ServiceManager(settings)
    manager.start(["kafka", "spark", "mlflow", "dashboard"])
    ensure_topics(settings)
    if not (settings.workspace / "lake" / "bronze").exists():
        simulate_to_kafka(settings)
        _build(args.env)

    sampler = MemorySampler(manager)
    sampler.start()
    connect = _build(args.env, "--force")
    sampler.running = False
    classic = _build(args.env, "--force", spark_mode="classic")
    rebuild = _build(args.env)

    print(f"DAG, shared Spark Connect:     {connect:6.1f} s")
    print(f"DAG, classic Spark per notebook: {classic:6.1f} s")
    print(f"ratio connect / classic = {connect / classic:.2f}  (target <= 0.5)")
    print(f"rebuild with nothing new: {rebuild:.1f} s  (target <= 5 s)")
    print(f"peak RSS of the local stack during the DAG: {sampler.peak / 2**30:.2f} GiB  (target <= 6 GiB)")


if __name__ == "__main__":
    main()
