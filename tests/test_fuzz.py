"""Damaged run files: cut short at 20 offsets and with a byte inverted at 20 places, each either reads or is
refused with one clear message, within a time bound, and the reading process never crashes."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from conftest import write_run

TIMEOUT_S = 60  # a hang, not a speed goal: each case takes about 2 s here


def test_cut_and_flipped_files_read_or_fail_clearly(tmp_path):
    rng = np.random.default_rng(0)
    acts = np.tanh(rng.normal(size=(6, 3, 8, 8, 4))).astype(np.float32)
    base = tmp_path / "base.h5"
    write_run(base, {"conv1": acts, "conv2": acts[..., :2]})
    driver = Path(__file__).with_name("fuzz_reader.py")
    proc = subprocess.run([sys.executable, str(driver), str(base), str(tmp_path), str(TIMEOUT_S)],
                          capture_output=True, text=True, timeout=40 * TIMEOUT_S)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(results) == 40
    for r in results:
        case = f"{r['kind']} at {r['offset']}: {r['output'][-800:]}"
        assert not r["timed_out"] and r["signal"] == 0, case  # no hang, no crash
        assert "Traceback" not in r["output"], case
        if r["code"] != 0:
            errors = [line for line in r["output"].splitlines() if line.startswith("emergence: error: ")]
            assert r["code"] in (1, 2) and len(errors) == 1 and "case.h5" in errors[0], case
    cut = [r for r in results if r["kind"] == "cut"]
    assert all(r["code"] == 2 and "the file is cut short" in r["output"] for r in cut)
    flipped = [r for r in results if r["kind"] == "flip"]
    assert any(r["code"] == 0 for r in flipped) and any(r["code"] != 0 for r in flipped)
