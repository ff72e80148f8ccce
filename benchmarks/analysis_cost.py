"""The analysis statistics' cost per layer: accumulated over blocks of rows (what the CPU backend runs) against
the one-pass form (what other backends run), side by side on the real layers of each model.

    .venv/bin/python benchmarks/analysis_cost.py [--experiments keras_fashion,learn_to_see] [--calls 30]

Each layer's activations on the run's analysis images (128 class-balanced test images, the initial model)
go through `recorder.analysis.gram_and_stats` compiled both ways; calls alternate between the two, and the
table gives medians in ms and their ratio. Both must give the same statistics: the script checks that
before it times anything.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from experiments import get_experiment
from recorder.analysis import gram_and_stats
from recorder.models import build_model
from recorder.plan import make_plan
from recorder.taps import capture_taps, flatten_taps

WAYS = (("by rows", "cpu"), ("one pass", "gpu"))


def layer_activations(experiment: str) -> dict[str, jax.Array]:
    """Every tapped layer's activations on the run's analysis images, from the initial model."""
    plan = make_plan(get_experiment(experiment))
    c, d = plan.config, plan.dataset
    model = build_model(c.model, d.input_shape, len(d.class_names), c.activation, c.seed, c.model_options())
    x = jnp.asarray(d.test_images[plan.analysis_idx], jnp.float32) / 255
    _, taps, _ = capture_taps(model)(x)
    return {name: jnp.asarray(a, jnp.float32) for name, a in flatten_taps(taps).items()}


def timed(fn, a: jax.Array) -> float:
    start = time.perf_counter()
    jax.block_until_ready(fn(a))
    return (time.perf_counter() - start) * 1e3


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--experiments", default="keras_fashion,learn_to_see,vgg_bn")
    p.add_argument("--calls", type=int, default=30)
    args = p.parse_args()
    print(f"JAX {jax.__version__} on {jax.default_backend()}; {args.calls} alternating calls per layer, medians (ms)\n")
    print("| experiment | layer | activations | " + " | ".join(w for w, _ in WAYS) + " | one pass / by rows |")
    print("|---|---|---|" + "---|" * len(WAYS) + "---|")
    for experiment in args.experiments.split(","):
        totals = [0.0] * len(WAYS)
        for name, a in layer_activations(experiment).items():
            fns = [jax.jit(lambda a, b=backend: gram_and_stats(a, backend=b)) for _, backend in WAYS]
            results = [np.asarray(fn(a)[1]) for fn in fns]
            np.testing.assert_allclose(results[0], results[1], rtol=1e-5, atol=1e-7)
            times: list[list[float]] = [[] for _ in WAYS]
            for _ in range(args.calls):
                for i, fn in enumerate(fns):
                    times[i].append(timed(fn, a))
            medians = [statistics.median(t) for t in times]
            totals = [t + m for t, m in zip(totals, medians)]
            cells = " | ".join(f"{m:.2f}" for m in medians)
            print(f"| {experiment} | {name} | {'x'.join(map(str, a.shape))} | {cells} | {medians[1] / medians[0]:.2f} |")
        cells = " | ".join(f"**{t:.2f}**" for t in totals)
        print(f"| {experiment} | all layers | | {cells} | **{totals[1] / totals[0]:.2f}** |")


if __name__ == "__main__":
    main()
