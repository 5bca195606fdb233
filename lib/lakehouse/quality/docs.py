"""GX Data Docs: every suite and every recorded validation rendered as static HTML."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lakehouse.config import Settings
from lakehouse.privacy.mask import mask_validation_result, table_pii

log = logging.getLogger(__name__)

_SITE = "lakehouse"


def docs_dir(settings: Settings) -> Path:
    """Where Data Docs are written: ``settings.reports / "data_docs"``."""
    return settings.reports / "data_docs"


def pending_dir(settings: Settings) -> Path:
    """Where validations wait (as GX JSON) to be rendered into Data Docs."""
    return settings.workspace / "quality" / "validations"


def save_validation(
    settings: Settings, table: str, run_id: str, batch_id: int, result: Any, pii: Sequence[str] = ()
) -> Path:
    """Keep one GX validation result so :func:`build_data_docs` can render it.

    Full row lists are pruned; the partial lists GX shows are masked: values of the ``pii`` columns become
    a marker, e-mails and IPs elsewhere are scrubbed (:func:`lakehouse.privacy.mask.mask_validation_result`),
    so Data Docs never quote the PII that silver tokenizes, even when a rule catches it in clear.
    """
    document = mask_validation_result(result.to_json_dict(), pii)
    for entry in document.get("results", []):
        for key in ("unexpected_list", "unexpected_index_list", "unexpected_index_query"):
            (entry.get("result") or {}).pop(key, None)
    path = pending_dir(settings) / table / f"{run_id}__{batch_id}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, default=str))
    return path


def build_data_docs(settings: Settings) -> Path:
    """Render Data Docs for every suite in the repo and every saved validation; return ``index.html``.

    A file-backed GX project under ``<workspace>/quality/gx`` holds the stores; the HTML goes to
    ``settings.reports / "data_docs"``.
    """
    import great_expectations as gx
    from great_expectations.core import ExpectationSuiteValidationResult
    from great_expectations.core.run_identifier import RunIdentifier
    from great_expectations.data_context.types.base import ProgressBarsConfig
    from great_expectations.data_context.types.resource_identifiers import (
        ExpectationSuiteIdentifier,
        ValidationResultIdentifier,
    )

    from lakehouse.quality.suites import list_suites, load_suite

    project = settings.workspace / "quality" / "gx"
    project.mkdir(parents=True, exist_ok=True)
    context = gx.get_context(mode="file", project_root_dir=str(project))
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    target = docs_dir(settings)
    for site in list(context.get_site_names()):
        context.delete_data_docs_site(site)
    context.add_data_docs_site(
        site_name=_SITE,
        site_config={
            "class_name": "SiteBuilder",
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
            "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(target)},
        },
    )
    for table in list_suites(settings):
        suite = load_suite(settings, table)
        copy = gx.ExpectationSuite(
            name=suite.name, expectations=[e.configuration for e in suite.expectations], meta=suite.meta
        )
        context.suites.add_or_update(copy)
    for path in sorted(pending_dir(settings).glob("*/*.json")):
        # Masked again on the way in: validations a workspace kept before masking existed must not leak.
        document = mask_validation_result(json.loads(path.read_text()), table_pii(settings, path.parent.name))
        run_id, _, batch_id = path.stem.partition("__")
        key = ValidationResultIdentifier(
            expectation_suite_identifier=ExpectationSuiteIdentifier(name=document["suite_name"]),
            run_id=RunIdentifier(run_name=run_id),
            batch_identifier=f"batch-{batch_id}",
        )
        context.validation_results_store.set(key, ExpectationSuiteValidationResult(**document))
    context.build_data_docs(site_names=[_SITE])
    index = target / "index.html"
    log.info("data docs at %s", index)
    return index
