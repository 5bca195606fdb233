"""Feature declarations (features/): read, checked against the catalog, turned into Feast objects and tasks."""

from __future__ import annotations

import shutil
from datetime import timedelta
from pathlib import Path

import pytest

from lakehouse.config import Settings
from lakehouse.declared_dag import declared_tasks
from lakehouse.errors import ConfigError
from lakehouse.ml.features import definitions, feature_store_yaml, features_root, load_feature_repo

pytestmark = pytest.mark.unit


@pytest.fixture
def declarations(settings: Settings, tmp_path: Path) -> Path:
    """A copy of the project's features/ to edit."""
    root = tmp_path / "features"
    shutil.copytree(features_root(settings), root)
    return root


def _view(root: Path, name: str, body: str) -> None:
    (root / "views" / f"{name}.yaml").write_text(body)


def test_the_projects_views_match_their_tables(settings: Settings) -> None:
    repo = load_feature_repo(settings)
    assert {"session_activity", "user_history", "device_minute"} <= set(repo.views)
    assert {"user", "session", "customer", "device"} <= set(repo.entities)
    history = repo.view("user_history")
    assert history.source == "gold.user_history" and history.timestamp == "as_of"
    assert history.ttl_delta == timedelta(days=28)
    assert repo.feature_type(history, "conversion_rate_28d") == "double"
    # the label and what gives it away are not features of a session
    sessions = repo.view("session_activity")
    assert not {"purchases", "checkouts", "revenue", "converted"} & set(sessions.features)


def test_definitions_carry_types_ttls_and_sources_from_the_declarations(settings: Settings) -> None:
    from feast import Entity, FeatureView
    from feast.types import Float64, Int32, Int64, String

    repo = load_feature_repo(settings)
    objects = {o.name: o for o in definitions(settings, repo)}
    assert isinstance(objects["user"], Entity) and objects["user"].join_key == "user_id"
    view = objects["user_history"]
    assert isinstance(view, FeatureView)
    dtypes = {f.name: f.dtype for f in view.features}
    assert dtypes["conversion_rate_28d"] == Float64
    assert dtypes["sessions_28d"] == Int64
    assert dtypes["days_since_first_session"] == Int32
    assert view.ttl == timedelta(days=28)
    assert view.batch_source.path == settings.table_path("gold", "user_history")
    assert view.batch_source.timestamp_field == "as_of"
    assert view.tags["lakehouse.source"] == "gold.user_history"
    assert {f.name: f.dtype for f in objects["session_activity"].features}["channel"] == String
    assert "user_id" in [c.name for c in view.entity_columns]


def test_the_store_config_points_at_the_environments_redis_and_workspace(settings: Settings) -> None:
    text = feature_store_yaml(settings)
    assert f"connection_string: {settings.redis.host}:{settings.redis.port}" in text
    assert str(settings.workspace / "features" / "registry.db") in text
    assert "type: spark" in text


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            "source: gold.sessions\nentities: [shopper]\ntimestamp: session_end\nttl: 1d\nfeatures: [os]\n",
            "unknown entities",
        ),
        (
            "source: gold.nowhere\nentities: [user]\ntimestamp: as_of\nttl: 1d\nfeatures: [os]\n",
            "no contract for gold.nowhere",
        ),
        (
            "source: gold.sessions\nentities: [session]\ntimestamp: session_end\nttl: 1d\nfeatures: [mood]\n",
            "'mood' is not a column of gold.sessions",
        ),
        (
            "source: gold.sessions\nentities: [session]\ntimestamp: session_date\nttl: 1d\nfeatures: [os]\n",
            "must be a timestamp",
        ),
        (
            "source: gold.user_history\nentities: [user]\ntimestamp: as_of\nttl: 1d\nfeatures: [day]\n",
            "'day' is a date, which Feast cannot hold",
        ),
        (
            "source: gold.sessions\nentities: [session]\ntimestamp: session_end\nttl: soon\nfeatures: [os]\n",
            "not a duration",
        ),
        (
            "source: gold.sessions\nentities: [session]\ntimestamp: session_end\nttl: 1d\nfeatures: [session_id]\n",
            "is a join key or the timestamp",
        ),
        ("source: gold.sessions\nentities: [session]\nttl: 1d\nfeatures: [os]\n", "timestamp"),
        ("- just a list\n", "must be a mapping"),
    ],
)
def test_a_wrong_view_is_refused_naming_its_file(
    settings: Settings, declarations: Path, body: str, message: str
) -> None:
    _view(declarations, "broken", body)
    with pytest.raises(ConfigError, match=message) as raised:
        load_feature_repo(settings, root=declarations)
    assert "broken.yaml" in str(raised.value)


