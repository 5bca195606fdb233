"""PII detectors: column-name hints plus value detectors, proposing a classification per column.

Pure functions over values and frames; they know nothing of the lake or the catalog (the lake-wide scan that
compares findings with the contracts is :mod:`lakehouse.privacy.scanner`).

Value detectors (each a strict validator, so ids, product codes and timestamps do not match):

* ``email`` — an RFC-5322-ish address with a dotted domain;
* ``ip`` — IPv4 or IPv6 (:mod:`ipaddress`);
* ``credit_card`` — 12-19 digits (spaces/dashes allowed) with a valid Luhn check digit (``python-stdnum``);
* ``iban`` — a valid IBAN (country format + mod-97, ``python-stdnum``);
* ``phone`` — a phone-shaped string that libphonenumber (``phonenumbers``) accepts as a valid number.

Column names add ``name``, ``address``, ``birth_date`` and the kinds above when a column is called like one.
JSON payload columns (bronze ``value``) are flattened, so a field inside a payload is reported as
``value.client_ip``.

Example:
    >>> import pandas as pd
    >>> [f.kind for f in scan_frame(pd.DataFrame({"contact": ["ada@example.com", "bob@example.org"]}))]
    ['email']
"""

from __future__ import annotations

import ipaddress
import json
import logging
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any, Final

import pandas as pd
import phonenumbers
from stdnum import iban as stdnum_iban
from stdnum import luhn

log = logging.getLogger(__name__)

PII_KINDS: Final = ("email", "phone", "ip", "credit_card", "iban", "name", "address", "birth_date")

_EMAIL: Final = re.compile(
    r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9-]{1,63})*\.[A-Za-z]{2,24}$"
)
_CARD_SHAPE: Final = re.compile(r"^\d(?:[ -]?\d){11,18}$")
_IBAN_SHAPE: Final = re.compile(r"^[A-Z]{2}\d{2}[A-Z0-9 ]{11,40}$")
_PHONE_SHAPE: Final = re.compile(
    r"^(?:\+|00|0)?[\d\s().-]{6,22}(?:\s*(?:x|ext\.?)\s*\d{1,6})?$", re.IGNORECASE
)
_IP_SHAPE: Final = re.compile(r"^[0-9A-Fa-f:.]{2,45}$")
_DATE_LIKE: Final = re.compile(r"^\d{4}[-/.]\d{1,2}[-/.]\d{1,2}\b|^\d{1,2}[-/.]\d{1,2}[-/.]\d{4}\b")
_PHONE_REGIONS: Final = ("US", "GB", "DE", "FR", "IN")

_NAME_HINTS: Final = (
    ("email", re.compile(r"(^|_)e?-?mail(_|$|address)", re.IGNORECASE)),
    ("phone", re.compile(r"(^|_)(phone|mobile|msisdn|tel)(_|$)", re.IGNORECASE)),
    ("ip", re.compile(r"(^|_)(ip|ip_?address|client_ip|remote_addr)(_|$)", re.IGNORECASE)),
    ("credit_card", re.compile(r"(^|_)(card_?number|cc_?number|pan)(_|$)", re.IGNORECASE)),
    ("iban", re.compile(r"(^|_)iban(_|$)", re.IGNORECASE)),
    ("name", re.compile(r"^(name|full_name|first_name|last_name|surname|customer_name)$", re.IGNORECASE)),
    ("address", re.compile(r"(^|_)(address|street|postcode|zip_?code)(_|$)", re.IGNORECASE)),
    ("birth_date", re.compile(r"(^|_)(birth_?date|dob|date_of_birth)(_|$)", re.IGNORECASE)),
)


@dataclass(frozen=True)
class Finding:
    """One column that looks like PII.

    Attributes:
        column: the column (``value.<field>`` for a field inside a JSON payload column).
        kind: one of :data:`PII_KINDS`.
        hit_rate: the share of the sampled non-null values the detector accepted (0.0 for a name-only hint).
        proposed_classification: ``pii`` (a value detector or a strong name hint), else ``confidential``.
        evidence: ``values``, ``name`` or ``values+name``.
        sampled: how many non-null values were looked at.
    """

    column: str
    kind: str
    hit_rate: float
    proposed_classification: str
    evidence: str
    sampled: int


def _is_email(text: str) -> bool:
    return len(text) <= 254 and _EMAIL.match(text) is not None


def _is_ip(text: str) -> bool:
    if not _IP_SHAPE.match(text) or ("." not in text and ":" not in text):
        return False
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _is_card(text: str) -> bool:
    if not _CARD_SHAPE.match(text):
        return False
    digits = re.sub(r"[ -]", "", text)
    return 12 <= len(digits) <= 19 and digits[0] in "123456" and luhn.is_valid(digits)


