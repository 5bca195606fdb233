"""A user's project is its declarations: the folders a test copies to have a project of its own to edit."""

from __future__ import annotations

import shutil
from pathlib import Path

# Everything `lakehouse dag sync` and the declared tasks read: table contracts, suites, gold SQL and ML models,
# the feature store's entities and views. A project missing one cannot render the DAG.
DECLARATIONS = ("catalog", "quality", "models", "features")


def copy_declarations(source: Path, target: Path) -> None:
    """Copy the project's declaration folders from ``source`` into ``target`` (created as needed)."""
    for folder in DECLARATIONS:
        shutil.copytree(source / folder, target / folder)
