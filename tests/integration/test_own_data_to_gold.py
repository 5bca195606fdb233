"""A user's own data, onboarded to gold by configuration alone, one real dataset per source kind:

* palmerpenguins in a PostgreSQL database of their own as a snapshot source, and a readings table whose
  composite key includes a timestamp as an incremental one (``lakehouse source add postgres`` samples both);
* the Olympic 100 m medallists (bokeh_sampledata's sprint table) served by an HTTP API of their own as nested
  JSON with cursor pagination (``lakehouse source add http`` finds the records and the cursor);
* bokeh_sampledata's CGM glucose series from a device fleet over MQTT, through the real bridge.

Each goes the way a user takes it: source add (or an entry), land bronze, ``lakehouse table scaffold``, review
edits in YAML, the silver notebook, a SQL gold model with its contract and suite, the gold notebook — then the
rows, the quarantine with its reasons, the suites' results, the contract check, the lineage from bronze to
gold, and that no file under lib/ knows the dataset.
"""

from __future__ import annotations

import csv
import gzip
import json
import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib.util import find_spec
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import parse_qs, urlsplit

import psycopg
import pytest
import yaml

from lakehouse.config import Settings
from onboarding_kit import Project, assert_lib_knows_none_of, assert_traced, rule, task

pytestmark = pytest.mark.integration


def _data(package: str, *parts: str) -> Path:
    spec = find_spec(package)
    assert spec is not None and spec.submodule_search_locations, (
        f"install the data package {package} (make venv)"
    )
    return Path(next(iter(spec.submodule_search_locations)), *parts)


def _sql(url: str, *statements: str, params: tuple[Any, ...] | None = None) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        for statement in statements:
            conn.execute(statement, params)  # type: ignore[arg-type]


@pytest.fixture
def own_db(postgres: Settings) -> Iterator[str]:
    """A database of the user's own on the test server, reached only through a URL in the environment."""
    pg = postgres.postgres
    name = f"it_field_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(**pg.connect_kwargs(), autocommit=True) as admin:  # type: ignore[arg-type]
        admin.execute(f'CREATE DATABASE "{name}"')  # type: ignore[arg-type]
    try:
        yield f"postgresql://{pg.user}:{pg.password}@{pg.host}:{pg.port}/{name}"
    finally:
        with psycopg.connect(**pg.connect_kwargs(), autocommit=True) as admin:  # type: ignore[arg-type]
            admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')  # type: ignore[arg-type]


PENGUIN_COLUMNS = (
    "study_name text, sample_number integer, species text, region text, island text, stage text, "
    "individual_id text, clutch_completion text, date_egg date, culmen_length_mm numeric, "
    "culmen_depth_mm numeric, flipper_length_mm integer, body_mass_g integer, sex text, delta_15_n double precision, "
    "delta_13_c double precision, comments text"
)


