"""Freed host memory kept for reuse (recorder/host_memory.py) against glibc's defaults, on the CPU backend.

    .venv/bin/python benchmarks/host_memory.py [--trials 3] [--experiments learn_to_see:30,keras_fashion:300]

Each trial starts two fresh processes, one with `keep_freed_memory()` and one with EMERGENCE_KEEP_FREED_MEMORY=0
(malloc's parameters are set once per process, before JAX starts, as `emergence record` sets them, with the
compilation cache on), in alternating order. Each process builds
the experiment's plan, runs a few warm-up steps, then times the bare jitted step (one dispatch per step) and
the built-in loop recording every step (`TrainingLoop` with a `Recorder`, the experiment's compression) over
the same number of steps. The table gives medians: steps/s, kernel (system) CPU seconds and minor page faults
per step over the timed steps, and the process's peak resident memory.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from record_overhead import rotated

CASES = (("learn_to_see", 30), ("keras_fashion", 300))
ENV = "EMERGENCE_KEEP_FREED_MEMORY"
MODES = ("kept", "glibc defaults")


def child(experiment: str, steps: int) -> dict:
    """Runs in the measured process: the bare step's and the recorded loop's figures over `steps` steps each."""
    from emergence.cli import training_process
    from recorder.host_memory import keep_freed_memory

    training_process()  # as `emergence record` starts: malloc's parameters (unless ENV=0), the compilation cache
    kept = keep_freed_memory()
    import jax

    from experiments import get_experiment
    from record_overhead import BareLoop, advance, require_steps
    from recorder.loop import TrainingLoop
    from recorder.plan import make_plan

    config = dataclasses.replace(get_experiment(experiment), schedule="every", eval_every=0, analysis_probes=0,
                                 steps=max(get_experiment(experiment).steps or 0, 3 * steps))
    plan = make_plan(config)
    require_steps(plan, 3 * steps)
    out = {"kept": kept}
    with tempfile.TemporaryDirectory() as folder:
        rec = plan.recorder(Path(folder) / "run.h5", overwrite=True)
        loops = {"bare": BareLoop(plan), "recorded": TrainingLoop(plan, rec, evaluate=False)}
        for name, loop in loops.items():
            loop.start()
            advance(loop, max(2, steps // 10))  # compiled and warm
        for name, loop in loops.items():
            before, t = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
            advance(loop, steps)
            seconds, after = time.perf_counter() - t, resource.getrusage(resource.RUSAGE_SELF)
            out[name] = {"rate": steps / seconds, "sys": (after.ru_stime - before.ru_stime) / steps,
                         "user": (after.ru_utime - before.ru_utime) / steps,
                         "faults": (after.ru_minflt - before.ru_minflt) / steps}
        rec.close()
        jax.block_until_ready(loops["bare"].state)
    out["maxrss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def run_child(experiment: str, steps: int, mode: str) -> dict:
    env = {**os.environ, ENV: "1" if mode == "kept" else "0"}
    proc = subprocess.run([sys.executable, __file__, "--child", f"{experiment}:{steps}"], env=env,
                          capture_output=True, text=True, cwd=Path(__file__).resolve().parent.parent)
    if proc.returncode != 0:
        raise SystemExit(f"{experiment} ({mode}) failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--experiments", default=",".join(f"{e}:{s}" for e, s in CASES))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        name, _, steps = args.child.partition(":")
        print(json.dumps(child(name, int(steps))))
        return
    print(f"{args.trials} trials, each a fresh process per setting in alternating order; medians")
    print()
    print("| model | loop | steps/s kept / glibc defaults | ratio | kernel CPU ms per step, kept / defaults | "
          "page faults per step, kept / defaults | peak resident MB, kept / defaults |")
    print("|---|---|---|---|---|---|---|")
    for experiment, _, steps in (item.partition(":") for item in args.experiments.split(",")):
        results: dict[str, list[dict]] = {mode: [] for mode in MODES}
        for trial in range(args.trials):
            for mode in rotated(MODES, trial):
                results[mode].append(run_child(experiment, int(steps), mode))
        if not all(r["kept"] for r in results["kept"]):
            print(f"| {experiment} | | malloc's parameters could not be set here (not glibc) | | | | |")
            continue
        for loop in ("bare", "recorded"):
            med = {mode: {k: statistics.median(r[loop][k] for r in results[mode]) for k in ("rate", "sys", "faults")}
                   for mode in MODES}
            k, d = med["kept"], med["glibc defaults"]
            rss = [statistics.median(r["maxrss_mb"] for r in results[mode]) for mode in MODES]
            print(f"| {experiment} | {loop} | {k['rate']:.2f} / {d['rate']:.2f} | {k['rate'] / d['rate']:.3f} | "
                  f"{1000 * k['sys']:.1f} / {1000 * d['sys']:.1f} | {k['faults']:,.0f} / {d['faults']:,.0f} | "
                  f"{rss[0]:,.0f} / {rss[1]:,.0f} |", flush=True)


if __name__ == "__main__":
    main()
