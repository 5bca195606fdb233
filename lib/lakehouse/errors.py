"""The package's own exception types: each message says what went wrong and what to do."""

from __future__ import annotations


class LakehouseError(Exception):
    """Base class for every error a user of the workbench can meet."""


class ConfigError(LakehouseError):
    """The environment file, a parameter or an environment variable is missing or invalid."""


class ParameterError(ConfigError):
    """A notebook received an unknown or ill-typed parameter."""


class ServiceError(LakehouseError):
    """A local service (Kafka, Spark Connect, MLflow, dashboard) is missing, down or failed to start."""


class DataError(LakehouseError):
    """Data broke an invariant that must hold (e.g. counts do not reconcile)."""