def _load_penguins(url: str) -> list[list[str | None]]:
    """The real Palmer Station measurements (penguins-raw.csv, 344 birds) as the user's field.penguins."""
    with _data("palmerpenguins", "data", "penguins-raw.csv").open(newline="", encoding="utf-8") as handle:
        rows = [[None if v in ("", "NA") else v for v in row] for row in list(csv.reader(handle))[1:]]
    rows = [[str(int(float(v))) if v and i in (11, 12) else v for i, v in enumerate(row)] for row in rows]
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA field")
        conn.execute(f"CREATE TABLE field.penguins ({PENGUIN_COLUMNS}, PRIMARY KEY (species, sample_number))")  # type: ignore[arg-type]
        with conn.cursor().copy("COPY field.penguins FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
    return rows


def test_a_database_of_our_own_reaches_gold_by_snapshot_and_by_a_composite_timestamp_key(
    postgres: Settings, own_db: str, tmp_path: Path
) -> None:
    tag = uuid.uuid4().hex[:6]
    penguins, readings = f"penguins_{tag}", f"nest_readings_{tag}"
    birds = _load_penguins(own_db)
    _sql(
        own_db,
        "CREATE TABLE field.nest_readings (nest text, read_at timestamp, temperature_c double precision, "
        "ingested_at timestamptz NOT NULL, PRIMARY KEY (nest, read_at))",
        "INSERT INTO field.nest_readings SELECT n, timestamp '2024-03-31 00:00:00' + i * interval '10 minutes', "
        "20 + i / 10.0, timestamptz '2024-04-01 00:00:00+00' FROM generate_series(0, 35) i, "
        "unnest(ARRAY['Biscoe-1', 'Dream-2', 'Torgersen-3']) n",
    )
    project = Project.create(postgres, tmp_path, {"FIELD_DB_URL": own_db})
    out = tmp_path / "runs"
    out.mkdir()

    # 1. Register both tables by sampling them: a snapshot (no version column) and an incremental extract.
    added = project.lakehouse(
        "source", "add", "postgres", penguins, "--table", "field.penguins", "--connection", "${FIELD_DB_URL}",
        "--description", "Palmer Station penguins, one row per bird.", "--owner", "field-biology",
    )  # fmt: skip
    assert "no version or change-time column: extracted as snapshots" in added.stdout
    assert f"`lakehouse table scaffold {penguins} --write`" in added.stdout
    added = project.lakehouse(
        "source", "add", "postgres", readings, "--table", "field.nest_readings", "--connection",
        "${FIELD_DB_URL}", "--owner", "field-biology",
    )  # fmt: skip
    assert "incremental by watermark 'ingested_at'" in added.stdout
    registry = yaml.safe_load((project.root / "sources.yaml").read_text())["sources"]
    assert registry[penguins]["connection"] == "${FIELD_DB_URL}" and registry[penguins]["mode"] == "snapshot"
    assert registry[penguins]["key"] == ["species", "sample_number"]
    assert (registry[readings]["key"], registry[readings]["watermark"]) == (
        ["nest", "read_at"],
        "ingested_at",
    )
    refused = project.lakehouse(
        "source", "add", "postgres", penguins, "--table", "field.penguins", check=False
    )
    assert refused.returncode == 1 and f"already has a source {penguins!r}" in refused.stderr

    # 2. Land bronze, draft silver from it, review the drafts.
    project.lakehouse("retail", "extract", "--source", penguins, "--source", readings)
    for name in (penguins, readings):
        project.lakehouse("table", "scaffold", name, "--write")
    drafted = project.contract(f"silver.{penguins}")
    assert drafted["build"]["apply"] == "upsert" and drafted["build"]["sequence"] == ["_snapshot"]
    assert drafted["build"]["deletes"] == "_deleted"
    drafted["build"]["reject"] = [
        {"reason": "implausible_body_mass", "when": "body_mass_g NOT BETWEEN 1000 AND 10000"}
    ]  # the review: a data-entry error is quarantined, not averaged into gold
    project.write_contract(f"silver.{penguins}", drafted)
    drafted = project.contract(f"silver.{readings}")
    assert (drafted["build"]["key"], drafted["build"]["sequence"]) == (["nest", "read_at"], ["ingested_at"])
    drafted["build"]["reject"] = [{"reason": "not_a_number", "when": "isnan(temperature_c)"}]
    project.write_contract(f"silver.{readings}", drafted)

    project.notebook("notebooks/silver/build_table.ipynb", out, table=f"silver.{penguins}")

    # 3. The source changes: two birds reweighed, one mistyped, one gone; readings corrected and added.
    adelie, gentoo = "Adelie Penguin (Pygoscelis adeliae)", "Gentoo penguin (Pygoscelis papua)"
    _sql(
        own_db,
        f"UPDATE field.penguins SET body_mass_g = body_mass_g + 50 WHERE species = '{adelie}' AND sample_number IN (1, 2)",
        f"UPDATE field.penguins SET body_mass_g = 38000 WHERE species = '{adelie}' AND sample_number = 3",
        f"DELETE FROM field.penguins WHERE species = '{gentoo}' AND sample_number = 4",
        "UPDATE field.nest_readings SET temperature_c = -temperature_c, ingested_at = '2024-04-02 00:00:00+00' "
        "WHERE nest = 'Dream-2' AND read_at < '2024-03-31 01:00:00'",
        "INSERT INTO field.nest_readings VALUES ('Biscoe-1', '2024-03-31 06:00:00', 'NaN', '2024-04-02 00:00:00+00'),"
        " ('Biscoe-1', '2024-03-31 06:10:00', 26.5, '2024-04-02 00:00:00+00')",
    )
    project.lakehouse("retail", "extract", "--source", penguins, "--source", readings)
    project.notebook("notebooks/silver/build_table.ipynb", out, table=f"silver.{penguins}")
    project.notebook("notebooks/silver/build_table.ipynb", out, table=f"silver.{readings}")

    # 4. Gold models of the user's own, in SQL over the silver tables.
    project.gold_model(
        f"{penguins}_by_island",
        f"SELECT species, island, count(*) AS birds, avg(body_mass_g) AS mean_body_mass_g\n"
        f"FROM {{{{ ref('silver.{penguins}') }}}} WHERE NOT _deleted GROUP BY 1, 2\n",
        [("species", "string"), ("island", "string"), ("birds", "long"), ("mean_body_mass_g", "double")],
        [rule("expect_compound_columns_to_be_unique", "species_island_unique", column_list=["species", "island"]),
         rule("expect_column_values_to_be_between", "birds_positive", column="birds", min_value=1)],
        "field-biology",
    )  # fmt: skip
    project.gold_model(
        f"{readings}_hourly",
        f"SELECT nest, CAST(date_trunc('hour', read_at) AS TIMESTAMP) AS hour, count(*) AS readings,\n"
        f"  avg(temperature_c) AS mean_temperature_c FROM {{{{ ref('silver.{readings}') }}}} GROUP BY 1, 2\n",
        [("nest", "string"), ("hour", "timestamp"), ("readings", "long"), ("mean_temperature_c", "double")],
        [rule("expect_column_values_to_be_between", "readings_per_hour", column="readings", min_value=1,
              max_value=6)],
        "field-biology",
    )  # fmt: skip
    tasks = project.declared_tasks()
    assert tasks[task(f"silver.{penguins}")]["upstream"] == ["bronze-extract-retail"]
    assert tasks[task(f"gold.{penguins}_by_island")]["upstream"] == [task(f"silver.{penguins}")]
    assert tasks[task(f"gold.{readings}_hourly")]["upstream"] == [task(f"silver.{readings}")]
    project.notebook("notebooks/gold/build_model.ipynb", out, table=f"gold.{penguins}_by_island")
    project.notebook("notebooks/gold/build_model.ipynb", out, table=f"gold.{readings}_hourly")

    # Silver: the latest version of each bird, a tombstone for the one gone, the mistyped one quarantined.
    from deltalake import DeltaTable

    def table(layer: str, name: str) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = (
            DeltaTable(postgres.table_path(layer, name)).to_pyarrow_table().to_pylist()
        )
        return rows

    silver = {(r["species"], r["sample_number"]): r for r in table("silver", penguins)}
    assert len(silver) == 344
    original = {(r[2], int(r[1] or 0)): r for r in birds}
    gone = silver[(gentoo, 4)]
    assert gone["_deleted"] and gone["island"] == original[(gentoo, 4)][4]  # a tombstone keeps what was known
    assert [k for k, r in silver.items() if r["_deleted"]] == [(gentoo, 4)]
    for number in (1, 2):
        assert silver[(adelie, number)]["body_mass_g"] == int(original[(adelie, number)][12] or 0) + 50
    assert silver[(adelie, 3)]["body_mass_g"] == int(original[(adelie, 3)][12] or 0)  # the bad version held
    quarantined = table("silver", f"{penguins}_quarantine")
    assert [(q["reason"], q["species"], q["sample_number"]) for q in quarantined] == [
        ("implausible_body_mass", adelie, 3)
    ]
    assert '"body_mass_g":38000' in quarantined[0]["record"]
    by_island = table("gold", f"{penguins}_by_island")
    assert sum(r["birds"] for r in by_island) == 343
    assert Counter((r[2], r[4]) for r in birds) - Counter({(gentoo, original[(gentoo, 4)][4]): 1}) == Counter(
        {(r["species"], r["island"]): r["birds"] for r in by_island}
    )

    # The composite key: the corrected readings replaced, the new one added, the NaN quarantined.
    nests = {(r["nest"], r["read_at"]): r for r in table("silver", readings)}
    assert len(nests) == 3 * 36 + 1
    corrected = [r for (n, t), r in nests.items() if n == "Dream-2" and t < datetime(2024, 3, 31, 1)]
    assert len(corrected) == 6 and all(r["temperature_c"] < 0 for r in corrected)
    assert [q["reason"] for q in table("silver", f"{readings}_quarantine")] == ["not_a_number"]
    hourly = table("gold", f"{readings}_hourly")
    assert sum(r["readings"] for r in hourly) == 3 * 36 + 1
    assert {r["nest"] for r in hourly} == {"Biscoe-1", "Dream-2", "Torgersen-3"}

    # Validated, catalogued, traced; and nothing under lib/ knows any of it.
    checked = project.lakehouse(
        "catalog", "check", "--no-freshness", f"silver.{penguins}", f"silver.{readings}",
        f"gold.{penguins}_by_island", f"gold.{readings}_hourly",
    )  # fmt: skip
    assert "schema: 4 tables match their contracts" in checked.stdout
    rules = assert_traced(postgres, f"bronze.{penguins}", f"silver.{penguins}", f"gold.{penguins}_by_island")
    assert {"key_unique", "species_island_unique", "birds_positive"} <= set(
        rules[f"silver.{penguins}"] + rules[f"gold.{penguins}_by_island"]
    )
    assert_traced(postgres, f"bronze.{readings}", f"silver.{readings}", f"gold.{readings}_hourly")
    assert_lib_knows_none_of(postgres, ("penguin", "culmen", "flipper", "nest_readings", "FIELD_DB_URL"))


# --- an HTTP API of the user's own -------------------------------------------------------------------------


def sprint_records() -> list[dict[str, Any]]:
    """The Olympic 100 m medallists 1896-2012 (bokeh_sampledata), as nested JSON records."""
    with _data("bokeh_sampledata", "_data", "sprint.csv").open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle, skipinitialspace=True))
    return [
        {"year": int(r["Year"]), "medal": r["Medal"], "country": r["Country"],
         "athlete": {"name": r["Name"]}, "result": {"time_s": float(r["Time"])}}
        for r in rows
    ]  # fmt: skip


