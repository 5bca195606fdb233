"""What every ``lakehouse`` command group shares: error handling, the environment's settings, logging.

A group module (``lakehouse stream``, ``lakehouse api``, …) builds its group with ``cls=LakehouseGroup`` and
takes the settings with ``@pass_settings``; it never imports :mod:`lakehouse.cli`, so each group also works on
its own. The environment comes from the root command's ``--env`` (kept in the click context, never written to
``os.environ``), else ``$LAKEHOUSE_ENV``, else ``local``.

Example:
    >>> @click.group(cls=LakehouseGroup)
    ... def things() -> None:
    ...     '''Things.'''
    >>> @things.command()
    ... @pass_settings
    ... def show(settings: Settings) -> None:
    ...     click.echo(settings.env_name)
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any, TypeVar

import click

from lakehouse.config import Settings, load_settings
from lakehouse.errors import LakehouseError

F = TypeVar("F", bound=Callable[..., Any])

CONTEXT_SETTINGS: dict[str, Any] = {"help_option_names": ["-h", "--help"]}
_NOISY = ("kafka", "py4j", "urllib3")


class LakehouseGroup(click.Group):
    """A click group whose commands turn the package's own errors into a one-line message and exit 1."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("context_settings", CONTEXT_SETTINGS)
        super().__init__(*args, **kwargs)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except LakehouseError as exc:
            raise click.ClickException(str(exc)) from exc


def settings_of(ctx: click.Context) -> Settings:
    """The settings of the environment the root command chose (loaded once per invocation).

    Raises:
        click.ClickException: the environment file is missing or invalid.
    """
    root = ctx.find_root()
    obj = root.ensure_object(dict)
    settings: Settings | None = obj.get("settings")
    if settings is None:
        try:
            settings = load_settings(obj.get("env"))
        except LakehouseError as exc:
            raise click.ClickException(str(exc)) from exc
        obj["settings"] = settings
    return settings


def pass_settings(func: F) -> F:
    """Call the command with the environment's :class:`~lakehouse.config.Settings` as first argument."""

    @click.pass_context
    @functools.wraps(func)
    def wrapper(ctx: click.Context, *args: Any, **kwargs: Any) -> Any:
        return ctx.invoke(func, settings_of(ctx), *args, **kwargs)

    return wrapper  # type: ignore[return-value]


def setup_logging(verbose: bool) -> None:
    """INFO when ``verbose``, else WARNING; the Kafka, py4j and urllib3 clients only on errors."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING, format="%(asctime)s %(name)s %(message)s"
    )
    for noisy in _NOISY:
        logging.getLogger(noisy).setLevel(logging.ERROR)
