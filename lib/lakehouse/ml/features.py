"""The feature store: Feast entities and feature views declared in ``features/``, over gold Delta tables.

A user adds features by configuration, not code:

- ``features/entities.yaml`` names what features describe (user, session, customer, device …) and the column
  that identifies one (its join key);
- ``features/views/<name>.yaml`` declares one feature view: the gold table it reads, its entities, the
  column that says when a row became known (its event timestamp), how long a value stays valid (TTL) and the
  columns that are features. Types come from the table's catalog contract (``catalog/gold/<table>.yaml``), so
  a view cannot drift from its table unnoticed.

:func:`load_feature_repo` reads and checks the declarations against the catalog; :func:`definitions` turns
them into Feast objects; :func:`feature_store` is Feast's ``FeatureStore`` for one environment, with its
registry under the workspace, the offline store on the environment's Spark (Feast's Spark store reads the
Delta tables where they are, over Spark Connect locally and on a cluster alike) and the online store on the
environment's Redis. :func:`apply` and :func:`materialize` are the DAG's two feature tasks;
:func:`training_set` is a point-in-time-correct training set with the lake versions it read;
:func:`online_features` is what serving reads.

Example (in a notebook)::

    report = apply(settings)                       # feast apply
    done = materialize(settings)                   # feast materialize-incremental, per view
    frame = training_set(settings, labels, ["user_history:sessions_28d"]).frame
"""

from __future__ import annotations

import ast
import contextlib
import functools
import json
import logging
import re
import shutil
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import CodeType
from typing import TYPE_CHECKING, Any, Final, Literal, TypeVar, cast

import pandas as pd
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from lakehouse import arrow_lake
from lakehouse.config import Settings
from lakehouse.errors import ConfigError, DataError, ServiceError
from lakehouse.governance.catalog import Catalog, TableContract, load_catalog, parse_duration

if TYPE_CHECKING:
    from feast import FeatureStore
    from feast.repo_config import RepoConfig
    from pyspark.sql import DataFrame as SparkDataFrame
    from pyspark.sql import SparkSession

log = logging.getLogger(__name__)
# Feast warns on every use of its Spark store that it is experimental; said once here instead: it is, and the
# tests of this module are what this project relies on.
warnings.filterwarnings("ignore", message=r"The spark .* experimental feature", category=RuntimeWarning)

PROJECT: Final = "lakehouse"
# Feast's Spark store switches this session setting on for its own SQL and never switches it back; with it
# on, a back-quoted column name in anyone's later SQL is read as a regular expression.
_SPARK_REGEX_SETTING: Final = "spark.sql.parser.quotedRegexColumnNames"
_NAME: Final = re.compile(r"^[a-z][a-z0-9_]*$")
# Delta type (catalog contract) → Feast type name (feast.types)
_FEAST_TYPES: Final = {
    "string": "String",
    "long": "Int64",
    "bigint": "Int64",
    "integer": "Int32",
    "int": "Int32",
    "short": "Int32",
    "byte": "Int32",
    "double": "Float64",
    "float": "Float32",
    "boolean": "Bool",
    "timestamp": "UnixTimestamp",
}
_ENTITY_TYPES: Final = {"string": "STRING", "long": "INT64", "integer": "INT32"}
# What an on-demand feature's expression may contain: names, numbers, arithmetic, comparisons, boolean logic.
_EXPRESSION_NODES: Final = (
    ast.Expression,
    ast.Name,
    ast.Load,
    ast.Constant,
    ast.BinOp,
    ast.UnaryOp,
    ast.BoolOp,
    ast.Compare,
    ast.Add,
    ast.Sub,
    ast.Mult,
    ast.Div,
    ast.Pow,
    ast.Mod,
    ast.USub,
    ast.UAdd,
    ast.Not,
    ast.And,
    ast.Or,
    ast.Eq,
    ast.NotEq,
    ast.Lt,
    ast.LtE,
    ast.Gt,
    ast.GtE,
)


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


_S = TypeVar("_S", bound=_Spec)


class EntitySpec(_Spec):
    """One entity of ``features/entities.yaml``."""

    join_key: str = Field(pattern=_NAME.pattern)
    type: Literal["string", "long", "integer"] = "string"
    description: str = ""


class ViewSpec(_Spec):
    """One feature view, ``features/views/<name>.yaml``; its name is the file's."""

    name: str = Field(pattern=_NAME.pattern)
    description: str = ""
    source: str = Field(pattern=r"^gold\.[a-z0-9_]+$")
    entities: tuple[str, ...] = Field(min_length=1)
    timestamp: str
    ttl: str
    features: tuple[str, ...] = Field(min_length=1)
    online: bool = True
    tags: dict[str, str] = Field(default_factory=dict)

    @field_validator("ttl")
    @classmethod
    def _duration(cls, value: str) -> str:
        parse_duration(value)
        return value

    @property
    def ttl_delta(self) -> timedelta:
        return timedelta(seconds=parse_duration(self.ttl))

    def references(self) -> list[str]:
        """Its features as Feast references, ``<view>:<feature>``."""
        return [f"{self.name}:{feature}" for feature in self.features]


