"""Privacy without services: tokens equal Python's HMAC, the scanner's precision and recall, contracts applied."""

from __future__ import annotations

import hashlib
import hmac
import os
import random
import shutil
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest
import yaml
from faker import Faker

from lakehouse.config import Settings
from lakehouse.errors import ConfigError
from lakehouse.governance.catalog import ColumnContract, TableContract
from lakehouse.privacy import PrivacyError
from lakehouse.privacy.erase import parse_subject, subject_predicate
from lakehouse.privacy.mask import PII_MARKER, mask_result_body, mask_validation_result, table_pii
from lakehouse.privacy.scanner import detect_value, name_hint, scan_frame
from lakehouse.privacy.tokenize import assert_no_untagged_pii, is_token, padded_keys, protect, token
from lakehouse.simulate.clickstream import client_ip

pytestmark = pytest.mark.unit

KEY = "unit-test-key"


def test_token_is_python_hmac_sha256() -> None:
    for value in ("ada@example.com", "", "ünïcode@example.de", "203.0.113.7"):
        assert token(value, KEY) == hmac.new(KEY.encode(), value.encode(), hashlib.sha256).hexdigest()
    long_key = "k" * 100  # longer than the SHA-256 block: hashed first, as RFC 2104 says
    assert token("x", long_key) == hmac.new(long_key.encode(), b"x", hashlib.sha256).hexdigest()
    assert token(None, KEY) is None
    assert token("a", KEY) != token("a", KEY + "2")
    assert is_token(token("a", KEY)) and not is_token("a")


def test_padded_keys_rebuild_the_hmac_by_hand() -> None:
    # The formula Spark uses: SHA256((K^opad) || SHA256((K^ipad) || m)).
    inner, outer = padded_keys(KEY)
    message = b"ada@example.com"
    manual = hashlib.sha256(outer + hashlib.sha256(inner + message).digest()).hexdigest()
    assert manual == token("ada@example.com", KEY)


def test_empty_key_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="tokenization key"):
        token("a", "")


def _labelled_sample(seed: int = 20241101) -> list[tuple[str, str | None]]:
    fake = Faker(["en_US", "en_GB", "de_DE", "fr_FR"])
    Faker.seed(seed)
    rng = random.Random(seed)
    positives: list[tuple[str, str | None]] = []
    for _ in range(150):
        positives.append((fake.email(), "email"))
        positives.append((fake.ipv4_public(), "ip"))
        positives.append((fake.ipv6(), "ip"))
        positives.append((fake.credit_card_number(), "credit_card"))
        positives.append((fake.iban(), "iban"))
        positives.append((fake.phone_number(), "phone"))
    negatives: list[tuple[str, str | None]] = []
    start = datetime(2024, 11, 1, tzinfo=UTC)
    for number in range(150):
        card = fake.credit_card_number()
        last = (int(card[-1]) + 1 + rng.randrange(9)) % 10  # any other check digit breaks Luhn
        negatives += [
            (card[:-1] + str(last), None),  # invalid Luhn
            (str(rng.randrange(1, 10**7)), None),  # order / customer ids
            (f"o-{rng.getrandbits(48):012x}", None),
            (f"p-{rng.randrange(10000):04d}", None),  # product codes
            (f"SKU-{rng.randrange(10**6):06d}-{rng.choice('ABC')}", None),
            ((start + timedelta(seconds=rng.randrange(10**7))).isoformat(), None),  # timestamps
            ((start + timedelta(days=number)).strftime("%Y-%m-%d"), None),
            (str(uuid.UUID(int=rng.getrandbits(128))), None),
            (f"{rng.uniform(1, 999):.2f}", None),  # prices
            (rng.choice(["4.8.0", "5.0.3", "5.2.1", "10.15.7"]), None),  # app versions
            (fake.word(), None),
            (fake.sentence(), None),
            (hashlib.sha256(str(number).encode()).hexdigest(), None),  # tokens
            (rng.choice(["USD", "EUR", "GBP", "JPY"]), None),
            (f"DE{rng.randrange(10**18):018d}", None),  # IBAN-shaped, wrong check digits (mostly)
        ]
    # An IBAN-shaped random string can be valid by chance (1 in 97): label by the validator's ground truth.
    from stdnum import iban

    negatives = [(v, "iban" if v.startswith("DE") and iban.is_valid(v) else k) for v, k in negatives]
    return positives + negatives


