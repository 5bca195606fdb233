"""Data quality: a Great Expectations suite per table, run by the task that writes it.

Each expectation declares what happens to data that breaks it in ``meta.action``:

* ``warn`` — record the result, keep every row;
* ``drop`` — remove the failing rows (counted, not kept);
* ``quarantine`` — move the failing rows to ``<table>_quarantine`` with the rules they broke;
* ``fail`` — record the results, then stop the task with :class:`QualityError`.

Suites live in ``quality/suites/<layer>/<name>.json``; results go to the ``audit.validation_results`` Delta
table and GX Data Docs under ``settings.reports / "data_docs"``.
"""

from __future__ import annotations

from lakehouse.quality.docs import build_data_docs
from lakehouse.quality.results import RESULTS_ARROW, RESULTS_SCHEMA, ResultRow, results_for_run, write_results
from lakehouse.quality.suites import ACTIONS, ROW_ACTIONS, list_suites, load_suite, rule_name, suite_path
from lakehouse.quality.validate import CheckedBatch, QualityError, check_batch, validate_table

__all__ = [
    "ACTIONS",
    "RESULTS_ARROW",
    "RESULTS_SCHEMA",
    "ROW_ACTIONS",
    "CheckedBatch",
    "QualityError",
    "ResultRow",
    "build_data_docs",
    "check_batch",
    "list_suites",
    "load_suite",
    "results_for_run",
    "rule_name",
    "suite_path",
    "validate_table",
    "write_results",
]