class DerivedFeature(_Spec):
    """One feature of an on-demand view: an arithmetic expression over its sources' features."""

    expression: str = Field(min_length=1)
    type: Literal["double", "boolean"] = "double"
    description: str = ""


class OnDemandSpec(_Spec):
    """One on-demand feature view, ``features/on_demand/<name>.yaml``: features computed from other views'
    features when they are read (online and in training sets alike), never stored."""

    name: str = Field(pattern=_NAME.pattern)
    description: str = ""
    sources: tuple[str, ...] = Field(min_length=1)
    features: dict[str, DerivedFeature] = Field(min_length=1)
    tags: dict[str, str] = Field(default_factory=dict)

    def references(self) -> list[str]:
        return [f"{self.name}:{feature}" for feature in self.features]


@dataclass(frozen=True)
class FeatureRepo:
    """The declared entities, views and on-demand views, checked against the catalog."""

    root: Path
    entities: Mapping[str, EntitySpec]
    views: Mapping[str, ViewSpec]
    contracts: Mapping[str, TableContract] = field(repr=False)
    on_demand: Mapping[str, OnDemandSpec] = field(default_factory=dict)

    def source_tables(self, existing_in: Settings | None = None) -> list[str]:
        """The gold tables the views read (only those that exist, given the settings to look in)."""
        tables = sorted({view.source for view in self.views.values()})
        if existing_in is None:
            return tables
        return [t for t in tables if (Path(existing_in.table_path(*t.split(".", 1))) / "_delta_log").is_dir()]

    def view(self, name: str) -> ViewSpec:
        try:
            return self.views[name]
        except KeyError:
            raise ConfigError(
                f"no feature view {name!r} in {self.root / 'views'} (declared: {sorted(self.views)})"
            ) from None

    def feature_type(self, view: ViewSpec, column: str) -> str:
        """The Delta type of one of ``view``'s columns, from its table's contract."""
        return self.contracts[view.source].column(column).type

    # Views and on-demand views alike, by name: what a model's feature references resolve through.
    def lookup(self, name: str) -> ViewSpec | OnDemandSpec:
        if name in self.on_demand:
            return self.on_demand[name]
        if name in self.views:
            return self.views[name]
        raise ConfigError(
            f"no feature view {name!r} in {self.root / 'views'} or {self.root / 'on_demand'} "
            f"(declared: {sorted([*self.views, *self.on_demand])})"
        )

    def features_of(self, name: str) -> list[str]:
        return list(self.lookup(name).features)

    def references_of(self, name: str) -> list[str]:
        return self.lookup(name).references()

    def base_views(self, name: str) -> list[ViewSpec]:
        """The stored views a (possibly on-demand) view reads."""
        found = self.lookup(name)
        if isinstance(found, ViewSpec):
            return [found]
        return [self.views[source] for source in found.sources]

    def entities_of(self, name: str) -> list[str]:
        return sorted({e for view in self.base_views(name) for e in view.entities})

    def tables_of(self, name: str) -> list[str]:
        return sorted({view.source for view in self.base_views(name)})

    def type_of(self, name: str, feature: str) -> str:
        """The Delta type of a feature of a view or an on-demand view."""
        found = self.lookup(name)
        if isinstance(found, OnDemandSpec):
            return found.features[feature].type
        return self.feature_type(found, feature)


def features_root(settings: Settings) -> Path:
    """The feature declarations of the project (``features/``)."""
    return Path(settings.root) / "features"


def _read_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from exc


def _problems(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or '(top level)'}: {e['msg']}" for e in exc.errors()
    )


def load_feature_repo(
    settings: Settings, root: Path | None = None, catalog: Catalog | None = None
) -> FeatureRepo:
    """Read ``features/`` and check every view against its gold table's catalog contract.

    Raises:
        ConfigError: naming the file and what is wrong: an unknown entity or table, a column the table does
            not have, a timestamp that is not a timestamp, a feature of a type Feast cannot hold.
    """
    root = root or features_root(settings)
    catalog = catalog or load_catalog(settings)
    entities_file = root / "entities.yaml"
    document = _read_yaml(entities_file) if entities_file.exists() else {}
    if not isinstance(document, dict):
        raise ConfigError(f"{entities_file} must map entity names to their join_key (and type, description)")
    entities: dict[str, EntitySpec] = {}
    for name, body in document.items():
        if not isinstance(name, str) or not _NAME.match(name):
            raise ConfigError(f"{entities_file}: entity name {name!r} is not lower_snake_case")
        try:
            entities[name] = EntitySpec.model_validate(body)
        except ValidationError as exc:
            raise ConfigError(f"{entities_file}: entity {name}: {_problems(exc)}") from exc

    views: dict[str, ViewSpec] = {}
    contracts: dict[str, TableContract] = {}
    for path, view in _declared(root / "views", ViewSpec, "feature view"):
        contract = _check_view(view, path, entities, catalog)
        views[view.name] = view
        contracts[view.source] = contract
    on_demand: dict[str, OnDemandSpec] = {}
    for path, derived in _declared(root / "on_demand", OnDemandSpec, "on-demand feature view"):
        if derived.name in views:
            raise ConfigError(f"{path}: {derived.name!r} is already a feature view's name")
        _check_on_demand(derived, path, views)
        on_demand[derived.name] = derived
    return FeatureRepo(root=root, entities=entities, views=views, contracts=contracts, on_demand=on_demand)