def _is_iban(text: str) -> bool:
    compact = text.replace(" ", "").upper()
    return _IBAN_SHAPE.match(compact) is not None and bool(stdnum_iban.is_valid(compact))


def _is_phone(text: str) -> bool:
    if not _PHONE_SHAPE.match(text):
        return False
    digits = sum(c.isdigit() for c in text)
    # Plain digit runs without any phone punctuation are ids far more often than phone numbers.
    if digits < 7 or (text.isdigit() and not text.startswith("0")):
        return False
    for region in _PHONE_REGIONS:
        try:
            number = phonenumbers.parse(text, region)
        except phonenumbers.NumberParseException:
            continue
        if phonenumbers.is_valid_number(number):
            return True
    return False


# Order matters: the first detector that accepts a value names its kind (a card is never read as a phone).
_DETECTORS: Final = (
    ("email", _is_email),
    ("ip", _is_ip),
    ("credit_card", _is_card),
    ("iban", _is_iban),
    ("phone", _is_phone),
)


def detect_value(value: object) -> str | None:
    """The PII kind of one value, or ``None``.

    Example:
        >>> detect_value("4111 1111 1111 1111"), detect_value("4111 1111 1111 1112")
        ('credit_card', None)
    """
    if value is None or isinstance(value, bool | float | int | date | datetime):
        return None
    text = str(value).strip()
    if not 3 <= len(text) <= 254 or _DATE_LIKE.match(text):
        return None
    for kind, accepts in _DETECTORS:
        if accepts(text):
            return kind
    return None


def name_hint(column: str) -> str | None:
    """The PII kind a column's name suggests (``client_ip`` → ``ip``), or ``None``."""
    leaf = column.rsplit(".", 1)[-1]
    for kind, pattern in _NAME_HINTS:
        if pattern.search(leaf):
            return kind
    return None


def _flatten(prefix: str, payload: Any, out: dict[str, Any]) -> None:
    if isinstance(payload, dict):
        for key, value in payload.items():
            _flatten(f"{prefix}.{key}", value, out)
    elif isinstance(payload, list):
        # wal2json-style [{"name": ..., "value": ...}] lists become one field per name.
        for item in payload:
            if isinstance(item, dict) and "name" in item and "value" in item:
                out.setdefault(f"{prefix}.{item['name']}", item["value"])
    else:
        out[prefix] = payload


def _json_fields(column: str, values: Sequence[Any]) -> pd.DataFrame | None:
    texts = [v for v in values if isinstance(v, str)]
    if not texts or sum(t.lstrip().startswith("{") for t in texts) < 0.5 * len(texts):
        return None
    rows = []
    for text in texts:
        try:
            payload = json.loads(text)
        except ValueError:
            continue
        flat: dict[str, Any] = {}
        _flatten(column, payload, flat)
        rows.append(flat)
    return pd.DataFrame(rows) if rows else None


def _scan_values(column: str, values: Sequence[Any], min_hit_rate: float) -> Finding | None:
    present = [v for v in values if v is not None and not (isinstance(v, float) and v != v)]
    hint = name_hint(column)
    kinds = Counter(k for k in (detect_value(v) for v in present) if k is not None)
    if kinds:
        kind, hits = kinds.most_common(1)[0]
        rate = hits / len(present)
        if rate >= min_hit_rate:
            evidence = "values+name" if hint == kind else "values"
            return Finding(column, kind, round(rate, 4), "pii", evidence, len(present))
    if hint is not None:
        strong = hint in {"email", "phone", "ip", "name", "iban", "credit_card", "birth_date", "address"}
        return Finding(column, hint, 0.0, "pii" if strong else "confidential", "name", len(present))
    return None


def scan_frame(frame: pd.DataFrame, *, min_hit_rate: float = 0.5, max_rows: int = 2000) -> list[Finding]:
    """Scan a pandas frame for PII: one :class:`Finding` per column that looks like PII.

    Args:
        frame: a sample of a table (bronze, typically).
        min_hit_rate: the share of non-null values a detector must accept for a value-based finding.
        max_rows: at most this many rows are looked at.

    Returns:
        Findings in column order; a JSON payload column is reported per field (``value.client_ip``).
    """
    sample = frame.head(max_rows)
    findings: list[Finding] = []
    for column in sample.columns:
        values = sample[column].tolist()
        fields = _json_fields(str(column), values) if sample[column].dtype == object else None
        if fields is not None:
            findings.extend(scan_frame(fields, min_hit_rate=min_hit_rate, max_rows=max_rows))
            continue
        finding = _scan_values(str(column), values, min_hit_rate)
        if finding is not None:
            findings.append(finding)
    return findings