def test_a_users_new_view_and_entity_are_declared_by_files_alone(
    settings: Settings, declarations: Path
) -> None:
    (declarations / "entities.yaml").write_text(
        (declarations / "entities.yaml").read_text() + "market:\n  join_key: country\n"
    )
    _view(
        declarations,
        "last_session_by_market",
        "description: The latest session per country.\nsource: gold.sessions\nentities: [market]\n"
        "timestamp: session_end\nttl: 7d\nfeatures: [page_views, channel]\n",
    )
    repo = load_feature_repo(settings, root=declarations)
    view = {o.name: o for o in definitions(settings, repo)}["last_session_by_market"]
    assert [e.name for e in view.entity_columns] == ["country"]
    assert [f.name for f in view.features] == ["page_views", "channel"]
    assert view.ttl == timedelta(days=7)


def test_the_dag_gets_an_apply_and_a_materialize_task_downstream_of_the_views_tables(
    settings: Settings,
) -> None:
    tasks = {t["name"]: t for t in declared_tasks(settings)}
    apply, materialize = tasks["ml-features-apply"], tasks["ml-features-materialize"]
    # declarations are the apply task's code: editing a view reruns it
    assert apply["params"]["resources_"]["view_user_history"] == "features/views/user_history.yaml"
    assert "upstream" not in apply  # it reads no data
    assert materialize["upstream"][0] == "ml-features-apply"
    assert {"gold-sessions", "gold-user-history"} <= set(materialize["upstream"])
    # a view over a continuous-mode rollup (no task writes it) adds no upstream
    assert not any("rt-device" in name for name in materialize["upstream"])
    # so is an on-demand view
    assert (
        apply["params"]["resources_"]["on_demand_session_ratios"] == "features/on_demand/session_ratios.yaml"
    )


def _on_demand(root: Path, name: str, body: str) -> None:
    (root / "on_demand").mkdir(exist_ok=True)
    (root / "on_demand" / f"{name}.yaml").write_text(body)


def test_an_on_demand_view_is_a_feast_transformation_of_its_sources(settings: Settings) -> None:
    import pandas as pd
    from feast import OnDemandFeatureView
    from feast.types import Float64

    repo = load_feature_repo(settings)
    ratios = repo.on_demand["session_ratios"]
    assert ratios.sources == ("session_activity",)
    # it resolves like a view: the session entity, gold.sessions, typed from the declaration
    assert repo.entities_of("session_ratios") == ["session"]
    assert repo.tables_of("session_ratios") == ["gold.sessions"]
    assert repo.type_of("session_ratios", "cart_rate") == "double"
    view = {o.name: o for o in definitions(settings, repo)}["session_ratios"]
    assert isinstance(view, OnDemandFeatureView)
    assert {f.name: f.dtype for f in view.features}["cart_rate"] == Float64
    # what the registry keeps (pickled with dill) computes the same as the declaration
    restored = OnDemandFeatureView.from_proto(view.to_proto())
    inputs = pd.DataFrame(
        {
            "page_views": [4, 0, 5, None],
            "add_to_carts": [1, 2, None, 1],
            "product_views": [2, 0, 1, 1],
            "searches": [0, 0, 0, 0],
        }
    )
    out = restored.feature_transformation.udf(inputs)
    assert out["cart_rate"].iloc[0] == 0.25
    # no page views: no ratio, never an infinity; a missing count: no ratio
    assert out["cart_rate"].iloc[1:].isna().all()
    assert list(out.columns) == ["product_view_share", "search_rate", "cart_rate"]


