"""The distribution ships every package and data file, under namespaced
import names, each in a folder of its own name (plugins/bipeft_plugins,
spaces/bipeft_spaces)."""

from __future__ import annotations

from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def discovered_packages() -> set[str]:
    mapping = PYPROJECT["tool"]["setuptools"]["package-dir"]
    out = set()
    for import_name, folder in mapping.items():
        base = ROOT / folder
        for init in base.rglob("__init__.py"):
            rel = init.parent.relative_to(base)
            out.add(".".join([import_name, *rel.parts]) if rel.parts else import_name)
    return out


def test_every_package_folder_is_listed_under_its_namespaced_name():
    listed = set(PYPROJECT["tool"]["setuptools"]["packages"])
    assert listed == discovered_packages()
    assert not {"plugins", "spaces"} & {name.split(".")[0] for name in listed}


def test_every_package_folder_is_named_as_its_import_name():
    for import_name, folder in PYPROJECT["tool"]["setuptools"]["package-dir"].items():
        assert Path(folder).name == import_name, (import_name, folder)


def test_data_files_are_declared():
    data = PYPROJECT["tool"]["setuptools"]["package-data"]
    assert "*.toml" in data["bipeft_spaces"] and list((ROOT / "spaces" / "bipeft_spaces").glob("*.toml"))
    assert "*.py" in data["bipeft_plugins.metrics"]


def test_console_script_and_entry_point_group():
    assert PYPROJECT["project"]["scripts"]["bipeft"] == "bipeft_core.cli:main"
    assert "bipeft" in PYPROJECT["project"]["entry-points"]


def test_shipped_spaces_are_found_through_the_installed_package():
    from bipeft_spaces import space_files

    assert {p.stem for p in space_files()} >= {"s1", "s2"}
