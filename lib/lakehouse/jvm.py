"""JVM artifacts: fetched by Maven from the poms under ``jvm/`` into ``jvm/target/``, never at Spark start.

Two classpaths are kept apart because they disagree on Scala, Jackson and kafka-clients versions:
``spark-jars`` (Delta, the Kafka source/sink, the JDBC driver — handed to Spark with ``spark.jars``) and
``kafka-jars`` (the broker and its tools, run as a plain ``java -cp``).
"""

from __future__ import annotations

import hashlib
import logging
import re
import shutil
import subprocess
from pathlib import Path

import pyspark

from lakehouse.errors import ServiceError

log = logging.getLogger(__name__)

CLASSPATHS = {"spark-jars": "spark", "kafka-jars": "kafka"}
# Same classes under another name in the wheel (jcl-over-slf4j replaces commons-logging).
_ALSO_PROVIDED = {"commons-logging"}
_VERSIONED = re.compile(r"^(?P<artifact>.+)-\d+(?:\.\d+)+[\w.\-]*\.jar$")


def artifact_name(jar: str) -> str:
    """``jackson-core-2.13.5.jar`` -> ``jackson-core``."""
    match = _VERSIONED.match(jar)
    return match.group("artifact") if match else jar.removesuffix(".jar")


def pyspark_jars() -> Path:
    return Path(pyspark.__file__).parent / "jars"


def prune_provided(folder: Path, provided: Path) -> list[str]:
    """Delete jars in ``folder`` whose artifact the pyspark wheel already ships (the wheel's version wins).

    Returns:
        The names of the removed jars.
    """
    shipped = {artifact_name(jar.name) for jar in provided.glob("*.jar")} | _ALSO_PROVIDED
    removed = []
    for jar in sorted(folder.glob("*.jar")):
        if artifact_name(jar.name) in shipped:
            jar.unlink()
            removed.append(jar.name)
    return removed


def _fingerprint(pom: Path) -> str:
    return hashlib.sha256(pom.read_bytes()).hexdigest()


def fetch_jars(root: Path, force: bool = False) -> dict[str, int]:
    """Copy the artifacts of each pom into ``jvm/target/<classpath>``; skipped when the pom is unchanged.

    Returns:
        The number of jars in each classpath folder.

    Raises:
        ServiceError: Maven is missing or could not resolve the artifacts.
    """
    mvn = shutil.which("mvn")
    counts: dict[str, int] = {}
    for folder_name, module in CLASSPATHS.items():
        pom = root / "jvm" / module / "pom.xml"
        target = root / "jvm" / "target" / folder_name
        stamp = target / ".pom.sha256"
        if not force and stamp.is_file() and stamp.read_text() == _fingerprint(pom):
            counts[folder_name] = len(list(target.glob("*.jar")))
            continue
        if mvn is None:
            raise ServiceError("Maven (mvn) is not installed: run `make setup` or `apt-get install maven`")
        if target.exists():
            shutil.rmtree(target)
        target.mkdir(parents=True)
        command = [
            mvn,
            "-q",
            "-B",
            "-f",
            str(pom),
            "dependency:copy-dependencies",
            "-DincludeScope=runtime",
            f"-DoutputDirectory={target}",
        ]
        log.info("fetching %s with Maven", folder_name)
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            tail = "\n".join((result.stdout + result.stderr).splitlines()[-15:])
            raise ServiceError(f"Maven could not fetch {pom}:\n{tail}")
        if folder_name == "spark-jars":
            removed = prune_provided(target, pyspark_jars())
            log.info("dropped %d jars pyspark already ships", len(removed))
        stamp.write_text(_fingerprint(pom))
        counts[folder_name] = len(list(target.glob("*.jar")))
    return counts
