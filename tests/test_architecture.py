"""The layering of ARCHITECTURE.md holds: import-linter's contracts in pyproject.toml are kept.

Contracts: pipelines -> data_prep | eval -> vdiff (vdiff imports nothing else from the repo),
data_prep and eval independent, no import cycle between sibling modules at any depth, and no
pipeline importing another (the demo and the cli dispatcher excepted).
Running them here puts them in the README's test command, so `.ci/run` fails on a break.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_import_contracts_are_kept():
    code = "import sys; from importlinter.cli import lint_imports; sys.exit(lint_imports(no_cache=True))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    report = (out.stdout + out.stderr)[-4000:]
    assert out.returncode == 0, f"import-linter found a broken contract:\n{report}"
    assert "4 kept, 0 broken" in out.stdout
