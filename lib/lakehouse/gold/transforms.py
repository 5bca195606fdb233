"""The registry of gold transforms: Python functions a gold model names (``model: {python: <name>, …}``).

A transform takes the Spark session, its input tables by name and the model's ``params``, and returns the
model's frame; it is generic over the columns its ``params`` name. The package's own transforms
(:mod:`lakehouse.gold.sessionize`, :mod:`lakehouse.gold.gaps`) register here when :mod:`lakehouse.gold.models`
imports them; a project's own registers the same way (``@transform("name")``) in a module it imports.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Final

from pyspark.sql import DataFrame, SparkSession

from lakehouse.errors import ConfigError

Transform = Callable[[SparkSession, Mapping[str, DataFrame], Mapping[str, Any]], DataFrame]
TRANSFORMS: Final[dict[str, Transform]] = {}


def transform(name: str) -> Callable[[Transform], Transform]:
    """Register a Python transform for gold models (``model: {python: <name>, inputs: […], params: …}``)."""

    def register(function: Transform) -> Transform:
        if name in TRANSFORMS:
            raise ConfigError(f"a gold transform named {name!r} is registered twice")
        TRANSFORMS[name] = function
        return function

    return register