def test_scanner_precision_and_recall_on_a_labelled_sample() -> None:
    sample = _labelled_sample()
    tp = fp = fn = 0
    misses: dict[str, int] = {}
    for value, kind in sample:
        found = detect_value(value)
        if found is not None and found == kind:
            tp += 1
        else:
            if found is not None:
                fp += 1
                misses[f"fp:{found}"] = misses.get(f"fp:{found}", 0) + 1
            if kind is not None:
                fn += 1
                misses[f"fn:{kind}"] = misses.get(f"fn:{kind}", 0) + 1
    precision = tp / (tp + fp)
    recall = tp / (tp + fn)
    print(
        f"scanner on {len(sample)} labelled values: precision {precision:.3f}, recall {recall:.3f}, {misses}"
    )
    assert precision >= 0.95
    assert recall >= 0.9


@pytest.mark.parametrize(
    ("value", "kind"),
    [
        ("4111 1111 1111 1111", "credit_card"),
        ("4111 1111 1111 1112", None),
        ("GB82 WEST 1234 5698 7654 32", "iban"),
        ("GB82 WEST 1234 5698 7654 33", None),
        ("2001:db8::1", "ip"),
        ("256.1.1.1", None),
        ("+44 20 7946 0958", "phone"),
        ("2026-11-26 05:26:10", None),
        ("p-0042", None),
        ("ada.baker.1@example.com", "email"),
        ("ada.baker.1@example", None),
    ],
)
def test_detectors_on_hard_cases(value: str, kind: str | None) -> None:
    assert detect_value(value) == kind


def test_scan_frame_reports_columns_and_json_fields() -> None:
    fake = Faker()
    Faker.seed(3)
    frame = pd.DataFrame(
        {
            "customer_id": list(range(40)),
            "contact": [fake.email() for _ in range(40)],
            "value": [f'{{"user_id": "u-{i}", "client_ip": "{fake.ipv4_public()}"}}' for i in range(40)],
            "product": [f"p-{i:04d}" for i in range(40)],
            "full_name": [fake.name() for _ in range(40)],
        }
    )
    found = {(f.column, f.kind, f.proposed_classification) for f in scan_frame(frame)}
    assert found == {
        ("contact", "email", "pii"),
        ("value.client_ip", "ip", "pii"),
        ("full_name", "name", "pii"),
    }
    assert name_hint("client_ip") == "ip" and name_hint("ingested_at") is None


def _contract(layer: str = "silver") -> TableContract:
    return TableContract(
        table=f"{layer}.people",
        owner="test",
        description="people",
        classification="pii",
        columns=(
            ColumnContract(name="id", type="long"),
            ColumnContract(
                name="email", type="string", classification="pii", pii="email", treatment="tokenize"
            ),
            ColumnContract(name="phone", type="string", classification="pii", pii="phone", treatment="drop"),
        ),
    )


def test_protect_tokenizes_and_drops_per_contract() -> None:
    frame = pd.DataFrame(
        {"id": [1, 2], "email": ["a@example.com", None], "phone": ["+44 20 7946 0958", None]}
    )
    protected = protect(frame, _contract(), KEY)
    assert list(protected.columns) == ["id", "email"]
    assert protected["email"].tolist() == [token("a@example.com", KEY), None]
    assert_no_untagged_pii(protected, _contract())  # protected rows pass


def test_untagged_or_clear_pii_fails() -> None:
    fake = Faker()
    Faker.seed(5)
    emails = [fake.email() for _ in range(20)]
    with pytest.raises(PrivacyError, match="email is tagged tokenize but holds clear email"):
        assert_no_untagged_pii(pd.DataFrame({"id": range(20), "email": emails}), _contract())
    with pytest.raises(PrivacyError, match="note looks like email"):
        assert_no_untagged_pii(
            pd.DataFrame({"id": range(20), "email": [token(e, KEY) for e in emails], "note": emails}),
            _contract(),
        )
    with pytest.raises(PrivacyError, match="phone must be dropped"):
        assert_no_untagged_pii(pd.DataFrame({"id": [1], "phone": [None]}), _contract())


def test_keep_is_only_allowed_in_restricted_tables() -> None:
    column = ColumnContract(name="email", type="string", classification="pii", pii="email", treatment="keep")
    TableContract(table="bronze.people", owner="o", description="d", classification="pii", columns=(column,))
    with pytest.raises(ValueError, match="keep is allowed only"):
        TableContract(
            table="silver.people", owner="o", description="d", classification="pii", columns=(column,)
        )


