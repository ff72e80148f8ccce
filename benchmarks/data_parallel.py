"""Data parallelism: training steps/s of the built-in loop on 1, 2 and 4 devices, recorded and unrecorded.

    .venv/bin/python benchmarks/data_parallel.py [--trials 3] [--devices 1,2,4]

One process asks JAX for as many host (CPU) devices as the largest count, then builds one plan per device
count (`devices=N`: a 1-D mesh over the first N devices, recorder/parallel.py) for learn_to_see (batch 1024)
and keras_fashion (batch 64), and alternates trials between all of them. On a GPU machine the devices are
its GPUs. Recorded loops write a real run file (a temp folder) on the experiment's own schedule.

A 2-core machine cannot run 4 devices faster than 1: host devices share the same cores. The point there is
what the mesh costs (partitioning, the all-reduce, the replicated probe frames) and that it is correct
(tests/test_parallel.py); on several GPUs the same script measures the speed-up.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import tempfile
import time
from pathlib import Path

import jax

CASES = (("learn_to_see", 6), ("keras_fashion", 40))  # (experiment, steps per trial)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--devices", default="1,2,4")
    args = parser.parse_args()
    counts = [int(n) for n in args.devices.split(",")]
    jax.config.update("jax_num_cpu_devices", max(counts))  # before JAX starts; only the CPU backend reads it
    from experiments import get_experiment
    from record_overhead import advance, rotated
    from recorder.loop import TrainingLoop
    from recorder.plan import make_plan

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for experiment, steps in CASES:
            loops = {}
            for n in counts:
                plan = make_plan(dataclasses.replace(get_experiment(experiment), devices=n))
                rec = plan.recorder(Path(tmp) / f"{experiment}-{n}.h5", overwrite=True)
                loops[(n, "unrecorded")] = TrainingLoop(plan, None, evaluate=False)
                loops[(n, "recorded")] = TrainingLoop(plan, rec, evaluate=False)
            for loop in loops.values():  # compile every step kind
                loop.start()
                advance(loop, max(steps, 8))
            times: dict = {k: [] for k in loops}
            for trial in range(args.trials):
                for key in rotated(list(loops), trial):
                    t = time.perf_counter()
                    advance(loops[key], steps)
                    times[key].append(steps / (time.perf_counter() - t))
            for loop in loops.values():
                if loop.rec is not None:
                    loop.rec.close()
            base = statistics.median(times[(counts[0], "unrecorded")])
            for n in counts:
                un, rec = (statistics.median(times[(n, k)]) for k in ("unrecorded", "recorded"))
                rows.append((experiment, loops[(n, "unrecorded")].plan.config.batch_size, n, un, rec, un / base, rec / un))
    print(f"backend: {jax.default_backend()}, {jax.device_count()} devices ({jax.devices()[0].device_kind}); "
          f"medians of {args.trials} alternating trials")
    print("| experiment | batch | devices | unrecorded steps/s | recorded steps/s | unrecorded vs 1 device | recorded / unrecorded |")
    print("|---|---|---|---|---|---|---|")
    for e, b, n, un, rec, speed, ratio in rows:
        print(f"| {e} | {b} | {n} | {un:.2f} | {rec:.2f} | {speed:.3f} | {ratio:.3f} |")


if __name__ == "__main__":
    main()