def _declared(folder: Path, spec: type[_S], what: str) -> Iterator[tuple[Path, _S]]:
    """Each ``<name>.yaml`` of ``folder``, validated as ``spec`` named after its file."""
    for path in sorted(folder.glob("*.yaml")):
        body = _read_yaml(path)
        if not isinstance(body, dict):
            raise ConfigError(f"{path} must be a mapping of the {what}'s fields")
        try:
            yield path, spec.model_validate({"name": path.stem, **body})
        except ValidationError as exc:
            raise ConfigError(f"invalid {what} {path}: {_problems(exc)}") from exc


def _check_on_demand(spec: OnDemandSpec, path: Path, views: Mapping[str, ViewSpec]) -> None:
    """Each expression reads only its sources' features, by name, with arithmetic and comparisons."""
    unknown = [source for source in spec.sources if source not in views]
    if unknown:
        raise ConfigError(f"{path}: sources {unknown} are not feature views ({sorted(views)})")
    owners: dict[str, list[str]] = {}
    for source in spec.sources:
        for feature in views[source].features:
            owners.setdefault(feature, []).append(source)
    for name, derived in spec.features.items():
        if not _NAME.match(name):
            raise ConfigError(f"{path}: feature name {name!r} is not lower_snake_case")
        try:
            tree = ast.parse(derived.expression, mode="eval")
        except SyntaxError as exc:
            raise ConfigError(
                f"{path}: {name}: {derived.expression!r} is not an expression: {exc.msg}"
            ) from exc
        for node in ast.walk(tree):
            if not isinstance(node, _EXPRESSION_NODES):
                raise ConfigError(
                    f"{path}: {name}: {type(node).__name__} is not allowed in {derived.expression!r} "
                    "(use feature names, numbers, + - * / ** %, comparisons, and/or/not)"
                )
            if isinstance(node, ast.Name):
                if node.id not in owners:
                    raise ConfigError(f"{path}: {name}: {node.id!r} is not a feature of {list(spec.sources)}")
                if len(owners[node.id]) > 1:
                    raise ConfigError(
                        f"{path}: {name}: {node.id!r} is a feature of {owners[node.id]}: "
                        "derive from one of them only"
                    )
        sample = pd.DataFrame({feature: [1.0, 0.0, None] for feature in owners})
        try:
            evaluate_derived(sample, {name: (derived.expression, derived.type)})
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{path}: {name}: {derived.expression!r} cannot be computed: {exc}") from exc


def _check_view(
    view: ViewSpec, path: Path, entities: Mapping[str, EntitySpec], catalog: Catalog
) -> TableContract:
    unknown = [name for name in view.entities if name not in entities]
    if unknown:
        raise ConfigError(
            f"{path}: unknown entities {unknown}: declare them in {path.parent.parent}/entities.yaml"
        )
    try:
        contract = catalog.contract(view.source)
    except ConfigError as exc:
        raise ConfigError(f"{path}: source {view.source}: {exc}") from exc
    columns = {column.name: column.type for column in contract.columns}

    def need(column: str, role: str) -> str:
        if column not in columns:
            raise ConfigError(
                f"{path}: {role} {column!r} is not a column of {view.source} ({sorted(columns)})"
            )
        return columns[column]

    if need(view.timestamp, "timestamp") != "timestamp":
        raise ConfigError(
            f"{path}: timestamp {view.timestamp!r} is a {columns[view.timestamp]} in {view.source}: "
            "the event timestamp must be a timestamp (when the row became known)"
        )
    keys = [entities[name].join_key for name in view.entities]
    for name in view.entities:
        entity = entities[name]
        kind = need(entity.join_key, "join key")
        if kind != entity.type and {kind, entity.type} != {"long", "bigint"}:
            raise ConfigError(
                f"{path}: join key {entity.join_key!r} is a {kind} in {view.source}, but entity {name!r} "
                f"is declared a {entity.type}: declare it {kind} (entities.yaml) or cast it in the table"
            )
    for feature in view.features:
        kind = need(feature, "feature")
        if feature in keys or feature == view.timestamp:
            raise ConfigError(f"{path}: {feature!r} is a join key or the timestamp, not a feature")
        if kind not in _FEAST_TYPES:
            raise ConfigError(
                f"{path}: feature {feature!r} is a {kind}, which Feast cannot hold: use one of "
                f"{sorted(set(_FEAST_TYPES))}, or cast it in the table's model"
            )
    if len(set(view.features)) != len(view.features):
        raise ConfigError(f"{path}: a feature is listed twice")
    return contract


