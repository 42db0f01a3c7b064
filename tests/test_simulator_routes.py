"""The simulator's route table: it dispatches every route fault injection knows, and the README lists it as it is."""

from __future__ import annotations

from simulator.faults import CONTROL_ROUTE, ROUTES
from simulator.routes import README, ROUTE_TABLE, UNKNOWN_ROUTE, committed_table, readme_table


def test_the_readme_route_table_is_the_generated_one() -> None:
    # Regenerate with `make generate` after changing simulator/routes.py.
    assert committed_table(README.read_text(encoding="utf-8")) == readme_table()


def test_every_route_fault_injection_names_is_in_the_table_and_nothing_else() -> None:
    served = {route.name for route in ROUTE_TABLE if route.name != UNKNOWN_ROUTE}
    named = {name for name in ROUTES if not name.startswith("exchange.")} | {"exchange.InvokeCommand"}
    assert served == named
    assert CONTROL_ROUTE in served


def test_every_served_route_has_a_readme_line_and_fallbacks_have_none() -> None:
    assert all(bool(route.doc) == (route.name != UNKNOWN_ROUTE) for route in ROUTE_TABLE)
    assert ROUTE_TABLE[-1].template == "/**"
