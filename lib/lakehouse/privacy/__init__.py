"""Privacy: PII detection, deterministic tokenization in silver, and data-subject erasure across layers."""

from __future__ import annotations

from lakehouse.errors import DataError


class PrivacyError(DataError):
    """PII would reach a layer untagged or unprotected, or an erasure could not be completed."""


__all__ = ["PrivacyError"]