# -- Feast objects -----------------------------------------------------------------------------------------
def derived_features(
    name: str, features: Mapping[str, DerivedFeature]
) -> Callable[[pd.DataFrame], pd.DataFrame]:
    """The pandas transformation of an on-demand view (Feast's UDF): each feature is its expression.

    Feast pickles the function into the registry; it holds only the expressions and calls
    :func:`evaluate_derived`, which it pickles by reference to this module.
    """
    expressions = {feature: (d.expression, d.type) for feature, d in features.items()}

    def transform(frame: pd.DataFrame) -> pd.DataFrame:
        return evaluate_derived(frame, expressions)

    transform.__name__ = transform.__qualname__ = name
    return transform


def evaluate_derived(frame: pd.DataFrame, expressions: Mapping[str, tuple[str, str]]) -> pd.DataFrame:
    """Each ``(expression, type)`` evaluated elementwise over ``frame``'s columns as float arrays.

    A missing input is NaN; a result that is not finite (a division by zero) is NaN, never an infinity; a
    boolean feature is False where its comparison had no value. The expressions were checked when the
    declarations were read (:func:`_check_on_demand`) and are compiled once: a request pays microseconds.
    """
    import numpy as np

    arrays = {
        name: pd.to_numeric(frame[name], errors="coerce").to_numpy(dtype="float64", na_value=np.nan)
        for name in sorted({n for expression, _ in expressions.values() for n in _compiled(expression)[1]})
    }
    out = pd.DataFrame(index=frame.index)
    for feature, (expression, kind) in expressions.items():
        with np.errstate(all="ignore"):
            values = np.broadcast_to(eval(_compiled(expression)[0], {"__builtins__": {}}, arrays), len(frame))
        if kind == "boolean":
            out[feature] = values.astype(bool)
        else:
            out[feature] = np.where(np.isfinite(values), values, np.nan).astype("float64")
    return out


@functools.lru_cache(maxsize=1024)
def _compiled(expression: str) -> tuple[CodeType, frozenset[str]]:
    """An expression checked by :func:`_check_on_demand`, compiled with Python's boolean operators made
    elementwise (``and`` → ``&``, ``or`` → ``|``, ``not`` → ``~``, ``a < b < c`` → ``(a < b) & (b < c)``),
    and the names it reads."""
    tree = _Elementwise().visit(ast.parse(expression, mode="eval"))
    names = frozenset(node.id for node in ast.walk(tree) if isinstance(node, ast.Name))
    return compile(ast.fix_missing_locations(tree), f"<{expression}>", "eval"), names


class _Elementwise(ast.NodeTransformer):
    def visit_BoolOp(self, node: ast.BoolOp) -> ast.expr:
        self.generic_visit(node)
        op: ast.operator = ast.BitAnd() if isinstance(node.op, ast.And) else ast.BitOr()
        return functools.reduce(lambda left, right: ast.BinOp(left, op, right), node.values)

    def visit_UnaryOp(self, node: ast.UnaryOp) -> ast.expr:
        self.generic_visit(node)
        return ast.UnaryOp(ast.Invert(), node.operand) if isinstance(node.op, ast.Not) else node

    def visit_Compare(self, node: ast.Compare) -> ast.expr:
        self.generic_visit(node)
        lefts = [node.left, *node.comparators[:-1]]
        pairs: list[ast.expr] = [
            ast.Compare(left, [op], [right])
            for left, op, right in zip(lefts, node.ops, node.comparators, strict=True)
        ]
        return functools.reduce(lambda a, b: ast.BinOp(a, ast.BitAnd(), b), pairs)


