"""``lakehouse source add <kind> <name>``: sample a new source and register it (``sources.yaml`` or
``$LAKEHOUSE_SOURCES``), then say what to run next.

Registered with ``main.add_command(source)`` in :mod:`lakehouse.cli`. The sampling and the drafted entry are
:mod:`lakehouse.sources.discover`'s.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
import yaml

from lakehouse.cli_kit import LakehouseGroup, pass_settings
from lakehouse.config import Settings
from lakehouse.errors import ConfigError

_KINDS = ("postgres", "kafka", "http", "mqtt")


@click.group(cls=LakehouseGroup)
def source() -> None:
    """Sources of your own: sample one and add it to the registry."""


def _keys(value: str | None) -> list[str]:
    return [k.strip() for k in (value or "").split(",") if k.strip()]


@source.command()
@click.argument("kind", type=click.Choice(_KINDS))
@click.argument("name")
@click.option("--description", default="", help="What one record is.")
@click.option("--owner", default=None, help="The owning team (default: the registry's default).")
@click.option("--bronze", default=None, help="The bronze table (default: the source's name).")
@click.option("--key", "key_text", default=None, help="Comma-separated key columns (default: proposed).")
@click.option("--table", default=None, help="postgres: table or schema.table.")
@click.option(
    "--connection", default=None, help="postgres: ${VARIABLE} holding a libpq string or URL (default: env's)."
)
@click.option("--mode", type=click.Choice(["incremental", "snapshot"]), default=None, help="postgres.")
@click.option("--watermark", default=None, help="postgres: the column that grows with each change.")
@click.option("--topic", default=None, help="kafka: the topic; mqtt: the broker's topic filter.")
@click.option("--kafka-topic", default=None, help="mqtt: the Kafka topic it is bridged to.")
@click.option("--topic-pattern", default=None, help="mqtt: e.g. fleet/{device_id}/readings.")
@click.option(
    "--payload",
    "payload_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="mqtt: a YAML file with the payload declaration (default: drafted from sampled messages).",
)
@click.option(
    "--sequence", default=None, help="mqtt, drafted payload: the field ordering a device's records."
)
@click.option("--event-time", default=None, help="mqtt, drafted payload: the timestamp field.")
@click.option("--sample-seconds", type=click.FloatRange(min=0), default=10.0, show_default=True)
@click.option("--url", default=None, help="http: the API's URL (${VARIABLES} allowed).")
@click.option("--records-path", default=None, help="http: dotted path to the records (default: found).")
@click.option(
    "--next-cursor-path", default=None, help="http: dotted path to the next cursor (default: found)."
)
@click.option(
    "--cursor-param", default="cursor", show_default=True, help="http: the cursor's query parameter."
)
@click.option("--page-size", type=click.IntRange(min=1), default=None, help="http: records per page.")
@click.option("--auth-header", default="Authorization", show_default=True, help="http.")
@click.option("--auth-value", default=None, help="http: e.g. 'Bearer ${MY_API_TOKEN}' (kept as written).")
@click.option("--dry-run", is_flag=True, help="Print the entry; write nothing.")
@pass_settings
def add(settings: Settings, kind: str, name: str, dry_run: bool, **options: Any) -> None:
    """Sample source NAME of KIND and add its entry to the registry (refusing a name that exists)."""
    from lakehouse.sources import discover

    discover.check_new(settings, name)
    key = _keys(options["key_text"])
    common = {
        "bronze": options["bronze"],
        "description": options["description"],
        "owner": options["owner"],
        "key": key,
    }
    proposal: discover.Proposal
    if kind == "postgres":
        table = _required(options, "table", kind)
        columns, primary = discover.sample_postgres(settings, table, options["connection"])
        proposal = discover.propose_postgres(
            name,
            table,
            columns,
            primary,
            connection=options["connection"],
            watermark=options["watermark"],
            mode=options["mode"],
            **common,
        )
    elif kind == "kafka":
        topic = _required(options, "topic", kind)
        samples, partitions = discover.sample_kafka(settings, topic)
        proposal = discover.propose_kafka(name, topic, samples, partitions=partitions, **common)
    elif kind == "http":
        url = _required(options, "url", kind)
        headers = {options["auth_header"]: options["auth_value"]} if options["auth_value"] else {}
        body = discover.sample_http(url, headers, settings=settings)
        proposal = discover.propose_http(
            name,
            url,
            body,
            records_path=options["records_path"],
            next_cursor_path=options["next_cursor_path"],
            cursor_param=options["cursor_param"],
            page_size=options["page_size"],
            auth_header=options["auth_header"],
            auth_value=options["auth_value"],
            **common,
        )
    else:
        topic = _required(options, "topic", kind)
        notes: list[str] = []
        if options["payload_file"] is not None:
            try:
                payload = yaml.safe_load(options["payload_file"].read_text(encoding="utf-8"))
            except yaml.YAMLError as exc:
                raise ConfigError(f"{options['payload_file']} is not valid YAML: {exc}") from exc
            payload = payload.get("payload", payload) if isinstance(payload, dict) else payload
        else:
            if not key:
                raise ConfigError("mqtt without --payload: name the device field(s) with --key to draft one")
            samples = discover.sample_mqtt(settings, topic, seconds=options["sample_seconds"])
            payload, notes = discover.propose_payload(
                samples, key=key, sequence=options["sequence"], event_time=options["event_time"]
            )
        if not isinstance(payload, dict):
            raise ConfigError("the payload declaration must be a mapping (fields, key, …)")
        proposal = discover.propose_mqtt(
            name,
            topic,
            payload,
            kafka_topic=options["kafka_topic"],
            topic_pattern=options["topic_pattern"],
            bronze=options["bronze"],
            description=options["description"],
            owner=options["owner"],
        )
        proposal = discover.Proposal(
            proposal.name, proposal.entry, (*notes, *proposal.notes), proposal.fields
        )
    click.echo(discover.entry_text(name, proposal.entry), nl=False)
    for note in proposal.notes:
        click.echo(f"note: {note}")
    if dry_run:
        click.echo("dry run: nothing written")
        return
    path = discover.add_to_registry(settings, proposal)
    click.echo(f"added source {name!r} to {path}")
    ingested = proposal.entry.get("topic") or proposal.entry.get("kafka_topic")
    land = {
        "postgres": f"lakehouse retail extract --source {name}",
        "kafka": f"lakehouse ingest --topic {ingested}",
        "http": f"lakehouse api pull --source {name}",
        "mqtt": f"lakehouse iot bridge --source {name}, then lakehouse ingest --topic {ingested}",
    }[kind]
    click.echo(
        f"next: land it ({land}), then `lakehouse table scaffold {name} --write`, review, `lakehouse build`"
    )


def _required(options: dict[str, Any], option: str, kind: str) -> str:
    value = options[option]
    if not value:
        raise ConfigError(f"source add {kind} needs --{option.replace('_', '-')}")
    return str(value)
