"""The README's install line is the one CI and tox install, and a core
install (no extras) can write every file of a run folder."""

from __future__ import annotations

import configparser
import re
import subprocess
import sys
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from bipeft_core import tomlio

ROOT = Path(__file__).resolve().parents[1]


def readme_extras() -> list[str]:
    lines = re.findall(r'^pip install -e "\.\[([a-z,]+)\]"', (ROOT / "README.md").read_text(), re.M)
    assert len(lines) == 1, "the README has exactly one `pip install -e \".[...]\"` line"
    return lines[0].split(",")


def test_readme_tox_and_ci_install_the_same_extras():
    pyproject = tomlio.loads((ROOT / "pyproject.toml").read_text())
    extras = readme_extras()
    assert set(extras) <= set(pyproject["project"]["optional-dependencies"])
    tox = configparser.ConfigParser()
    tox.read(ROOT / "tox.ini")
    assert [e.strip() for e in tox["testenv"]["extras"].split(",")] == extras
    ci = (ROOT / ".ci" / "run").read_text()
    assert "README.md" in ci and '-e ".[$EXTRAS]"' in ci  # .ci/run reads the line, it does not copy it


def test_the_python_the_metadata_claims_is_the_one_tested():
    pyproject = tomlio.loads((ROOT / "pyproject.toml").read_text())
    assert pyproject["project"]["requires-python"] == ">=3.11"
    assert "Python ≥ 3.11" in (ROOT / "README.md").read_text()
    assert "py311" in (ROOT / "tox.ini").read_text() and "python3.11" in (ROOT / ".ci" / "run").read_text()


def test_the_core_writes_a_spec_without_extra_packages(tmp_path):
    code = ("import sys; sys.modules['tomli_w'] = None\n"
            "from bipeft_core.pipeline import Pipeline\n"
            "p = Pipeline.from_dict({'budget': '0.1%', 'model': {'task': 'glue/rte'}, "
            "'search': {'trigger': {'name': 'budget_stability', 'window': 3}, 'epochs': 2}})\n"
            f"open({str(tmp_path / 's.toml')!r}, 'w').write(p.to_toml())\n"
            f"assert Pipeline.from_toml({str(tmp_path / 's.toml')!r}) == p\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


_keys = st.text(min_size=1, max_size=8)
_scalars = (st.booleans() | st.integers(-2**63, 2**63 - 1) | st.text(max_size=12)
            | st.floats(allow_nan=False))
_values = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=3)
                       | st.dictionaries(_keys, inner, max_size=3), max_leaves=8)


@given(st.dictionaries(_keys, st.dictionaries(_keys, _values, max_size=4) | _scalars, max_size=4))
def test_toml_writer_round_trips(data):
    assert tomlio.loads(tomlio.dumps(data)) == data


def test_toml_writer_writes_tables_and_inline_tables():
    text = tomlio.dumps({"budget": {"value": "0.1%"}, "search": {"trigger": {"name": "x", "w": 1.5}, "lr": 1e-3}})
    assert text == ('[budget]\nvalue = "0.1%"\n\n[search]\ntrigger = { name = "x", w = 1.5 }\nlr = 0.001\n')


def test_toml_writer_quotes_a_key_that_ends_in_a_newline():
    # a bare-key check with "$" accepts "0\n" (the pattern matches before a final newline), which
    # wrote an unreadable file; hypothesis found it
    assert tomlio.loads(tomlio.dumps({"0\n": {"a\n": 1}, "b": False})) == {"0\n": {"a\n": 1}, "b": False}