def definitions(settings: Settings, repo: FeatureRepo) -> list[Any]:
    """The Feast entities and feature views of ``repo``, their sources on the environment's lake."""
    from feast import Entity, FeatureView, Field, OnDemandFeatureView, ValueType
    from feast import types as feast_types
    from feast.infra.offline_stores.contrib.spark_offline_store.spark_source import SparkSource
    from feast.table_format import DeltaFormat
    from feast.transformation.pandas_transformation import PandasTransformation

    entities = {
        name: Entity(
            name=name,
            join_keys=[spec.join_key],
            value_type=ValueType[_ENTITY_TYPES[spec.type]],
            description=spec.description,
        )
        for name, spec in repo.entities.items()
    }
    objects: list[Any] = list(entities.values())
    stored: dict[str, Any] = {}
    for view in repo.views.values():
        contract = repo.contracts[view.source]
        layer, table = view.source.split(".", 1)
        source = SparkSource(
            name=f"{view.name}_source",
            path=settings.table_path(layer, table),
            table_format=DeltaFormat(),
            timestamp_field=view.timestamp,
            description=contract.description,
            owner=contract.owner,
        )
        keys = [repo.entities[name] for name in view.entities]
        schema = [
            Field(name=key.join_key, dtype=getattr(feast_types, _FEAST_TYPES[key.type])) for key in keys
        ] + [
            Field(name=feature, dtype=getattr(feast_types, _FEAST_TYPES[repo.feature_type(view, feature)]))
            for feature in view.features
        ]
        stored[view.name] = FeatureView(
            name=view.name,
            entities=[entities[name] for name in view.entities],
            ttl=view.ttl_delta,
            schema=schema,
            source=source,
            online=view.online,
            description=view.description,
            owner=contract.owner,
            tags={"lakehouse.source": view.source, "lakehouse.classification": contract.classification}
            | view.tags,
        )
    objects.extend(stored.values())
    for derived in repo.on_demand.values():
        transformation = derived_features(derived.name, derived.features)
        objects.append(
            OnDemandFeatureView(
                name=derived.name,
                sources=[stored[source] for source in derived.sources],
                schema=[
                    # no description: Feast checks these against the fields it infers, which have none
                    Field(name=name, dtype=getattr(feast_types, _FEAST_TYPES[d.type]))
                    for name, d in derived.features.items()
                ],
                feature_transformation=PandasTransformation(
                    udf=transformation,
                    udf_string=json.dumps(
                        {name: d.expression for name, d in derived.features.items()}, sort_keys=True
                    ),
                ),
                mode="pandas",
                description=derived.description,
                tags={"lakehouse.sources": ",".join(derived.sources)} | derived.tags,
            )
        )
    return objects


def registry_path(settings: Settings) -> Path:
    return settings.workspace / "features" / "registry.db"


def staging_path(settings: Settings) -> Path:
    """Where Feast's Spark store writes what it reads for a training set or a materialization (one folder
    per read, removed once it is read)."""
    return settings.workspace / "features" / "staging"


def _store_config(settings: Settings) -> dict[str, Any]:
    return {
        "project": PROJECT,
        "provider": "local",
        "registry": str(registry_path(settings)),
        # Training sets are written here by Spark and read from the files, not collected through the driver.
        "offline_store": {"type": "spark", "staging_location": str(staging_path(settings))},
        "online_store": {
            "type": "redis",
            "connection_string": f"{settings.redis.host}:{settings.redis.port}",
        },
        "entity_key_serialization_version": 3,
    }


def repo_config(settings: Settings) -> RepoConfig:
    """Feast's configuration for one environment: local registry, Spark offline store, Redis online store."""
    from feast.repo_config import RepoConfig

    return RepoConfig(repo_path=features_root(settings), **_store_config(settings))


def feature_store_yaml(settings: Settings) -> str:
    """The environment's ``feature_store.yaml``, for Feast's CLI: ``feast -c <folder> entities list``."""
    return (
        f"# Written by lakehouse for the {settings.env_name} environment from features/ and its env file.\n"
        + yaml.safe_dump(_store_config(settings), sort_keys=False)
    )


def feature_store(settings: Settings) -> FeatureStore:
    """Feast's ``FeatureStore`` for ``settings``; writes its ``feature_store.yaml`` beside the registry."""
    from feast import FeatureStore

    folder = registry_path(settings).parent
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "feature_store.yaml").write_text(feature_store_yaml(settings))
    return FeatureStore(config=repo_config(settings))


@contextlib.contextmanager
def _spark_for_feast(settings: Settings) -> Iterator[SparkSession]:
    """The environment's Spark session, made active for Feast's Spark store, left as Feast found it."""
    from lakehouse.spark import get_spark

    spark = get_spark(settings)
    before = spark.conf.get(_SPARK_REGEX_SETTING, "false") or "false"
    try:
        yield spark
    finally:
        spark.conf.set(_SPARK_REGEX_SETTING, before)


@contextlib.contextmanager
def _staged(settings: Settings) -> Iterator[None]:
    """Remove what Feast's Spark store wrote to :func:`staging_path` meanwhile (it never does)."""
    staging = staging_path(settings)
    present = set(staging.iterdir()) if staging.is_dir() else set()
    try:
        yield
    finally:
        for written in set(staging.iterdir()) - present if staging.is_dir() else ():
            shutil.rmtree(written, ignore_errors=True)


# -- the DAG's tasks ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ApplyReport:
    """What :func:`apply` registered (entities, views) and removed (views no longer declared)."""

    entities: list[str]
    views: list[str]
    removed: list[str]
    on_demand: list[str] = field(default_factory=list)

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")


def apply_report_path(settings: Settings) -> Path:
    return settings.workspace / "features" / "applied.json"


