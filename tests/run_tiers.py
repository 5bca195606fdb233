"""``make test``: the unit tier beside the service tiers, as two pytest runs at once; one verdict.

The unit tier starts no shared service (a classic local Spark session of its own, in its own workspace; the
fault scenarios, marked ``scenario``, start and kill a stack of their own on ports of their own) and the
service tiers (integration, dag, browser, nbval) leave a share of the two cores idle while they wait on
Kafka, the Connect server and notebook kernels: run side by side, the suite takes about the time of the
service tiers alone. The unit run is niced, so the service tiers' waits on real services keep the CPU they
had; its output goes to a log printed when both are done. Both runs' summaries are summed into one closing
line; the exit status is the first failure's (0 only when both passed).

    .venv/bin/python tests/run_tiers.py [pytest args for both runs …]
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMMON = ["-p", "no:cacheprovider", "--durations=30"]


def _totals(report: Path) -> dict[str, int]:
    """passed / failed / errors / skipped of a JUnit XML report (empty when the run wrote none)."""
    if not report.is_file():
        return {}
    suites = ET.parse(report).getroot()
    counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    for suite in suites.iter("testsuite"):
        for key in counts:
            counts[key] += int(suite.get(key, 0))
    failed = counts["failures"]
    return {
        "passed": counts["tests"] - failed - counts["errors"] - counts["skipped"],
        "failed": failed,
        "errors": counts["errors"],
        "skipped": counts["skipped"],
    }


def main(extra: list[str]) -> int:
    reports = ROOT / ".workspace" / "test-reports"
    reports.mkdir(parents=True, exist_ok=True)
    unit_xml, service_xml, unit_log = reports / "unit.xml", reports / "services.xml", reports / "unit.log"
    for stale in (unit_xml, service_xml):
        stale.unlink(missing_ok=True)
    python = sys.executable
    started = time.monotonic()
    with unit_log.open("w") as log:
        unit = subprocess.Popen(
            [
                "nice",
                "-n",
                "10",
                python,
                "-m",
                "pytest",
                "-m",
                "unit or scenario",
                "tests",
                *COMMON,
                f"--junitxml={unit_xml}",
                *extra,
            ],
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "LAKEHOUSE_RUN_ID": f"unit-{os.getpid()}"},
        )
        print(f"unit tier: running beside the service tiers (log: {unit_log})", flush=True)
        services = subprocess.call(
            [
                python,
                "-m",
                "pytest",
                "-m",
                "not unit and not scenario",
                "tests",
                "notebooks",
                "--nbval-lax",
                *COMMON,
                f"--junitxml={service_xml}",
                *extra,
            ],
            cwd=ROOT,
        )
        units = unit.wait()
    print(f"\n===== unit tier (run beside the service tiers, exit {units}) =====", flush=True)
    sys.stdout.write(unit_log.read_text(errors="replace"))
    totals = [_totals(unit_xml), _totals(service_xml)]
    summed = {key: sum(t.get(key, 0) for t in totals) for key in ("passed", "failed", "errors", "skipped")}
    minutes = (time.monotonic() - started) / 60
    print(f"\nunit tier exit {units}, service tiers exit {services}; wall time {minutes:.1f} min")
    print(
        f"{summed['passed']} passed, {summed['failed'] + summed['errors']} failed, {summed['skipped']} skipped",
        flush=True,
    )
    if any(not t for t in totals):
        print("a tier wrote no report: it did not run to the end", flush=True)
        return units or services or 1
    return units or services


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
