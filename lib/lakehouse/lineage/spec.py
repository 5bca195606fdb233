"""Validating events against the OpenLineage JSON Schema (the spec's ``OpenLineage.json`` and facet schemas).

No installed package ships the spec files (neither openlineage-python nor the openlineage-java/-spark jars),
so the folder holding them is given by ``$OPENLINEAGE_SPEC_DIR`` (a checkout's ``spec/`` folder, or any folder
with ``OpenLineage.json`` and the ``facets/*.json`` files, flat or in ``facets/``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lakehouse.errors import ConfigError

SPEC_VARIABLE = "OPENLINEAGE_SPEC_DIR"


def find_spec_dir(candidates: tuple[Path, ...] = ()) -> Path | None:
    """The first folder holding ``OpenLineage.json``: ``$OPENLINEAGE_SPEC_DIR``, then ``candidates``."""
    found = [Path(os.environ[SPEC_VARIABLE])] if os.environ.get(SPEC_VARIABLE) else []
    for folder in (*found, *candidates):
        if (folder / "OpenLineage.json").is_file():
            return folder
    return None


class SpecValidator:
    """Validates a serialized event against the core schema and every facet against its own schema.

    A facet whose ``_schemaURL`` names no schema in the folder (a custom facet such as ``delta``) is checked
    against the core schema's base facet definitions only.
    """

    def __init__(self, spec_dir: Path) -> None:
        from jsonschema import Draft202012Validator
        from referencing import Registry, Resource

        schemas: dict[str, dict[str, Any]] = {}
        for path in sorted(spec_dir.rglob("*.json")):
            try:
                document = json.loads(path.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError):
                continue
            if isinstance(document, dict) and str(document.get("$id", "")).startswith(
                "https://openlineage.io"
            ):
                schemas[document["$id"]] = document
        core = next((doc for uri, doc in schemas.items() if uri.endswith("/OpenLineage.json")), None)
        if core is None:
            raise ConfigError(f"{spec_dir} holds no OpenLineage.json with an $id")
        self.schemas = schemas
        self.registry: Registry[Any] = Registry().with_resources(
            (uri, Resource.from_contents(doc)) for uri, doc in schemas.items()
        )
        self._validator_class = Draft202012Validator
        self.core = core

    def _errors(self, schema: Mapping[str, Any], instance: Any) -> list[str]:
        validator = self._validator_class(
            schema, registry=self.registry, format_checker=self._validator_class.FORMAT_CHECKER
        )
        return [
            f"{'/'.join(str(p) for p in error.absolute_path) or '<root>'}: {error.message}"
            for error in validator.iter_errors(instance)
        ]

    def facet_schema_known(self, schema_url: str) -> bool:
        return schema_url.split("#", 1)[0] in self.schemas

    def errors(self, event: Mapping[str, Any]) -> list[str]:
        """Every schema violation of ``event`` (a JSON object), as ``path: message`` strings."""
        # The core schema is a oneOf of the three event kinds: a run event is checked against RunEvent itself,
        # so that errors name the offending field instead of "not valid under any of the given schemas".
        core = {"$ref": f"{self.core['$id']}#/$defs/RunEvent"} if "run" in event else self.core
        problems = self._errors(core, event)
        for where, facet in _facets(event):
            url = str(facet.get("_schemaURL", ""))
            if not self.facet_schema_known(url):
                continue
            base, _, fragment = url.partition("#")
            schema = {"$ref": url} if fragment else {"$ref": base}
            problems += [f"{where}: {message}" for message in self._errors(schema, facet)]
        return problems


def _facets(event: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any]]]:
    found: list[tuple[str, Mapping[str, Any]]] = []
    for part in ("run", "job"):
        for name, facet in ((event.get(part) or {}).get("facets") or {}).items():
            found.append((f"{part}.facets.{name}", facet))
    for side in ("inputs", "outputs"):
        for index, dataset in enumerate(event.get(side) or []):
            for key in ("facets", "inputFacets", "outputFacets"):
                for name, facet in (dataset.get(key) or {}).items():
                    found.append((f"{side}[{index}].{key}.{name}", facet))
    return found
