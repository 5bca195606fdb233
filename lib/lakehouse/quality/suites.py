"""Load expectation suites from the repo and check that every expectation declares a usable action."""

from __future__ import annotations

import json
import logging
from functools import lru_cache
from pathlib import Path
from typing import Any, Final

import great_expectations as gx
from great_expectations.expectations.expectation import (
    ColumnMapExpectation,
    ColumnPairMapExpectation,
    Expectation,
    MulticolumnMapExpectation,
)

from lakehouse.config import Settings
from lakehouse.errors import ConfigError

log = logging.getLogger(__name__)

ACTIONS: Final = ("warn", "drop", "fail", "quarantine")
# Actions that route individual rows: only expectations that judge each row can carry them.
ROW_ACTIONS: Final = ("drop", "quarantine")
_ROW_LEVEL: Final = (ColumnMapExpectation, ColumnPairMapExpectation, MulticolumnMapExpectation)
_LAYERS: Final = ("bronze", "silver", "gold", "audit")


def _split(table: str) -> tuple[str, str]:
    layer, _, name = table.partition(".")
    if layer not in _LAYERS or not name:
        raise ConfigError(f"table {table!r} is not '<layer>.<name>' with layer in {', '.join(_LAYERS)}")
    return layer, name


def suite_path(settings: Settings, table: str) -> Path:
    """The JSON file of a table's suite, e.g. ``quality/suites/silver/events.json`` for ``silver.events``."""
    layer, name = _split(table)
    return settings.root / settings.quality.suites_dir / layer / f"{name}.json"


def list_suites(settings: Settings) -> list[str]:
    """Every table that has a suite in the repo, as ``"<layer>.<name>"``, sorted."""
    base = settings.root / settings.quality.suites_dir
    return sorted(f"{path.parent.name}.{path.stem}" for path in base.glob("*/*.json"))


def rule_name(expectation: Expectation) -> str:
    """The stable name of an expectation: ``meta.rule``, else ``<type>:<column(s)>``."""
    meta = expectation.meta or {}
    if meta.get("rule"):
        return str(meta["rule"])
    return f"{expectation.expectation_type}:{expectation_column(expectation) or 'table'}"


def expectation_column(expectation: Expectation) -> str | None:
    """The column(s) an expectation looks at, comma-joined (None for table-level expectations)."""
    kwargs = expectation.configuration.kwargs
    if kwargs.get("column"):
        return str(kwargs["column"])
    if kwargs.get("column_A"):
        return f"{kwargs['column_A']},{kwargs['column_B']}"
    if kwargs.get("column_list"):
        return ",".join(str(c) for c in kwargs["column_list"])
    return None


def expectation_columns(expectation: Expectation) -> list[str]:
    """The columns an expectation reads (empty for table-level ones such as a row count)."""
    kwargs = expectation.configuration.kwargs
    names = [
        kwargs.get("column"),
        kwargs.get("column_A"),
        kwargs.get("column_B"),
        *kwargs.get("column_list", []),
    ]
    return [str(n) for n in names if n]


def is_row_level(expectation: Expectation) -> bool:
    """True when the expectation judges each row (so its failing rows can be dropped or quarantined)."""
    return isinstance(expectation, _ROW_LEVEL)


def action_of(expectation: Expectation) -> str:
    """The declared action (``meta.action``) of a loaded, checked expectation."""
    return str((expectation.meta or {})["action"])


def parse_suite(document: dict[str, Any], source: str) -> gx.ExpectationSuite:
    """Build and check a suite from its JSON document; ``source`` names it in error messages.

    Raises:
        ConfigError: an unknown expectation type, a missing or unknown ``meta.action``,
            ``drop``/``quarantine`` on an expectation that does not judge rows, or a rule name used twice.
    """
    if not isinstance(document, dict) or not isinstance(document.get("expectations"), list):
        raise ConfigError(f"{source}: a suite is a JSON object with a list 'expectations'")
    name = str(document.get("name") or Path(source).stem)
    expectations: list[Expectation] = []
    seen: set[str] = set()
    for index, entry in enumerate(document["expectations"]):
        label = (
            f"{source}: expectation #{index} ({entry.get('type') if isinstance(entry, dict) else entry!r})"
        )
        try:
            expectation = _configuration(entry).to_domain_obj()
        except ConfigError:
            raise
        except Exception as exc:  # GX raises several types for an unknown type or bad kwargs
            raise ConfigError(f"{label}: not a valid expectation: {exc}") from exc
        action = (expectation.meta or {}).get("action")
        if action not in ACTIONS:
            raise ConfigError(f"{label}: meta.action must be one of {', '.join(ACTIONS)}, got {action!r}")
        if action in ROW_ACTIONS and not is_row_level(expectation):
            raise ConfigError(
                f"{label}: action {action!r} needs a row-level (column map) expectation; "
                f"use warn or fail for {expectation.expectation_type}"
            )
        rule = rule_name(expectation)
        if rule in seen:
            raise ConfigError(f"{label}: rule name {rule!r} is used twice in the suite; give meta.rule")
        seen.add(rule)
        expectation.meta = {**(expectation.meta or {}), "rule": rule}
        expectations.append(expectation)
    suite = gx.ExpectationSuite(name=name, expectations=expectations, meta=document.get("meta") or {})
    return suite


def _configuration(entry: Any) -> Any:
    from great_expectations.expectations.expectation_configuration import ExpectationConfiguration

    if not isinstance(entry, dict) or "type" not in entry:
        raise ConfigError(f"expectation {entry!r} has no 'type'")
    return ExpectationConfiguration(
        type=entry["type"], kwargs=entry.get("kwargs") or {}, meta=entry.get("meta")
    )


@lru_cache(maxsize=128)
def _load(path: str, mtime: float) -> gx.ExpectationSuite:
    try:
        document = json.loads(Path(path).read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not valid JSON ({exc})") from exc
    return parse_suite(document, path)


def load_suite(settings: Settings, table: str) -> gx.ExpectationSuite:
    """The checked expectation suite of a table, e.g. ``load_suite(settings, "silver.events")``.

    Raises:
        ConfigError: the table has no suite file, or the suite is invalid (the message names file and
            expectation).
    """
    path = suite_path(settings, table)
    if not path.is_file():
        raise ConfigError(f"no expectation suite for {table}: create {path}")
    return _load(str(path), path.stat().st_mtime)
