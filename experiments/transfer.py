"""transfer: learn_to_see trained on one data set (the source, Fashion-MNIST), then fine-tuned on another (the
target, MNIST) from the source's final weights, twice: with the early layers frozen (conv1..conv3) and with
every layer trainable; and, as the baseline transfer has to beat, trained on the target from scratch for the
same steps. Then it measures which layers moved and how far.

    .venv/bin/python -m experiments.transfer [--out runs] [--source fashion_mnist] [--target mnist]
        [--freeze conv1,conv2,conv3] [--set key=value ...] [--target-set key=value ...] [--overwrite]

Writes runs/transfer-source.h5, runs/transfer-frozen.h5, runs/transfer-all.h5, runs/transfer-scratch.h5
(the source about 3 minutes on 2 CPU cores, each 2-epoch fine-tune about 1 minute; complete files recorded
with the same config are reused unless --overwrite) and runs/transfer/: transfer.md (the table below) and
the comparison of the frozen and all-trainable runs (report.md, six side-by-side GIFs).

Per layer: the **weight change** ‖W_end − W_source‖ / ‖W_source‖ of each fine-tuned run (0 for a frozen
layer, exactly), and the **similarity to the source**: debiased CKA between the layer's features at step 0
(the source's weights) and at the end, on the target's analysis images. The head (a different class count)
is re-initialised and said so. MNIST is downloaded on first use (`emergence` caches it); where it cannot
be, `--target synthetic --target-set synthetic_size=16384` runs the same experiment offline.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Callable

from compare import CompareOptions, compare
from compare.dynamics import run_dynamics
from compare.report import fmt_change
from experiments.configs import get_experiment
from experiments.pair import reusable
from recorder.config import RunConfig, apply_overrides
from recorder.data import load_dataset
from recorder.run import record
from runfile.reader import open_run

FINE_TUNE_EPOCHS = 2
VARIANTS = ("frozen", "all", "scratch")


@dataclasses.dataclass(frozen=True)
class TransferResult:
    report: Path  # transfer.md
    runs: dict[str, Path]  # source, frozen, all, scratch
    table: dict[str, dict[str, dict[str, float | None]]]  # variant -> layer -> {weight_change, cka_to_start}


def configs(out: Path, source: str, target: str, freeze: tuple[str, ...], overrides: list[str],
            target_overrides: list[str]) -> dict[str, RunConfig]:
    """The four runs' configs (the source's final weights are the others' init_from)."""
    base = apply_overrides(get_experiment("learn_to_see"), overrides)
    src = dataclasses.replace(base, experiment="transfer", dataset=source).validate()
    tuned = apply_overrides(dataclasses.replace(src, dataset=target, epochs=FINE_TUNE_EPOCHS), target_overrides)
    start = str(out / "transfer-source.h5")
    return {
        "source": src,
        "frozen": dataclasses.replace(tuned, init_from=start, freeze=freeze).validate(),
        "all": dataclasses.replace(tuned, init_from=start).validate(),
        "scratch": tuned,
    }


def run(out: Path, source: str = "fashion_mnist", target: str = "mnist",
        freeze: tuple[str, ...] = ("conv1", "conv2", "conv3"), overrides: list[str] = (),
        target_overrides: list[str] = (), overwrite: bool = False, show_progress: bool = True,
        log: Callable[[str], None] = print) -> TransferResult:
    """Records the four runs (unless reusable), compares them and writes the report."""
    plan = configs(out, source, target, freeze, list(overrides), list(target_overrides))
    for name in {source, target}:  # a missing data set stops here, before minutes of training
        config = plan["source" if name == source else "scratch"]
        load_dataset(name, config.data_dir, config.synthetic_size)
    paths = {}
    for variant, config in plan.items():
        path = out / f"transfer-{variant}.h5"
        if not overwrite and reusable(path, config):
            log(f"reusing {path} (complete, same config; --overwrite records it again)")
        else:
            record(config, path, overwrite=True, show_progress=show_progress)
        paths[variant] = path
    folder = out / "transfer"
    compare([paths["frozen"], paths["all"]], folder, CompareOptions(), log=lambda s: log(f"  {s}"))
    table, lines = _table(paths, plan)
    report = folder / "transfer.md"
    report.write_text("\n".join(lines) + "\n")
    (folder / "transfer.json").write_text(json.dumps(table, indent=1))
    log(f"  {report}")
    return TransferResult(report, paths, table)


