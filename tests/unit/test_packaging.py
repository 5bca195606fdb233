"""The install files agree with each other: pyproject, constraints, environment.yml and the Maven poms."""

from __future__ import annotations

import tomllib
import xml.etree.ElementTree as ET
from importlib.metadata import version
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement

from lakehouse.jvm import artifact_name, prune_provided

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
POM_NS = {"m": "http://maven.apache.org/POM/4.0.0"}


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _pins() -> dict[str, str]:
    pins = {}
    for requirement in map(Requirement, _pyproject()["project"]["dependencies"]):
        (spec,) = requirement.specifier
        pins[requirement.name.lower().replace("_", "-")] = spec.version
    return pins


def _pom_properties(module: str) -> dict[str, str]:
    tree = ET.parse(ROOT / "jvm" / module / "pom.xml")
    properties = tree.getroot().find("m:properties", POM_NS)
    assert properties is not None
    return {child.tag.split("}")[1]: (child.text or "") for child in properties}


def test_environment_yml_agrees_with_pyproject() -> None:
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    deps = env["dependencies"]
    python = next(d for d in deps if isinstance(d, str) and d.startswith("python="))
    assert python == "python=3.11"
    # conda's python=3.11 is the newest 3.11; pip needs 3.11.5 or newer (the pinned soupsieve 4.1 requires it)
    assert _pyproject()["project"]["requires-python"] == ">=3.11.5,<3.12"
    assert any(isinstance(d, str) and d.startswith("openjdk=17") for d in deps)
    assert "maven" in deps
    pip_section = next(d["pip"] for d in deps if isinstance(d, dict))
    assert '-e ".[test]"' in pip_section and "-c constraints.txt" in pip_section


def test_constraints_pin_every_direct_dependency_to_the_same_version() -> None:
    constraints = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if "==" in line:
            name, pinned = line.split("==")
            constraints[name.lower().replace("_", "-")] = pinned.strip()
    for name, pinned in _pins().items():
        assert constraints.get(name) == pinned, (
            f"{name}: pyproject {pinned}, constraints {constraints.get(name)}"
        )


def test_installed_versions_are_the_pinned_ones() -> None:
    for name in ("pyspark", "delta-spark", "ploomber", "papermill", "panel", "mlflow"):
        assert version(name) == _pins()[name], name


def test_jvm_artifacts_match_the_python_wheels() -> None:
    spark = _pom_properties("spark")
    assert spark["spark.version"] == version("pyspark")
    assert spark["spark.binary"] == ".".join(version("pyspark").split(".")[:2])
    assert spark["delta.version"] == version("delta-spark")
    assert spark["scala.binary"] == "2.13"
    assert _pom_properties("kafka")["kafka.version"].startswith("4.")


@pytest.mark.parametrize(
    ("jar", "artifact"),
    [
        ("jackson-core-2.13.5.jar", "jackson-core"),
        ("delta-spark_4.2_2.13-4.4.0.jar", "delta-spark_4.2_2.13"),
        ("spark-sql-kafka-0-10_2.13-4.2.0.jar", "spark-sql-kafka-0-10_2.13"),
        ("zstd-jni-1.5.7-3.jar", "zstd-jni"),
        ("javassist-3.30.2-GA.jar", "javassist"),
    ],
)
def test_artifact_names(jar: str, artifact: str) -> None:
    assert artifact_name(jar) == artifact


def test_jars_the_wheel_ships_are_pruned(tmp_path: Path) -> None:
    fetched, wheel = tmp_path / "fetched", tmp_path / "wheel"
    fetched.mkdir()
    wheel.mkdir()
    for name in ("delta-spark_4.2_2.13-4.4.0.jar", "jackson-core-2.13.5.jar", "commons-logging-1.3.0.jar"):
        (fetched / name).write_bytes(b"")
    (wheel / "jackson-core-2.21.2.jar").write_bytes(b"")
    removed = prune_provided(fetched, wheel)
    assert removed == ["commons-logging-1.3.0.jar", "jackson-core-2.13.5.jar"]
    assert [p.name for p in fetched.iterdir()] == ["delta-spark_4.2_2.13-4.4.0.jar"]
