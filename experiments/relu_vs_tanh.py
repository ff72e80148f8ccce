"""relu vs tanh: the learn_to_see CNN trained twice, identical but for the conv nonlinearity, then compared.

Same seed (so the same initial weights and batch order), same picture probes and the same 128 analysis
images; only `activation` differs. Then `emergence compare` measures, per layer, when each run settled
(t50/t90), how similar the two runs' layers are over training and at the end, and how many units saturated
(tanh) or died (relu).

    .venv/bin/python -m experiments.relu_vs_tanh [--out runs] [--set key=value ...] [--overwrite]

Writes runs/learn_to_see-tanh.h5, runs/learn_to_see-relu.h5 (about 3 minutes each on 2 CPU cores; a
complete run file already there with an analysis probe set is reused unless --overwrite) and
runs/relu_vs_tanh/ (report.md, metrics.json, plots, six side-by-side GIFs).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from compare import CompareOptions, compare
from experiments.configs import get_experiment
from recorder.config import apply_overrides
from recorder.run import record
from replay.run_file import RunFileError, open_run

ACTIVATIONS = ("tanh", "relu")


def _reusable(path: Path) -> bool:
    try:
        with open_run(path) as run:
            return run.status == "completed" and run.has_analysis
    except (OSError, RunFileError, FileNotFoundError):
        return False


def run(out: Path, overrides: list[str], overwrite: bool = False, show_progress: bool = True,
        log=print) -> Path:
    """Records both runs (unless reusable) and compares them; returns the report's path."""
    paths = []
    for activation in ACTIVATIONS:
        config = apply_overrides(get_experiment("learn_to_see"), [*overrides, f"activation={activation}"])
        path = out / f"learn_to_see-{activation}.h5"
        if not overwrite and _reusable(path):
            log(f"reusing {path} (complete; --overwrite records it again)")
        else:
            record(config, path, overwrite=True, show_progress=show_progress)
        paths.append(path)
    report = compare(paths, out / "relu_vs_tanh", CompareOptions(), log=lambda s: log(f"  {s}"))
    return report.report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m experiments.relu_vs_tanh", description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="runs", help="folder for both run files and the comparison (default: runs)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="config override applied to both runs (activation is set by the experiment)")
    ap.add_argument("--overwrite", action="store_true", help="record both runs again even if complete files exist")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    if any(s.partition("=")[0].strip() == "activation" for s in args.set):
        print("relu_vs_tanh: error: activation is what this experiment varies; leave it out of --set", file=sys.stderr)
        return 2
    try:
        report = run(Path(args.out), args.set, args.overwrite, not args.no_progress)
    except (ValueError, FileNotFoundError) as e:
        print(f"relu_vs_tanh: error: {e}", file=sys.stderr)
        return 2
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
