"""Recording a user's own loop: steps/s of the own-loop examples unrecorded, recorded through the capture inside
their jitted step, and recorded through the convenience path (the recorder's own jitted capture).

    .venv/bin/python benchmarks/own_loop_overhead.py [--trials 5] [--steps 40]

The loops are the examples' own `train_step` functions (experiments/own_loop_nnx.py, own_loop_linen.py) on
Fashion-MNIST at batch 128, every step recorded (frames on the 10 probes), with and without an analysis set of
128 images (Grams at the recorder's schedule for the examples' 300-step runs: every 7th step). Trials
alternate between the loops in one process; the table reports medians, their ratio to unrecorded, and the
median of the ratios of adjacent trials (steadier on a shared machine). Target: in-step capture ≥ 0.97 of
unrecorded on the CPU.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from flax.training import train_state

from experiments import own_loop_linen, own_loop_nnx
from record_overhead import rotated
from recorder import Capture, Probes, Recorder, load_dataset

BATCH = 128
PAUSE_S = 0.3


def probe_sets(data):
    probe_idx = np.array([int(np.flatnonzero(data.test_labels == c)[0]) for c in range(10)])
    analysis_idx = np.arange(128)
    make = lambda idx: Probes(data.test_images[idx], data.test_labels[idx], data.class_names, idx, data.name)  # noqa: E731
    return make(probe_idx), make(analysis_idx)


VARIANTS = ("unrecorded", "in-step", "in-step + analysis", "convenience")


class Loops:
    """The variants of one example's loop, sharing its model and batch stream; each recorded variant has its
    own recorder (and step count)."""

    def __init__(self, kind: str, data, folder: Path, planned: int):
        self.kind, self.data = kind, data
        self.probes, self.analysis = probe_sets(data)
        self.probe_x = jnp.asarray(self.probes.images, jnp.float32) / 255.0
        self.analysis_x = jnp.asarray(self.analysis.images, jnp.float32) / 255.0
        self.rng = np.random.default_rng(0)
        if kind == "nnx":
            self.model = own_loop_nnx.CNN(1, 10, rngs=nnx.Rngs(0))
            self.opt = nnx.Optimizer(self.model, optax.adamw(1e-3), wrt=nnx.Param)
            self.capture = Capture.nnx(self.model, self.probe_x)
        else:
            cnn = own_loop_linen.CNN(10)
            params = cnn.init(jax.random.key(0), self.probe_x[:1])["params"]
            self.state = train_state.TrainState.create(apply_fn=cnn.apply, params=params, tx=optax.sgd(0.05, 0.9))
            self.capture = Capture.linen(cnn, {"params": params}, self.probe_x)
        self.recs = {name: Recorder(folder / f"{kind}-{i}.h5", self.probes, self.capture, planned_steps=planned,
                                    analysis=self.analysis if "analysis" in name else None,
                                    activation="relu" if kind == "nnx" else "tanh")
                     for i, name in enumerate(VARIANTS[1:])}
        self.steps = {name: 0 for name in self.recs}

    def _step(self, capture, analysis_x):
        idx = self.rng.integers(0, len(self.data.train_labels), BATCH)
        x, y = self.data.train_images[idx], self.data.train_labels[idx]
        if self.kind == "nnx":
            metrics, frame = own_loop_nnx.train_step(self.model, self.opt, x, y, jax.random.key(0), self.probe_x,
                                                     analysis_x, capture)
        else:
            self.state, metrics, frame = own_loop_linen.train_step(self.state, x, y, self.probe_x, analysis_x, capture)
        return metrics, frame

    def params(self):
        return self.model if self.kind == "nnx" else {"params": self.state.params}

    def run(self, name: str, n: int) -> None:
        rec = self.recs.get(name)
        for _ in range(n):
            if rec is None:
                metrics, _ = self._step(None, None)
                continue
            self.steps[name] += 1
            s = self.steps[name]
            if name == "convenience":
                metrics, _ = self._step(None, None)
                rec.capture_and_write(s, self.params(), self.probe_x, metrics=metrics)
            else:
                metrics, frame = self._step(self.capture, self.analysis_x if rec.should_analyse(s) else None)
                rec.write(s, frame, metrics)
        jax.block_until_ready(metrics)
        if rec is not None:
            rec.wait()

    def close(self) -> None:
        for rec in self.recs.values():
            rec.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--steps", type=int, default=40)
    args = parser.parse_args()
    data = load_dataset("fashion_mnist")
    warm = 10
    planned = max(300, warm + args.trials * args.steps)  # 300: the examples' run length, which sets the analysis rate
    print(f"JAX {jax.__version__} ({jax.default_backend()}), batch {BATCH}, {args.steps} steps per trial, "
          f"{args.trials} alternating trials, medians; ratio to unrecorded, and the median of paired trial ratios")
    print()
    print("| loop | unrecorded steps/s | capture in the step, every step recorded | the same + 128 analysis images "
          "(every 7th step) | convenience path, every step recorded | convenience cost per recorded step |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for kind in ("nnx", "linen"):
            loops = Loops(kind, data, Path(tmp), planned)
            for name in VARIANTS:
                loops.run(name, warm)  # compile every variant, the analysed step included (K = 7 < warm)
            times: dict[str, list[float]] = {n: [] for n in VARIANTS}
            for trial in range(args.trials):
                for name in rotated(VARIANTS, trial):
                    time.sleep(PAUSE_S)
                    t = time.perf_counter()
                    loops.run(name, args.steps)
                    times[name].append(args.steps / (time.perf_counter() - t))
            loops.close()
            un = statistics.median(times["unrecorded"])
            cells = []
            for name in VARIANTS[1:]:
                rate = statistics.median(times[name])
                paired = statistics.median(r / u for r, u in zip(times[name], times["unrecorded"]))
                cells.append(f"{rate:.2f} steps/s ({rate / un:.3f}; {paired:.3f})")
            cost = 1000 * (1 / statistics.median(times["convenience"]) - 1 / un)
            print(f"| own_loop_{kind} | {un:.2f} | {' | '.join(cells)} | {cost:+.1f} ms |", flush=True)


if __name__ == "__main__":
    main()