def test_a_users_on_demand_feature_is_declared_by_a_file(settings: Settings, declarations: Path) -> None:
    import pandas as pd

    _on_demand(
        declarations,
        "engagement",
        "sources: [user_history, session_activity]\nfeatures:\n"
        "  busy:\n    expression: sessions_7d * 4 > sessions_28d and page_views >= 3\n    type: boolean\n"
        "  quiet:\n    expression: not 1 <= page_views < 5 or sessions_7d == 0\n    type: boolean\n"
        "  weekly_share:\n    expression: -(sessions_7d / sessions_28d) ** 2 % 1 + 0.5\n",
    )
    repo = load_feature_repo(settings, root=declarations)
    assert repo.entities_of("engagement") == ["session", "user"]
    assert repo.tables_of("engagement") == ["gold.sessions", "gold.user_history"]
    udf = {o.name: o for o in definitions(settings, repo)}["engagement"].feature_transformation.udf
    frame = pd.DataFrame(
        {"sessions_7d": [3, 1, None, 0], "sessions_28d": [4, 8, 2, 0], "page_views": [3, 9, 9, 4]}
    )
    out = udf(frame)
    # Python's own operators, elementwise; a missing value compares false
    assert out["busy"].tolist() == [True, False, False, False]
    assert out["quiet"].tolist() == [False, True, True, True]
    assert out["weekly_share"].iloc[:2].tolist() == pytest.approx(
        [-(0.75**2) % 1 + 0.5, -(0.125**2) % 1 + 0.5]
    )
    assert out["weekly_share"].iloc[2:].isna().all()  # missing, and 0 / 0


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            "sources: [session_activity]\nfeatures:\n  x:\n    expression: mood / 2\n",
            "'mood' is not a feature",
        ),
        ("sources: [nowhere]\nfeatures:\n  x:\n    expression: page_views\n", "are not feature views"),
        (
            "sources: [session_activity]\nfeatures:\n  x:\n    expression: __import__('os').getcwd()\n",
            "Call is not allowed",
        ),
        ("sources: [session_activity]\nfeatures:\n  x:\n    expression: page_views[0]\n", "Subscript is not"),
        (
            "sources: [session_activity]\nfeatures:\n  x:\n    expression: 'page_views +'\n",
            "is not an expression",
        ),
        (
            "sources: [session_activity]\nfeatures:\n  x:\n    expression: page_views\n    type: date\n",
            "type",
        ),
        ("sources: [session_activity]\nfeatures: {}\n", "features"),
        (
            "sources: [session_activity]\nfeatures:\n  x:\n    expression: page_views and searches\n",
            "cannot be computed",
        ),
        (
            "sources: [session_activity]\nfeatures:\n  x:\n    expression: page_views.real\n",
            "Attribute is not",
        ),
    ],
)
def test_a_wrong_on_demand_view_is_refused_naming_its_file(
    settings: Settings, declarations: Path, body: str, message: str
) -> None:
    _on_demand(declarations, "broken", body)
    with pytest.raises(ConfigError, match=message) as raised:
        load_feature_repo(settings, root=declarations)
    assert "broken.yaml" in str(raised.value)


def test_an_entity_typed_unlike_its_join_key_is_refused(settings: Settings, declarations: Path) -> None:
    (declarations / "entities.yaml").write_text(
        (declarations / "entities.yaml").read_text() + "visitor:\n  join_key: user_id\n  type: long\n"
    )
    _view(
        declarations,
        "visits",
        "source: gold.user_history\nentities: [visitor]\ntimestamp: as_of\nttl: 1d\nfeatures: [sessions_7d]\n",
    )
    with pytest.raises(
        ConfigError, match=r"'user_id' is a string in gold\.user_history, but entity 'visitor'"
    ):
        load_feature_repo(settings, root=declarations)
