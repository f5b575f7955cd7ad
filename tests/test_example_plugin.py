"""The third-party plugin package in examples/bipeft_example_plugin: its own
tests (subclasses of the ``bipeft_core.testing`` contracts) run here, with
its ``src`` on the path, so CI's ``python -m pytest`` runs them; its entry
point loads through the entry-point mechanism from an installed-looking
distribution; and pip builds it into a wheel that holds its modules and the
entry point."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import tomllib

from bipeft_core import load_plugins

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "bipeft_example_plugin"
PYPROJECT = tomllib.loads((EXAMPLE / "pyproject.toml").read_text(encoding="utf-8"))
SRC = EXAMPLE / "src"

if str(SRC) not in sys.path:
    sys.path.insert(0, str(SRC))


def _example_tests():
    """The example's test module, imported under a name of its own."""
    path = EXAMPLE / "tests" / "test_example_plugin_contracts.py"
    spec = importlib.util.spec_from_file_location("bipeft_example_plugin_tests", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


_EXAMPLE_TESTS = _example_tests()
# pytest collects the example's Test classes and test functions from this module's namespace
globals().update({k: v for k, v in vars(_EXAMPLE_TESTS).items() if k.startswith(("Test", "test_"))})


def test_every_example_test_runs_here():
    names = {k for k in vars(_EXAMPLE_TESTS) if k.startswith(("Test", "test_"))}
    assert names and names <= set(globals())
    assert {"TestIA3", "TestExcessShare", "TestExcessShareWithBIPEFTRanks"} <= names


def _entry_points() -> dict[str, str]:
    return PYPROJECT["project"]["entry-points"]["bipeft"]


def test_entry_points_name_real_plugin_modules():
    """Each declared entry point (``module`` or ``module:attribute``)
    imports, and the object registers the example's components."""
    assert _entry_points(), "the example declares no entry point in group 'bipeft'"
    for name, target in _entry_points().items():
        module_name, _, attribute = target.partition(":")
        obj = importlib.import_module(module_name)
        if attribute:
            obj = getattr(obj, attribute)
        loaded = load_plugins([obj], entry_points=False)
        assert "ia3" in loaded.peft_modules, name
        assert "excess_share" in loaded.strategies.module_selector, name
        assert "example-ia3" in loaded.spaces, name


def test_installed_distribution_loads_through_its_entry_point(tmp_path, monkeypatch):
    """The distribution metadata pip would write (name, version, the
    ``bipeft`` entry points of pyproject.toml) makes ``load_plugins()``
    find the plugin and say who provides it."""
    project = PYPROJECT["project"]
    dist = tmp_path / f"{project['name'].replace('-', '_')}-{project['version']}.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {project['name']}\nVersion: {project['version']}\n")
    lines = "".join(f"{k} = {v}\n" for k, v in _entry_points().items())
    (dist / "entry_points.txt").write_text(f"[bipeft]\n{lines}")
    monkeypatch.syspath_prepend(str(tmp_path))
    loaded = load_plugins()
    entry = loaded.peft_modules.entry("ia3")
    assert entry.provider == "example"
    assert entry.distribution == f"{project['name']} {project['version']}"
    assert loaded.strategies.module_selector.entry("excess_share").provider == "example"
    assert "ia3" not in load_plugins(disable=["example"]).peft_modules


def _can_build_offline() -> bool:
    """pip builds without fetching anything only with setuptools (>= 70.1,
    or with wheel) in this environment."""
    if importlib.util.find_spec("setuptools") is None:
        return False
    import setuptools

    major, minor = (int(x) for x in setuptools.__version__.split(".")[:2])
    return (major, minor) >= (70, 1) or importlib.util.find_spec("wheel") is not None


@pytest.mark.slow
@pytest.mark.skipif(not _can_build_offline(), reason="building offline needs setuptools >= 70.1 (or wheel) here")
def test_pip_builds_a_wheel_with_the_modules_and_the_entry_point(tmp_path):
    source = tmp_path / "src-tree"  # a copy: the build writes next to its sources
    shutil.copytree(EXAMPLE, source, ignore=shutil.ignore_patterns("__pycache__", "build", "*.egg-info"))
    out = tmp_path / "wheels"
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                           "--no-index", "-q", "-w", str(out), str(source)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    (wheel,) = out.glob("bipeft_example_plugin-0.1.0-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        assert {"bipeft_example_plugin/__init__.py", "bipeft_example_plugin/ia3.py",
                "bipeft_example_plugin/excess_share.py", "bipeft_example_plugin/plugin.py"} <= names
        (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        text = zf.read(entry_points).decode()
    assert "[bipeft]" in text and "example = bipeft_example_plugin.plugin" in text
