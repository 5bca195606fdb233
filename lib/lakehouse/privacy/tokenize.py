"""Deterministic keyed tokens (HMAC-SHA256) for PII, identical in Python, pandas and Spark.

A token is the lowercase hex HMAC-SHA256 of the value's UTF-8 bytes under the key
``settings.privacy.tokenization_key``.
The same value always gives the same token, so joins and SCD2 change detection keep working on tokens, while
the value cannot be recovered without the key. Spark computes it without a Python UDF::

    HMAC(K, m) = SHA256((K ⊕ opad) ‖ SHA256((K ⊕ ipad) ‖ m))

with the two padded keys computed here once and passed as binary literals.

Example:
    >>> token("ada@example.com", "k") == token("ada@example.com", "k")
    True
    >>> len(token("ada@example.com", "k"))
    64
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Final, overload

import pandas as pd

from lakehouse.errors import ConfigError
from lakehouse.privacy import PrivacyError

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame

    from lakehouse.governance.catalog import TableContract

_BLOCK: Final = 64  # SHA-256 block size in bytes
_TOKEN_LENGTH: Final = 64


def _key_bytes(key: str) -> bytes:
    if not key:
        raise ConfigError(
            "the PII tokenization key is empty: set privacy.tokenization_key "
            "(LAKEHOUSE_PII_KEY) in the env file"
        )
    raw = key.encode("utf-8")
    if len(raw) > _BLOCK:  # RFC 2104: long keys are hashed first
        raw = hashlib.sha256(raw).digest()
    return raw.ljust(_BLOCK, b"\x00")


def padded_keys(key: str) -> tuple[bytes, bytes]:
    """The inner and outer padded keys ``(K ⊕ ipad, K ⊕ opad)`` of HMAC-SHA256."""
    raw = _key_bytes(key)
    return bytes(b ^ 0x36 for b in raw), bytes(b ^ 0x5C for b in raw)


@overload
def token(value: None, key: str) -> None: ...
@overload
def token(value: object, key: str) -> str: ...
def token(value: object, key: str) -> str | None:
    """The token of one value (``None`` stays ``None``; non-strings are tokenized as ``str(value)``).

    Args:
        value: the PII value, e.g. an email address.
        key: the tokenization key (``settings.privacy.tokenization_key``).

    Returns:
        64 lowercase hex characters.
    """
    if value is None or (isinstance(value, float) and value != value):
        return None
    _key_bytes(key)  # validates the key
    return hmac.new(key.encode("utf-8"), str(value).encode("utf-8"), hashlib.sha256).hexdigest()


def is_token(value: object) -> bool:
    """Whether a value looks like a token (64 lowercase hex characters)."""
    return (
        isinstance(value, str) and len(value) == _TOKEN_LENGTH and all(c in "0123456789abcdef" for c in value)
    )


def token_column(column: Column | str, key: str) -> Column:
    """A Spark column of tokens of ``column`` (cast to string); equal to :func:`token` row by row."""
    from pyspark.sql import functions as F

    inner, outer = padded_keys(key)
    message = F.col(column) if isinstance(column, str) else column
    inner_digest = F.unhex(
        F.sha2(F.concat(F.unhex(F.lit(inner.hex())), message.cast("string").cast("binary")), 256)
    )
    return F.when(message.isNotNull(), F.sha2(F.concat(F.unhex(F.lit(outer.hex())), inner_digest), 256))


def _is_pandas(frame: Any) -> bool:
    return isinstance(frame, pd.DataFrame)


def protect(frame: Any, contract: TableContract, key: str) -> Any:
    """Apply the contract's PII treatments: ``tokenize`` columns become tokens, ``drop`` columns go.

    Works on a Spark or a pandas DataFrame; columns the frame lacks are skipped (a ``drop`` column may already
    be gone). Columns with ``treatment: keep`` are left as they are.

    Args:
        frame: the rows about to be written to the contract's table.
        contract: the table's contract from :func:`lakehouse.governance.catalog.load_catalog`.
        key: ``settings.privacy.tokenization_key``.

    Returns:
        A frame of the same kind.
    """
    tokenize = [c.name for c in contract.columns if c.treatment == "tokenize" and c.name in frame.columns]
    drop = [c.name for c in contract.columns if c.treatment == "drop" and c.name in frame.columns]
    if _is_pandas(frame):
        protected = frame.drop(columns=drop).copy()
        for name in tokenize:
            protected[name] = [token(v, key) for v in protected[name]]
        return protected
    from pyspark.sql import functions as F

    columns = [
        token_column(F.col(name), key).alias(name) if name in tokenize else F.col(name)
        for name in frame.columns
        if name not in drop
    ]
    return frame.select(*columns)


def tokenize_columns(frame: DataFrame, names: Iterable[str], key: str) -> DataFrame:
    """Replace the named Spark columns by their tokens (columns the frame lacks are ignored)."""
    from pyspark.sql import functions as F

    wanted = set(names)
    return frame.select(
        *[token_column(F.col(c), key).alias(c) if c in wanted else F.col(c) for c in frame.columns]
    )


def assert_no_untagged_pii(frame_sample: Any, contract: TableContract, *, min_hit_rate: float = 0.3) -> None:
    """Fail when the sample has a PII-looking column its contract does not declare as protected PII.

    A column passes when the contract declares it with a ``pii`` kind and a treatment that fits the layer
    (``tokenize``/``drop`` outside bronze) and its values are tokens; it fails when the scanner finds PII in a
    column the contract does not tag, or in a tokenized column whose values are not tokens.

    Args:
        frame_sample: a pandas sample (or a Spark DataFrame, of which up to 1000 rows are taken).
        contract: the table's contract.
        min_hit_rate: the share of non-null values that must look like PII for a column to count.

    Raises:
        PrivacyError: naming the table, the column and the kind of PII found.
    """
    from lakehouse.privacy.detectors import scan_frame

    sample = frame_sample if _is_pandas(frame_sample) else frame_sample.limit(1000).toPandas()
    declared = {c.name: c for c in contract.columns}
    problems = []
    for finding in scan_frame(sample):
        if finding.hit_rate < min_hit_rate:
            continue
        column = declared.get(finding.column)
        if column is None or column.pii is None:
            problems.append(
                f"{finding.column} looks like {finding.kind} ({finding.hit_rate:.0%}) but is not tagged pii"
            )
        elif column.treatment == "keep" and not contract.restricted:
            problems.append(f"{finding.column} is {column.pii} kept in clear outside bronze")
        elif column.treatment == "tokenize":
            problems.append(f"{finding.column} is tagged tokenize but holds clear {finding.kind} values")
    for column in contract.columns:
        if column.treatment == "drop" and column.name in sample.columns and not contract.restricted:
            problems.append(f"{column.name} must be dropped but is present")
    if problems:
        raise PrivacyError(f"untagged or unprotected PII in {contract.table}: " + "; ".join(problems))