class _Api(BaseHTTPRequestHandler):
    """The user's API: nested records, cursor pagination, an API key in a header."""

    records: ClassVar[list[dict[str, Any]]] = []
    token: ClassVar[str] = ""

    def do_GET(self) -> None:
        query = {k: v[0] for k, v in parse_qs(urlsplit(self.path).query).items()}
        if self.headers.get("X-Api-Key") != self.token:
            self.send_response(401)
            self.end_headers()
            return
        start, size = int(query.get("cursor", 0)), int(query.get("page_size", 10))
        chunk = self.records[start : start + size]
        more = start + size < len(self.records)
        body = {"result": {"items": chunk}, "meta": {"paging": {"next": str(start + size) if more else None}}}
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


def test_an_http_api_of_our_own_reaches_gold(stack: Settings, spark: Any, tmp_path: Path) -> None:
    tag = uuid.uuid4().hex[:6]
    name = f"sprint_medals_{tag}"
    records = sprint_records()
    assert len(records) == 85
    hostile = [
        {"medal": "GOLD", "country": "XXX", "athlete": {"name": "No Year"}, "result": {"time_s": 9.9}},
        {"year": 2016, "medal": "GOLD", "country": "JAM", "athlete": {"name": "Usain Bolt"},
         "result": {"time_s": "9.81 (wind +0.2)"}},
    ]  # fmt: skip
    _Api.records = [*records[:20], records[0], *hostile, *records[20:]]  # a record served twice
    _Api.token = f"key-{tag}"
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Api)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/v1/medals"
        project = Project.create(stack, tmp_path, {"SPRINT_API_KEY": _Api.token})
        out = tmp_path / "runs"
        out.mkdir()
        added = project.lakehouse(
            "source", "add", "http", name, "--url", url, "--page-size", "25", "--key", "year,medal,country",
            "--auth-header", "X-Api-Key", "--auth-value", "${SPRINT_API_KEY}", "--owner", "sports-desk",
            "--description", "Olympic 100 m medallists.",
        )  # fmt: skip
        entry = yaml.safe_load((project.root / "sources.yaml").read_text())["sources"][name]
        assert entry["pagination"]["records_path"] == "result.items", added.stdout
        assert entry["pagination"]["next_cursor_path"] == "meta.paging.next"
        assert entry["auth"] == {"header": "X-Api-Key", "value": "${SPRINT_API_KEY}"}  # the secret stays out
        assert entry["contract"] == {"year": "long", "medal": "string", "country": "string"}

        project.notebook("notebooks/bronze/pull_apis.ipynb", out, source=name)
        project.lakehouse("table", "scaffold", name, "--write")
        drafted = project.contract(f"silver.{name}")
        columns = {c["name"]: c for c in drafted["columns"]}
        assert columns["result_time_s"]["expr"] == "get_json_object(record, '$.result.time_s')"
        assert columns["result_time_s"]["type"] == "string"  # a text among the sampled numbers
        columns["result_time_s"]["type"] = "double"  # the review: a time is a number; a text is quarantined
        project.write_contract(f"silver.{name}", drafted)
        assert (columns["athlete_name"]["pii"], columns["athlete_name"]["treatment"]) == ("name", "tokenize")
        assert (
            drafted["build"]["key"] == ["year", "medal", "country"] and drafted["build"]["apply"] == "upsert"
        )
        project.notebook("notebooks/silver/build_table.ipynb", out, table=f"silver.{name}")

        project.gold_model(
            f"{name}_by_country",
            f"SELECT country, count(*) AS medals, count_if(medal = 'GOLD') AS golds,\n"
            f"  min(result_time_s) AS best_time_s FROM {{{{ ref('silver.{name}') }}}} GROUP BY country\n",
            [("country", "string"), ("medals", "long"), ("golds", "long"), ("best_time_s", "double")],
            [rule("expect_column_values_to_be_unique", "country_unique", column="country"),
             rule("expect_column_values_to_be_between", "plausible_time", column="best_time_s",
                  min_value=9.0, max_value=13.0)],
            "sports-desk",
        )  # fmt: skip
        assert project.declared_tasks()[task(f"silver.{name}")]["upstream"] == ["bronze-pull-apis"]
        project.notebook("notebooks/gold/build_model.ipynb", out, table=f"gold.{name}_by_country")
    finally:
        server.shutdown()
        server.server_close()

    silver = spark.read.format("delta").load(stack.table_path("silver", name))
    assert silver.count() == 85  # the re-served record once
    assert silver.where("athlete_name LIKE '%Bolt%'").count() == 0  # tokenized, as the contract says
    quarantine = spark.read.format("delta").load(stack.table_path("silver", f"{name}_quarantine")).collect()
    assert [(q["reason"], q["year"]) for q in quarantine] == [("invalid_value:result_time_s", 2016)]
    letters = spark.read.format("delta").load(stack.table_path("bronze", f"{name}_dead_letter")).collect()
    assert ["No Year" in d["record"] and "missing fields ['year']" in d["reason"] for d in letters] == [True]
    gold = {
        r["country"]: r
        for r in spark.read.format("delta").load(stack.table_path("gold", f"{name}_by_country")).collect()
    }
    assert sum(r["medals"] for r in gold.values()) == 85
    golds = Counter(r["country"] for r in records if r["medal"] == "GOLD")
    assert {c: r["golds"] for c, r in gold.items() if r["golds"]} == dict(golds)
    assert gold["JAM"]["best_time_s"] == min(r["result"]["time_s"] for r in records if r["country"] == "JAM")
    assert Counter(r["country"] for r in records) == Counter({c: r["medals"] for c, r in gold.items()})

    checked = project.lakehouse(
        "catalog", "check", "--no-freshness", f"silver.{name}", f"gold.{name}_by_country"
    )
    assert "schema: 2 tables match their contracts" in checked.stdout
    assert_traced(stack, f"bronze.{name}", f"silver.{name}", f"gold.{name}_by_country")
    assert_lib_knows_none_of(stack, ("sprint", "medal", "athlete", "SPRINT_API_KEY"))


