"""The local stack: every service the project starts, through one supervisor.

:class:`ServiceManager` is the supervisor (:mod:`lakehouse.stack.supervisor`) loaded with the recipes of one
environment's managed services, in start order: Kafka, Spark Connect, PostgreSQL, Mosquitto, InfluxDB, Redis,
the FX API, MLflow and the dashboard (one small module each). Continuous mode
(:mod:`lakehouse.stack.continuous`) is started through the same supervisor by ``lakehouse stream start``.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from lakehouse.config import Settings
from lakehouse.stack import (
    dashboard,
    fx_api,
    influxdb,
    kafka,
    mlflow,
    model_serving,
    mosquitto,
    postgres,
    redis,
    spark,
)
from lakehouse.stack.java import java_executable
from lakehouse.stack.supervisor import (
    RUN_ID_VARIABLE,
    Service,
    ServiceStatus,
    StartRecord,
    Supervisor,
    port_open,
    port_owner,
    tree_rss,
)
from lakehouse.stack.topics import ensure_topics, topic_plan
from lakehouse.stack.web import panel_bind_args

log = logging.getLogger(__name__)

__all__ = [
    "RUN_ID_VARIABLE",
    "SERVICE_ORDER",
    "Service",
    "ServiceManager",
    "ServiceStatus",
    "StartRecord",
    "ensure_topics",
    "follow_champion",
    "java_executable",
    "panel_bind_args",
    "port_open",
    "port_owner",
    "topic_plan",
    "tree_rss",
]

# name → (recipe, is it managed in this environment?)
_RECIPES: dict[str, tuple[Callable[[Settings], Service], Callable[[Settings], bool]]] = {
    "kafka": (kafka.recipe, lambda s: s.kafka.managed),
    "spark": (spark.recipe, lambda s: s.spark.managed),
    "postgres": (postgres.recipe, lambda s: s.postgres.managed),
    "mqtt": (mosquitto.recipe, lambda s: s.mqtt.managed),
    "influxdb": (influxdb.recipe, lambda s: s.influxdb.managed),
    "redis": (redis.recipe, lambda s: s.redis.managed),
    "fx_api": (fx_api.recipe, lambda s: s.fx_api.managed),
    "mlflow": (mlflow.recipe, lambda s: True),
    "dashboard": (dashboard.recipe, lambda s: True),
}
SERVICE_ORDER = tuple(_RECIPES)


def _model_recipes(settings: Settings) -> dict[str, Service]:
    """The declared models' serving endpoints (on demand); a broken declaration leaves them out, loudly."""
    from lakehouse.errors import ConfigError

    try:
        return model_serving.recipes(settings)
    except ConfigError as error:
        log.warning("no model serving endpoints: %s", error)
        return {}


class ServiceManager(Supervisor):
    """Start, stop and report the local services of one environment.

    Args:
        settings: the environment.
        fresh: refuse to adopt anything already running (a live pid file of an earlier run, or any process
            on a service's port): the test run uses this so that every service it talks to is one it started.
    """

    def __init__(self, settings: Settings, fresh: bool = False) -> None:
        self.settings = settings
        recipes = {name: make(settings) for name, (make, managed) in _RECIPES.items() if managed(settings)}
        recipes.update(_model_recipes(settings))
        super().__init__(recipes, settings.run_dir, settings.logs, settings.env_name, fresh=fresh)

    def services(self) -> dict[str, Service]:
        """The recipes of this environment's managed services, in start order."""
        return dict(self.recipes)

    def external_dirs(self) -> list[Path]:
        """Service data kept outside the workspace (as root, PostgreSQL's: the folder of this workspace)."""
        return [postgres.home(self.settings).parent] if os.geteuid() == 0 else []

    def remove_data(self) -> list[Path]:
        """Delete the environment's data, its workspace and the service data kept outside it; what went.

        Services must be stopped first (:meth:`stop`): a running server would go on writing into the void.
        """
        removed = []
        for folder in (self.settings.workspace, *self.external_dirs()):
            if folder.exists():
                shutil.rmtree(folder)
                removed.append(folder)
        return removed


def follow_champion(settings: Settings, registered_name: str) -> bool:
    """Restart a model's endpoint if it runs (it loaded the former champion); whether it was restarted."""
    manager = ServiceManager(settings)
    name = model_serving.service_name(registered_name)
    if name not in manager.recipes or manager.status([name])[0].state != "running":
        return False
    manager.stop([name])
    manager.start([name])
    log.info("%s restarted on the new champion", name)
    return True
