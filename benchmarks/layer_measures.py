"""What the per-layer measures cost the training step: steps/s with and without them, side by side.

    .venv/bin/python benchmarks/layer_measures.py [--trials 5] [--experiments learn_to_see:8,keras_fashion:60]

The training step of `emergence record` returns, every step, each tapped layer's weight change from
initialisation, update ratio and gradient norm (recorder/train.py `layer_measures`). Both loops below are
`recorder.loop.TrainingLoop` without a recorder (the jitted training step alone) over the same data, model and
initial weights; one compiled with the measures, one without. Trials alternate; medians and their ratio.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import jax
import numpy as np

from experiments import get_experiment
from recorder.models import build_model
from recorder.loop import TrainingLoop
from recorder.plan import make_plan
from recorder.train import make_optimizer, make_step_functions

CASES = "learn_to_see:8,keras_fashion:60"


def bench(experiment: str, steps: int, trials: int) -> dict:
    config = dataclasses.replace(get_experiment(experiment), analysis_probes=0)
    plan = make_plan(config)
    d = plan.dataset
    model = build_model(config.model, d.input_shape, len(d.class_names), config.activation, config.seed,
                        config.model_options())
    plain = dataclasses.replace(plan, fns=make_step_functions(
        model, make_optimizer(config.optimizer, config.learning_rate, config.momentum), plan.capture))
    loops = {"with measures": TrainingLoop(plan, None, evaluate=False),
             "without": TrainingLoop(plain, None, evaluate=False)}
    for loop in loops.values():
        loop.run(steps)
        jax.block_until_ready(loop.state)
    times: dict[str, list[float]] = {name: [] for name in loops}
    for trial in range(trials):
        for name in (list(loops) if trial % 2 == 0 else list(loops)[::-1]):
            loop = loops[name]
            t = time.perf_counter()
            loop.run(loop.step + steps)
            jax.block_until_ready(loop.state)
            times[name].append(steps / (time.perf_counter() - t))
    with_, without = (statistics.median(times[k]) for k in loops)
    paired = statistics.median(a / b for a, b in zip(times["with measures"], times["without"]))
    return {"experiment": experiment, "layers": len(plan.capture.layers), "with": with_, "without": without,
            "ratio": with_ / without, "paired": paired,
            "range": (float(np.min(times["with measures"]) / np.max(times["without"])),
                      float(np.max(times["with measures"]) / np.min(times["without"])))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--experiments", default=CASES, help="EXPERIMENT:STEPS_PER_TRIAL,... (default: %(default)s)")
    args = parser.parse_args()
    print(f"JAX {jax.__version__}, backend {jax.default_backend()}, {args.trials} alternating trials, medians")
    print()
    print("| experiment | measured layers | steps/s with measures | without | ratio | median of paired ratios | range |")
    print("|---|---|---|---|---|---|---|")
    for name, _, steps in (item.partition(":") for item in args.experiments.split(",")):
        r = bench(name, int(steps), args.trials)
        print(f"| {r['experiment']} | {r['layers']} | {r['with']:.2f} | {r['without']:.2f} | {r['ratio']:.3f} | "
              f"{r['paired']:.3f} | {r['range'][0]:.2f}–{r['range'][1]:.2f} |", flush=True)


if __name__ == "__main__":
    main()