def apply(settings: Settings, repo: FeatureRepo | None = None) -> ApplyReport:
    """``feast apply``: register the declared entities and views; drop views no longer declared."""
    repo = repo or load_feature_repo(settings)
    store = feature_store(settings)
    objects = definitions(settings, repo)
    stale: list[Any] = [view for view in store.list_feature_views() if view.name not in repo.views]
    stale += [view for view in store.list_on_demand_feature_views() if view.name not in repo.on_demand]
    store.apply(objects, objects_to_delete=stale, partial=not stale)  # partial=False deletes them
    report = ApplyReport(
        entities=sorted(repo.entities),
        views=sorted(repo.views),
        removed=sorted(v.name for v in stale),
        on_demand=sorted(repo.on_demand),
    )
    log.info(
        "feature store: %d entities, %d views applied, removed %s",
        len(report.entities),
        len(report.views),
        report.removed,
    )
    return report


@dataclass(frozen=True)
class Materialized:
    """One view's materialization: the interval written to the online store, or why it was skipped."""

    view: str
    start: datetime | None
    end: datetime | None
    skipped: str | None = None


def _table_clock(spark: SparkSession, path: str, column: str) -> datetime | None:
    """The newest value of ``column`` in the Delta table at ``path`` (UTC), or None when it has no rows."""
    from pyspark.sql import functions as F

    (row,) = spark.read.format("delta").load(path).agg(F.max(column).alias("newest")).collect()
    newest: datetime | None = row["newest"]  # naive, in the session's time zone: UTC (lakehouse.spark)
    if newest is None:
        return None
    return newest.replace(tzinfo=UTC) if newest.tzinfo is None else newest.astimezone(UTC)


def materialize(
    settings: Settings, repo: FeatureRepo | None = None, end: datetime | None = None
) -> list[Materialized]:
    """``feast materialize-incremental``, view by view, up to each source's newest row (or ``end``).

    A view is materialized up to its own table's newest event timestamp: simulated or replayed data lies in
    the past, and "now" would leave it all outside the TTL. The first run of a view starts one TTL before
    that; later runs continue where the last one ended, as Feast's incremental materialization does. A view
    whose table does not exist yet (a continuous-mode rollup in a batch run) is skipped with its reason.
    """
    from lakehouse.tables import is_delta_table

    repo = repo or load_feature_repo(settings)
    store = feature_store(settings)
    results: list[Materialized] = []
    with _spark_for_feast(settings) as spark:
        for view in repo.views.values():
            if not view.online:
                continue
            layer, table = view.source.split(".", 1)
            path = settings.table_path(layer, table)
            if not is_delta_table(spark, path):
                results.append(Materialized(view.name, None, None, skipped=f"{view.source} has no table yet"))
                continue
            newest = end or _table_clock(spark, path, view.timestamp)
            if newest is None:
                results.append(Materialized(view.name, None, None, skipped=f"{view.source} has no rows"))
                continue
            # Feast's interval is [start, end): one microsecond past the newest row includes it.
            stop = newest + timedelta(microseconds=1)
            registered = store.get_feature_view(view.name)
            intervals = registered.materialization_intervals
            start = intervals[-1][1] if intervals else stop - view.ttl_delta
            if start >= stop:
                results.append(
                    Materialized(view.name, start, stop, skipped="nothing newer since the last run")
                )
                continue
            with _staged(settings):
                store.materialize(start_date=start, end_date=stop, feature_views=[view.name])
            results.append(Materialized(view.name, start, stop))
            log.info("materialized %s from %s to %s", view.name, start, stop)
    return results


def materialize_report_path(settings: Settings) -> Path:
    return settings.workspace / "features" / "materialized.json"


def write_materialize_report(settings: Settings, done: Sequence[Materialized]) -> pd.DataFrame:
    """Save :func:`materialize`'s result in ``<workspace>/features/materialized.json``, as a frame too."""
    rows = [
        {
            "view": m.view,
            "start": m.start.isoformat() if m.start else None,
            "end": m.end.isoformat() if m.end else None,
            "skipped": m.skipped,
        }
        for m in done
    ]
    path = materialize_report_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rows, indent=2) + "\n")
    return pd.DataFrame(rows, columns=["view", "start", "end", "skipped"])


def registered_views(store: FeatureStore) -> pd.DataFrame:
    """The registry's feature views: name, entities, TTL, features, source and what has been materialized."""
    rows = []
    for view in store.list_feature_views():
        intervals = view.materialization_intervals
        rows.append(
            {
                "view": view.name,
                "entities": ",".join(view.entities),
                "ttl": str(view.ttl),
                "features": ",".join(f.name for f in view.features),
                "source": view.tags.get("lakehouse.source", ""),
                "materialized_to": intervals[-1][1].isoformat() if intervals else None,
            }
        )
    return pd.DataFrame(rows).sort_values("view", ignore_index=True)


def registered_on_demand(store: FeatureStore) -> pd.DataFrame:
    """The registry's on-demand views: name, the views they read, and each feature's expression."""
    rows = [
        {
            "view": view.name,
            "sources": ",".join(sorted(view.source_feature_view_projections)),
            "features": json.loads(getattr(view.feature_transformation, "udf_string", None) or "{}"),
        }
        for view in store.list_on_demand_feature_views()
    ]
    return pd.DataFrame(rows, columns=["view", "sources", "features"]).sort_values("view", ignore_index=True)


