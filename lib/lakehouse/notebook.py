"""Notebook parameters: typed defaults in the ``parameters`` cell, checked right after papermill's injection.

A notebook's first code cell (tagged ``parameters``) declares each parameter with a type and a default::

    lakehouse_env: str = ""
    topic: str = "clickstream"
    upstream: dict | None = None
    product: dict | None = None

and its next cell calls ``params = bind_parameters(globals())``. Anything papermill or Ploomber injected that
the cell does not declare, or a value of the wrong type, stops the run with a message naming the parameter.
"""

from __future__ import annotations

import types
from collections.abc import Mapping
from typing import Any

from pydantic import TypeAdapter, ValidationError

from lakehouse.errors import ParameterError

# Names IPython (and Jupyter front ends) put in the user namespace on their own.
_IPYTHON_NAMES = {"In", "Out", "get_ipython", "exit", "quit", "open"}


class Parameters(types.SimpleNamespace):
    """The bound parameters of one notebook run (attribute access, read as plain values)."""

    def as_dict(self) -> dict[str, Any]:
        return dict(vars(self))


def _is_candidate(name: str, value: Any) -> bool:
    if name.startswith("_") or name in _IPYTHON_NAMES:
        return False
    return not isinstance(value, types.ModuleType | types.FunctionType | types.BuiltinFunctionType | type)


def _check(name: str, annotation: Any, value: Any) -> Any:
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    try:
        return TypeAdapter(annotation).validate_python(value, strict=True)
    except ValidationError as exc:
        wanted = getattr(annotation, "__name__", str(annotation))
        raise ParameterError(
            f"parameter {name!r} must be {wanted}, got {type(value).__name__} {value!r} "
            f"({exc.errors()[0]['msg']})"
        ) from exc


def bind_parameters(namespace: Mapping[str, Any]) -> Parameters:
    """Validate the notebook's parameters against the annotations of its ``parameters`` cell.

    Args:
        namespace: the notebook's ``globals()``, right after the parameters (and injected) cells.

    Returns:
        The parameters, type-checked.

    Raises:
        ParameterError: a parameter is unknown (not declared in the parameters cell) or ill-typed.
    """
    declared: dict[str, Any] = dict(namespace.get("__annotations__", {}))
    if not declared:
        raise ParameterError(
            "the parameters cell declares no typed parameters: write them as `name: type = default`"
        )
    unknown = sorted(n for n, v in namespace.items() if _is_candidate(n, v) and n not in declared)
    if unknown:
        raise ParameterError(f"unknown parameter(s) {unknown}: this notebook takes {sorted(declared)}")
    values = {}
    for name, annotation in declared.items():
        if name not in namespace:
            raise ParameterError(f"parameter {name!r} is declared without a default value")
        if isinstance(annotation, str):  # `from __future__ import annotations` in a notebook
            annotation = eval(annotation, {"__builtins__": __builtins__}, {})
        values[name] = _check(name, annotation, namespace[name])
    return Parameters(**values)


def expect_products(product: Mapping[str, str] | None, **paths: str) -> None:
    """Check that the DAG's declared products are where the lib writes (no-op outside Ploomber).

    Raises:
        ParameterError: pipeline.yaml and the environment disagree on a location.
    """
    if not product:
        return
    for key, path in paths.items():
        declared = product.get(key)
        if declared is not None and str(declared).rstrip("/") != str(path).rstrip("/"):
            raise ParameterError(
                f"pipeline.yaml declares product {key!r} at {declared} but the environment writes {path}: "
                "make the paths agree"
            )
