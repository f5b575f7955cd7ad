"""The example scripts run as a user runs them (CI runs them on tiny models)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_trainer_search_example_runs_with_no_argument():
    proc = subprocess.run([sys.executable, str(EXAMPLES / "trainer_search.py")], capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    found = re.search(r"final parameter count ([\d,]+) / budget ([\d,]+)", proc.stdout)
    assert found, proc.stdout
    count, budget = (int(x.replace(",", "")) for x in found.groups())
    assert 0 < count <= budget == 3000
    assert "re-trained with a plain Trainer" in proc.stdout
