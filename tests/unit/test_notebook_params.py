"""Notebook parameters: unknown or ill-typed values stop the run with a message naming them."""

from __future__ import annotations

from typing import Any

import pytest

from lakehouse.errors import ParameterError
from lakehouse.notebook import bind_parameters, expect_products

pytestmark = pytest.mark.unit


def _namespace(**values: Any) -> dict[str, Any]:
    namespace: dict[str, Any] = {
        "__annotations__": {"lakehouse_env": str, "gap_minutes": int, "rate": float, "product": dict | None},
        "lakehouse_env": "",
        "gap_minutes": 30,
        "rate": 1.5,
        "product": None,
        # What IPython and imports leave in a notebook's globals: never parameters.
        "In": [],
        "Out": {},
        "_i1": "",
        "get_ipython": lambda: None,
        "bind_parameters": bind_parameters,
        "pytest": pytest,
    }
    namespace.update(values)
    return namespace


def test_defaults_bind() -> None:
    params = bind_parameters(_namespace())
    assert params.as_dict() == {"lakehouse_env": "", "gap_minutes": 30, "rate": 1.5, "product": None}


def test_injected_values_bind_and_int_widens_to_float() -> None:
    params = bind_parameters(_namespace(gap_minutes=45, rate=2, product={"nb": "out.ipynb"}))
    assert params.gap_minutes == 45
    assert params.rate == 2.0 and isinstance(params.rate, float)
    assert params.product == {"nb": "out.ipynb"}


def test_unknown_parameter_is_named() -> None:
    with pytest.raises(ParameterError, match=r"unknown parameter\(s\) \['gap'\].*gap_minutes"):
        bind_parameters(_namespace(gap=45))


@pytest.mark.parametrize(
    ("name", "value"),
    [("gap_minutes", "abc"), ("gap_minutes", 4.5), ("gap_minutes", True), ("lakehouse_env", 3)],
)
def test_ill_typed_parameter_is_named(name: str, value: Any) -> None:
    with pytest.raises(ParameterError, match=f"parameter '{name}' must be"):
        bind_parameters(_namespace(**{name: value}))


def test_a_cell_without_annotations_is_refused() -> None:
    with pytest.raises(ParameterError, match="name: type = default"):
        bind_parameters({"x": 1})


def test_products_must_agree_with_the_environment() -> None:
    expect_products(None, table="/lake/t")
    expect_products({"nb": "x.ipynb", "table": "/lake/t/"}, table="/lake/t")
    with pytest.raises(ParameterError, match="make the paths agree"):
        expect_products({"table": "/elsewhere"}, table="/lake/t")