def online_sample(
    settings: Settings, done: Sequence[Materialized], repo: FeatureRepo | None = None
) -> pd.DataFrame:
    """Each materialized view's newest entity, read back from the online store (one row per view)."""
    from deltalake import DeltaTable

    repo = repo or load_feature_repo(settings)
    store = feature_store(settings)
    rows = []
    for m in done:
        if m.skipped is not None and m.start is None:
            continue
        view = repo.view(m.view)
        layer, table = view.source.split(".", 1)
        keys = [repo.entities[e].join_key for e in view.entities]
        frame = arrow_lake.frame(DeltaTable(settings.table_path(layer, table)), [*keys, view.timestamp])
        newest = frame.sort_values(view.timestamp).iloc[-1]
        entity = {key: newest[key] for key in keys}
        values = online_features(settings, [entity], view.references(), repo=repo, store=store)
        row: dict[str, Any] = {"view": view.name, **entity}
        row.update({str(k): v for k, v in values.drop(columns=keys).iloc[0].items()})
        rows.append(row)
    return pd.DataFrame(rows)


# -- erasure -----------------------------------------------------------------------------------------------
@dataclass
class OnlineCopies:
    """The online store's copies of a data subject's rows, for :func:`lakehouse.privacy.erase.erase_subject`.

    Materialized rows leave the lake for Redis; erasing the lake alone would leave the subject's features
    served. Every online view whose gold table declares the subject (catalog ``subjects:``) is searched with
    the erasure's own predicate before the lake's rows go, so the entity keys are known (a user's sessions,
    not only the user), and each entity's Redis hash (all its views) is deleted after.
    """

    settings: Settings
    name: str = "online:redis"

    def find(self, spark: SparkSession, predicate: Callable[[TableContract], str | None]) -> list[bytes]:
        import redis

        from lakehouse.tables import is_delta_table

        try:  # before the lake is touched: an erasure is all or nothing to the operator
            redis.Redis(host=self.settings.redis.host, port=self.settings.redis.port).ping()
        except redis.RedisError as exc:
            raise ServiceError(
                f"the online store ({self.settings.redis.url}) does not answer ({exc}): start it "
                "(lakehouse up) before erasing, or its copies of the subject would stay"
            ) from exc
        repo = load_feature_repo(self.settings)
        keys: set[bytes] = set()
        for view in repo.views.values():
            condition = predicate(repo.contracts[view.source]) if view.online else None
            path = self.settings.table_path(*view.source.split(".", 1))
            if condition is None or not is_delta_table(spark, path):
                continue
            entities = [repo.entities[name] for name in view.entities]
            rows = (
                spark.read.format("delta")
                .load(path)
                .where(condition)
                .select(*[e.join_key for e in entities])
                .distinct()
                .collect()
            )
            keys.update(_online_key(entities, [row[e.join_key] for e in entities]) for row in rows)
        return sorted(keys)

    def erase(self, found: list[bytes]) -> int:
        import redis

        from lakehouse.privacy import PrivacyError

        client = redis.Redis(host=self.settings.redis.host, port=self.settings.redis.port)
        batches = [found[i : i + 500] for i in range(0, len(found), 500)]
        deleted = left = 0
        for batch in batches:
            deleted += cast(int, client.delete(*batch))
        for batch in batches:
            left += cast(int, client.exists(*batch))
        if left:
            raise PrivacyError(f"the online store still holds {left} of the subject's entities: run it again")
        log.info("erased %d entities from the online store", deleted)
        return deleted


def _online_key(entities: Sequence[EntitySpec], values: Sequence[Any]) -> bytes:
    """The Redis key Feast's online store gives an entity (its serialized key, then the project)."""
    from feast.infra.key_encoding_utils import serialize_entity_key
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.protos.feast.types.Value_pb2 import Value

    typed = [
        Value(string_val=str(v))
        if e.type == "string"
        else Value(int64_val=int(v))
        if e.type == "long"
        else Value(int32_val=int(v))
        for e, v in zip(entities, values, strict=True)
    ]
    key = EntityKey(join_keys=[e.join_key for e in entities], entity_values=typed)
    return serialize_entity_key(key, entity_key_serialization_version=3) + PROJECT.encode()


# -- reading features ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TrainingSet:
    """A point-in-time-correct training set and what it was built from.

    Attributes:
        frame: the entity rows with one column per feature (``<view>__<feature>``).
        features: the feature references asked for.
        versions: the Delta version of each source table read, ``{"gold.sessions": 12}``.
    """

    frame: pd.DataFrame
    features: list[str]
    versions: dict[str, int]


def _versions(settings: Settings, tables: Sequence[str]) -> dict[str, int]:
    from deltalake import DeltaTable

    found: dict[str, int] = {}
    for table in tables:
        layer, name = table.split(".", 1)
        found[table] = int(DeltaTable(settings.table_path(layer, name)).version())
    return found