# --- a device fleet over MQTT --------------------------------------------------------------------------------


def _cgm_rows() -> list[dict[str, str]]:
    with gzip.open(
        _data("bokeh_sampledata", "_data", "CGM.csv.gz"), "rt", newline="", encoding="utf-8"
    ) as handle:
        return list(csv.DictReader(handle))


def test_a_device_fleet_of_our_own_reaches_gold(mqtt: Settings, spark: Any, tmp_path: Path) -> None:
    from test_device_fleet_by_configuration import declaration, reading

    from lakehouse.simulate.devices import DeviceMessage, publish
    from lakehouse.stack import ensure_topics

    tag = uuid.uuid4().hex[:6]
    name, topic = f"cgm_glucose_{tag}", f"cgm-{tag}"
    rows = _cgm_rows()
    first_duplicate = next(i for i in range(1, len(rows)) if rows[i]["datetime"] == rows[i - 1]["datetime"])
    fleet = {
        "cgm-a": list(range(first_duplicate - 30, first_duplicate + 30)),  # a real duplicate time and a gap
        "cgm-b": [i for i, row in enumerate(rows) if row["isig"] == "nil"][:12],  # real "nil" sensor currents
        "cgm-c": [i for i, row in enumerate(rows) if row["glucose"] in ("40", "400")][
            :6
        ],  # the sensor's limits
    }
    messages = [
        DeviceMessage(f"{topic}/{s}/readings", json.dumps(reading(rows[i], i, s)).encode(), s, i, "valid")
        for s, numbers in fleet.items()
        for i in numbers
    ]
    project = Project.create(mqtt, tmp_path)
    out = tmp_path / "runs"
    out.mkdir()
    payload = tmp_path / "cgm-payload.yaml"
    payload.write_text(yaml.safe_dump({"payload": declaration(tag)["payload"]}))
    project.lakehouse(
        "source", "add", "mqtt", name, "--topic", f"{topic}/+/readings", "--kafka-topic", topic,
        "--topic-pattern", f"{topic}/{{sensor_id}}/readings", "--payload", str(payload),
        "--owner", "clinical-data", "--description", "Continuous glucose monitors.",
    )  # fmt: skip
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LAKEHOUSE_SOURCES", str(project.root / "sources.yaml"))
        assert topic in ensure_topics(mqtt)

    import subprocess

    from lakehouse.dag import ploomber_env
    from onboarding_kit import BIN

    bridge = subprocess.Popen(
        [str(BIN / "lakehouse"), "--env", "test", "iot", "bridge", "--source", name, "--client-id", f"it-{tag}",
         "--once-idle-seconds", "5"],
        cwd=project.root, env={**ploomber_env(mqtt), "LAKEHOUSE_ROOT": str(project.root), **project.env,
                               "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert bridge.stdout is not None
    ready = bridge.stdout.readline()
    if not ready.startswith("bridge "):
        _, err = bridge.communicate(timeout=30)
        pytest.fail(f"the bridge did not start: {ready!r} {err[-3000:]}")
    resent = messages[5:10]  # at-least-once devices re-send the same bytes
    publish([*messages, *resent], host=mqtt.mqtt.host, port=mqtt.mqtt.port)
    bridged, err = bridge.communicate(timeout=120)
    assert bridge.returncode == 0, err[-3000:]
    assert f"{len(messages) + len(resent)} forwarded, 0 dead-lettered" in bridged

    project.notebook("notebooks/bronze/ingest_events.ipynb", out, topic=topic)
    project.lakehouse("table", "scaffold", name, "--write")
    drafted = project.contract(f"silver.{name}")
    assert drafted["build"]["inputs"][0]["payload"] == name
    assert drafted["build"]["key"] == ["sensor_id", "reading_no"]
    assert drafted["build"]["event_time"]["order_by"] == ["reading_no"]
    # The review: one glucose value per sensor and minute (the series repeats a time: the first reading wins),
    # and the sensor's limits (40 and 400 mg/dL mean LOW and HIGH, not a measurement) are quarantined.
    drafted["build"].update(
        key=["sensor_id", "measured_at"],
        sequence=["reading_no"],
        reject=[{"reason": "sensor_limit", "when": "glucose_mg_dl <= 40 OR glucose_mg_dl >= 400"}],
    )
    project.write_contract(f"silver.{name}", drafted)
    suite_path = project.root / "quality" / "suites" / "silver" / f"{name}.json"
    suite = json.loads(suite_path.read_text())
    for expectation in suite["expectations"]:
        if expectation["meta"]["rule"] == "key_unique":
            expectation["kwargs"] = {"column_list": ["sensor_id", "measured_at"]}
    suite_path.write_text(json.dumps(suite))
    project.notebook("notebooks/silver/build_table.ipynb", out, table=f"silver.{name}")

    project.gold_model(
        f"{name}_hourly",
        f"SELECT sensor_id, CAST(date_trunc('hour', measured_at) AS TIMESTAMP) AS hour, count(*) AS readings,\n"
        f"  avg(glucose_mg_dl) AS mean_glucose_mg_dl, count(isig_na) AS with_sensor_current\n"
        f"FROM {{{{ ref('silver.{name}') }}}} GROUP BY 1, 2\n",
        [("sensor_id", "string"), ("hour", "timestamp"), ("readings", "long"), ("mean_glucose_mg_dl", "double"),
         ("with_sensor_current", "long")],
        [rule("expect_compound_columns_to_be_unique", "sensor_hour_unique", column_list=["sensor_id", "hour"]),
         rule("expect_column_values_to_be_between", "readings_per_hour", column="readings", min_value=1,
              max_value=13)],
        "clinical-data",
    )  # fmt: skip
    tasks = project.declared_tasks()
    assert tasks[task(f"silver.{name}")]["upstream"] == ["bronze-ingest-events"]
    project.notebook("notebooks/gold/build_model.ipynb", out, table=f"gold.{name}_hourly")

    # Silver: one reading per sensor and time (re-sends and the repeated time deduplicated), nil currents null.
    expected: dict[tuple[str, datetime], int] = {}
    for sensor, numbers in fleet.items():
        for i in numbers:
            at = datetime.fromisoformat(rows[i]["datetime"]).replace(tzinfo=UTC)
            if rows[i]["glucose"] not in ("40", "400"):
                expected.setdefault((sensor, at), i)
    silver = {
        (r["sensor_id"], r["measured_at"]): r
        for r in spark.read.format("delta").load(mqtt.table_path("silver", name)).collect()
    }
    assert len(silver) == len(expected) < len(messages) - len(fleet["cgm-c"])  # the repeated time: once
    assert {k: r["reading_no"] for k, r in _utc(silver).items()} == expected
    assert all(r["isig_na"] is None for (s, _), r in silver.items() if s == "cgm-b")
    assert all(r["isig_na"] is not None for (s, _), r in silver.items() if s == "cgm-a")
    quarantine = spark.read.format("delta").load(mqtt.table_path("silver", f"{name}_quarantine")).collect()
    assert Counter(q["reason"] for q in quarantine) == Counter({"sensor_limit": len(fleet["cgm-c"])})
    hourly = spark.read.format("delta").load(mqtt.table_path("gold", f"{name}_hourly")).collect()
    assert sum(r["readings"] for r in hourly) == len(expected)
    assert sum(r["with_sensor_current"] for r in hourly if r["sensor_id"] == "cgm-b") == 0

    checked = project.lakehouse("catalog", "check", "--no-freshness", f"silver.{name}", f"gold.{name}_hourly")
    assert "schema: 2 tables match their contracts" in checked.stdout
    assert_traced(mqtt, f"bronze.{name}", f"silver.{name}", f"gold.{name}_hourly")
    assert_lib_knows_none_of(mqtt, ("cgm", "glucose", "reading_no", "isig", "sensor.serial"))


def _utc(rows: dict[tuple[str, datetime], Any]) -> dict[tuple[str, datetime], Any]:
    """Spark Connect gives timestamps as naive local (UTC in the test session) datetimes."""
    return {(s, t if t.tzinfo else t.replace(tzinfo=UTC)): r for (s, t), r in rows.items()}
