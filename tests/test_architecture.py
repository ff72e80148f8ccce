"""The packages' import contracts (pyproject.toml [tool.importlinter], docs/ARCHITECTURE.md) hold."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_import_contracts_are_kept():
    lint = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run([str(lint), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout


def test_the_run_file_package_imports_no_jax():
    code = ("import sys, runfile.reader, runfile.writer, runfile.async_writer, runfile.repair, runfile.verify, "
            "runfile.identity; sys.exit(3 if 'jax' in sys.modules else 0)")
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT, timeout=120).returncode == 0