def _table(paths: dict[str, Path], plan: dict[str, RunConfig]) -> tuple[dict, list[str]]:
    table: dict[str, dict[str, dict[str, float | None]]] = {}
    results = {}
    for variant in ("source", *VARIANTS):
        with open_run(paths[variant]) as run:
            layers = run.layers
            _, acc, count = run.test_metrics()
            ev = run.eval_metrics()
            results[variant] = (acc, count, int(ev.step[0]) if len(ev.step) else None,
                                float(ev.accuracy[0]) if len(ev.step) else float("nan"), run.facts()["dataset"],
                                run.initialised_from)
            if variant == "source":
                continue
            dyn = run_dynamics(run)
            table[variant] = {layer: {"weight_change": dyn[layer].weight_change,
                                      "cka_to_start": float(dyn[layer].init_vs_final)} for layer in layers}
    src, tgt = plan["source"], plan["scratch"]
    frozen = ", ".join(plan["frozen"].freeze) or "none"
    lines = [f"# Transfer: {src.model} from {src.dataset} to {tgt.dataset}", "",
             f"Source: `{paths['source'].name}`, trained on {src.dataset}. Fine-tuned on {tgt.dataset} for "
             f"{FINE_TUNE_EPOCHS} epochs from the source's final weights: **frozen** ({frozen} fixed) and **all** "
             "(every layer trainable); **scratch** trains the same network on the target from its own "
             "initialisation for the same steps.", "",
             "| run | data | test accuracy | first eval (step: accuracy) | initialised |", "|---|---|---|---|---|"]
    for variant, (acc, count, step, first, data, init) in results.items():
        lines.append(f"| {variant} | {data} | {acc:.4f} ({count} images) | {step}: {first:.4f} | {init or 'its own init'} |")
    lines += ["", "Per layer: weight change ‖W_end − W_start‖ / ‖W_start‖ (start = the source's weights for frozen "
              "and all, the fresh initialisation for scratch) and debiased CKA(features at the start, at the end) "
              "on the target's analysis images.", "",
              "| layer | change frozen | change all | change scratch | CKA to start frozen | CKA to start all | "
              "CKA to start scratch |", "|---|---|---|---|---|---|---|"]
    for layer in table["all"]:
        row = [table[v][layer] for v in VARIANTS]
        lines.append(f"| {layer} | " + " | ".join(fmt_change(r["weight_change"]) for r in row) + " | "
                     + " | ".join(f"{r['cka_to_start']:.3f}" for r in row) + " |")
    lines += ["", "Side by side (frozen | all) and their full comparison: [report.md](report.md)."]
    return table, lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m experiments.transfer", description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="runs", help="folder for the run files and the report (default: runs)")
    ap.add_argument("--source", default="fashion_mnist", help="data set the source is trained on")
    ap.add_argument("--target", default="mnist", help="data set the fine-tuning runs use")
    ap.add_argument("--freeze", default="conv1,conv2,conv3", help="layers the frozen run keeps fixed")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override for every run")
    ap.add_argument("--target-set", action="append", default=[], metavar="KEY=VALUE",
                    help="config override for the three target runs only")
    ap.add_argument("--overwrite", action="store_true", help="record every run again even if complete files exist")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    try:
        result = run(Path(args.out), args.source, args.target, tuple(n for n in args.freeze.split(",") if n),
                     args.set, args.target_set, args.overwrite, not args.no_progress)
    except (ValueError, FileNotFoundError) as e:
        print(f"transfer: error: {e}", file=sys.stderr)
        return 2
    print(result.report.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
