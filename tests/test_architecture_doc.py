"""docs/architecture.md stays true to the code: every module, file and function it names exists."""

from __future__ import annotations

import importlib
import re

import pytest

from tests.conftest import ROOT

DOC = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
ADRS = sorted((ROOT / "docs" / "adr").glob("0*.md"))
PACKAGE = ROOT / "restricted_sender"
# A module by its file's name, wherever its stage folder is: the map names modules by their short names.
MODULES = {
    p.stem: ".".join(p.relative_to(ROOT).with_suffix("").parts)
    for p in PACKAGE.rglob("*.py")
    if p.stem != "__init__" and "__pycache__" not in p.parts
}


def _dotted_names() -> list[str]:
    """Every ``module.name[.attr]`` the map mentions whose first part is a module of the package."""
    found = re.findall(r"([a-z_]+\.[A-Za-z_]+(?:\.[A-Za-z_]+)*)", DOC)
    return sorted({n for n in found if n.split(".")[0] in MODULES and not n.endswith(".py")})


@pytest.mark.parametrize("name", _dotted_names())
def test_every_function_and_class_the_map_names_exists(name: str) -> None:
    module, *attributes = name.split(".")
    target: object = importlib.import_module(MODULES[module])
    for attribute in attributes:
        target = getattr(target, attribute)


@pytest.mark.parametrize("file", sorted(set(re.findall(r"`([\w/]+\.py)`", DOC))))
def test_every_file_the_map_names_exists(file: str) -> None:
    assert (ROOT / file).exists() or any(PACKAGE.rglob(file)), file


def test_every_adr_is_listed_in_the_index() -> None:
    index = (ROOT / "docs" / "adr" / "README.md").read_text(encoding="utf-8")
    assert ADRS
    assert all(f"({adr.name})" in index for adr in ADRS)