def training_set(
    settings: Settings,
    entity_rows: pd.DataFrame | SparkDataFrame,
    features: Sequence[str],
    *,
    timestamp: str = "event_timestamp",
    repo: FeatureRepo | None = None,
    attempts: int = 3,
) -> TrainingSet:
    """Feast's ``get_historical_features``: each entity row gets the feature values known at its timestamp.

    For every row and view, the value is the view's latest row whose event timestamp is at or before the
    row's ``timestamp`` and within the view's TTL of it; none is NULL. No value from after a row's time is
    ever used, which is what keeps labels from leaking into their own features.

    The join runs in Spark and its result is written there, as Parquet under :func:`staging_path` (Feast's
    ``staging_location``), then read from the files: nothing of it is collected through the Spark driver, so
    a training set is bounded by this process's memory, not the driver's (collected, a million label rows
    overflowed its heap). Entity rows already in Spark (a Delta table's rows) are joined where they are.

    The Delta version of each source is read before and after the join; when a writer committed in between,
    the join is run again, so ``versions`` names exactly what was read.

    Args:
        entity_rows: one row per example, in pandas or a Spark DataFrame: the views' join keys and
            ``timestamp`` (UTC), plus anything else (labels) that is carried through.
        features: references ``<view>:<feature>`` (see :meth:`ViewSpec.references`).

    Raises:
        ConfigError: an unknown view or feature.
        DataError: ``entity_rows`` lacks a join key or the timestamp, or the lake kept changing.
    """
    repo = repo or load_feature_repo(settings)
    views, keys, tables = _referenced(repo, features)
    missing = [column for column in (*keys, timestamp) if column not in entity_rows.columns]
    if missing:
        raise DataError(f"the entity rows lack {missing} (needed by {views})")
    store = feature_store(settings)
    with _spark_for_feast(settings) as spark:
        rows = _entity_frame(spark, entity_rows, timestamp)
        for _ in range(attempts):
            before = _versions(settings, tables)
            with _staged(settings):
                # Feast's Spark store takes entity rows as a Spark DataFrame; FeatureStore's hints say pandas.
                frame = store.get_historical_features(
                    entity_df=cast(Any, rows), features=list(features), full_feature_names=True
                ).to_df()
            if _versions(settings, tables) == before:
                frame["event_timestamp"] = pd.to_datetime(frame["event_timestamp"], utc=True)
                frame = frame.rename(columns={"event_timestamp": timestamp})
                return TrainingSet(frame=frame, features=list(features), versions=before)
    raise DataError(f"{tables} changed during each of {attempts} reads: build the training set again")


def _entity_frame(
    spark: SparkSession, entity_rows: pd.DataFrame | SparkDataFrame, timestamp: str
) -> SparkDataFrame:
    """The entity rows as a Spark DataFrame whose UTC ``event_timestamp`` is Feast's row time."""
    from pyspark.sql import functions as F

    if isinstance(entity_rows, pd.DataFrame):
        frame = entity_rows.assign(**{timestamp: pd.to_datetime(entity_rows[timestamp], utc=True)})
        entity_rows = spark.createDataFrame(frame)
    return entity_rows.withColumn(timestamp, F.col(timestamp).cast("timestamp")).withColumnRenamed(
        timestamp, "event_timestamp"
    )


def _referenced(repo: FeatureRepo, features: Sequence[str]) -> tuple[list[str], list[str], list[str]]:
    """The views ``features`` name, their entities' join keys and the tables they read."""
    names: dict[str, None] = {}
    for reference in features:
        name, _, feature = reference.partition(":")
        known = repo.features_of(name)
        if feature not in known:
            raise ConfigError(f"feature view {name!r} has no feature {feature!r} (it has {known})")
        names[name] = None
    if not names:
        raise ConfigError("no features asked for")
    keys = sorted({repo.entities[e].join_key for name in names for e in repo.entities_of(name)})
    tables = sorted({table for name in names for table in repo.tables_of(name)})
    return list(names), keys, tables


def online_features(
    settings: Settings,
    entity_rows: Sequence[Mapping[str, Any]],
    features: Sequence[str],
    *,
    repo: FeatureRepo | None = None,
    store: FeatureStore | None = None,
) -> pd.DataFrame:
    """Feast's ``get_online_features`` from Redis: one row per entity row, NULL where nothing is stored.

    Raises:
        ConfigError: an unknown view or feature.
        DataError: an entity row lacks a join key the features need.
    """
    repo = repo or load_feature_repo(settings)
    _, keys, _ = _referenced(repo, features)
    for index, row in enumerate(entity_rows):
        absent = [key for key in keys if row.get(key) is None]
        if absent:
            raise DataError(f"entity row {index} lacks {absent}")
    store = store or feature_store(settings)
    response = store.get_online_features(features=list(features), entity_rows=[dict(r) for r in entity_rows])
    return response.to_df()