def test_simulated_client_ip_is_deterministic_and_valid() -> None:
    import ipaddress

    addresses = {client_ip(f"u-{n:06d}", "web", "DE") for n in range(200)}
    assert client_ip("u-000001", "web", "DE") == client_ip("u-000001", "web", "DE")
    assert len(addresses) > 190
    parsed = [ipaddress.ip_address(a) for a in addresses]
    assert all(a.is_global for a in parsed)
    assert 0.1 < sum(a.version == 6 for a in parsed) / len(parsed) < 0.45
    assert all(detect_value(a) == "ip" for a in addresses)


def test_subject_parsing_and_predicates() -> None:
    assert parse_subject("customer:123") == ("customer", "123")
    with pytest.raises(ConfigError):
        parse_subject("robot:1")
    from lakehouse.governance.catalog import SubjectRef

    refs = [
        SubjectRef(kind="customer", column="customer_id"),
        SubjectRef(kind="customer", column="email", match="email_token"),
    ]
    assert subject_predicate(refs, "1'2", []) == "(CAST(`customer_id` AS STRING) = '1\\'2')"
    assert "IN ('t1')" in (subject_predicate(refs, "1", ["t1"]) or "")


# --- masking what reports quote (validation results, Data Docs) ------------------------------------------


def _gx_entry(column: str, body: dict[str, object]) -> dict[str, object]:
    return {"expectation_config": {"type": "x", "kwargs": {"column": column}}, "result": body}


def test_results_on_a_pii_column_quote_no_value() -> None:
    body = {
        "element_count": 3,
        "unexpected_count": 2,
        "unexpected_percent": 66.7,
        "partial_unexpected_list": ["ann@example.com", "Ann Lee"],
        "partial_unexpected_counts": [{"value": "ann@example.com", "count": 2}],
        "partial_unexpected_index_list": [{"email": "ann@example.com", "_dq_row_id": 4}],
        "unexpected_list": ["ann@example.com"],
        "observed_value": "Ann Lee",
    }
    masked = mask_validation_result({"results": [_gx_entry("email", body)]}, ["email", "name"])
    result = masked["results"][0]["result"]
    assert "ann@example.com" not in str(masked) and "Ann Lee" not in str(masked)
    assert result["partial_unexpected_list"] == [PII_MARKER, PII_MARKER]
    assert result["partial_unexpected_counts"] == [{"value": PII_MARKER, "count": 2}]
    assert result["partial_unexpected_index_list"] == [{"email": PII_MARKER, "_dq_row_id": 4}]
    assert (result["element_count"], result["unexpected_count"], result["unexpected_percent"]) == (3, 2, 66.7)
    assert body["partial_unexpected_list"] == ["ann@example.com", "Ann Lee"], "the input is not modified"


def test_results_on_other_columns_keep_values_but_lose_emails_and_ips() -> None:
    body = {"partial_unexpected_list": ["germany", "from 10.1.2.3", '{"mail": "bo@example.org"}', None, 7]}
    result = mask_result_body(body, ["country"], ["email"])
    assert result["partial_unexpected_list"] == ["germany", "from <ipv4>", '{"mail": "<email>"}', None, 7]
    both = mask_result_body({"observed_value": ["x@y.io"]}, ["email", "country"], ["email"])
    assert both == {"observed_value": [PII_MARKER]}, "a rule reading any PII column quotes nothing"


def test_table_pii_comes_from_the_catalog_and_follows_its_edits(settings: Settings, tmp_path: Path) -> None:
    assert set(table_pii(settings, "silver.retail_customers")) >= {"email", "name"}
    assert table_pii(settings, "gold.daily_kpis") == ()
    assert table_pii(settings, "silver.no_such_table") == ()
    copy = settings.model_copy(update={"root": tmp_path})
    shutil.copytree(settings.root / "catalog", tmp_path / "catalog")
    assert table_pii(copy, "gold.daily_kpis") == ()
    contract = tmp_path / "catalog" / "gold" / "daily_kpis.yaml"
    document = yaml.safe_load(contract.read_text())
    document["classification"] = "pii"
    document["columns"][0].update(classification="pii", pii="name", treatment="tokenize")
    contract.write_text(yaml.safe_dump(document))
    os.utime(contract, (time.time() + 5, time.time() + 5))
    assert table_pii(copy, "gold.daily_kpis") == (document["columns"][0]["name"],)
