"""Host cost of recording from a loop of one's own: microseconds per step that `Recorder.write` takes on the
caller's thread, and the CPU the whole process spends per step (the writer thread included).

    .venv/bin/python benchmarks/write_cost.py [--steps 2000] [--trials 3] [--compression none]

The frames and metrics are device arrays computed once by a jitted step of a small conv net (10 probes,
26x26x8 then 11x11x16 float16 maps: a 0.1 MB frame) and handed over again and again, so what is measured is
the recorder's own work, not the model's. Three ways to hand over the same steps:

- per step: `rec.write(step, frame, {"loss", "accuracy", "finite"})`, every step (frames packed 8 per
  transfer by recorder/batching.py);
- per step, metrics only: `rec.write(step, None, metrics)` (a loop recording frames on a sparse schedule);
- blocks of 32: `rec.write_block(Block(...))` with the same steps stacked ([32, ...] device buffers), what
  the built-in loop hands over (recorder/blocks.py).

Trials alternate; medians.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen, nnx

from record_overhead import rotated
from recorder import Block, Capture, Probes, Recorder, tap
from recorder.blocks import layout_of, pack_frame

BLOCK = 32


class Net(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.a = nnx.Conv(1, 8, (3, 3), padding="VALID", rngs=rngs)
        self.b = nnx.Conv(8, 16, (3, 3), padding="VALID", rngs=rngs)
        self.head = nnx.Linear(11 * 11 * 16, 10, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        y = tap(self, "conv1", jnp.tanh(self.a(x)))
        y = tap(self, "conv2", jnp.tanh(self.b(linen.max_pool(y, (2, 2), (2, 2)))))
        return self.head(y.reshape(len(y), -1))


def inputs() -> tuple[Probes, Capture, dict, dict, Block]:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (10, 28, 28, 1), dtype=np.uint8)
    probes = Probes(images, np.arange(10))
    x = jnp.asarray(images, jnp.float32) / 255
    model = Net(nnx.Rngs(0))
    capture = Capture.nnx(model, x)
    frame = jax.jit(lambda m, x: capture(m, x))(model, x)
    metrics = {"loss": jnp.float32(0.5), "accuracy": jnp.float32(0.9), "finite": jnp.bool_(True)}
    layout = layout_of(frame)
    stacked = jax.jit(lambda f: {d: jnp.stack([v] * BLOCK) for d, v in pack_frame(f, layout).items()})(frame)
    rows = jnp.tile(jnp.asarray([[0.9, 1.0, 0.5]], jnp.float32), (BLOCK, 1))
    block = Block(tuple(range(BLOCK)), rows, ("accuracy", "finite", "loss"), tuple(range(BLOCK)), stacked, layout)
    return probes, capture, frame, metrics, block


def run(kind: str, steps: int, folder: Path, compression: str, parts: tuple) -> tuple[float, float, float]:
    """(µs per step on the calling thread, its CPU µs per step, process CPU µs per step) of `steps` steps handed
    over as `kind`. The wall time includes waiting for the writer once its queue is full (this loop makes
    steps faster than the writer writes frames); the thread's CPU time is the recorder's own work there."""
    probes, capture, frame, metrics, block = parts
    path = folder / f"{kind}.h5"
    t_cpu = _cpu()
    with Recorder(path, probes, capture, planned_steps=steps, compression=compression, overwrite=True) as rec:
        t0, c0 = time.perf_counter(), time.thread_time()
        if kind == "blocks of 32":
            for first in range(1, steps + 1, BLOCK):
                n = min(BLOCK, steps + 1 - first)
                steps_of = tuple(range(first, first + n))
                rec.write_block(Block(steps_of, block.metrics, block.metric_names, steps_of,
                                      block.frames if n == BLOCK else {d: b[:n] for d, b in block.frames.items()},
                                      block.frame_layout))
        else:
            for step in range(1, steps + 1):
                rec.write(step, frame if kind == "per step" else None, metrics)
        caller, caller_cpu = time.perf_counter() - t0, time.thread_time() - c0  # leaving the block waits for the writer
    return 1e6 * caller / steps, 1e6 * caller_cpu / steps, 1e6 * (_cpu() - t_cpu) / steps


def _cpu() -> float:
    t = os.times()
    return t.user + t.system


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--compression", default="none")
    args = parser.parse_args()
    parts = inputs()
    kinds = ("per step", "per step, metrics only", "blocks of 32")
    results: dict[str, list[tuple[float, float, float]]] = {k: [] for k in kinds}
    with tempfile.TemporaryDirectory() as tmp:
        for kind in kinds:  # warm-up: compile the batcher's packing, open HDF5
            run(kind, 64, Path(tmp), args.compression, parts)
        for trial in range(args.trials):
            for kind in rotated(kinds, trial):
                results[kind].append(run(kind, args.steps, Path(tmp), args.compression, parts))
    print(f"JAX {jax.__version__}, backend {jax.default_backend()}, {os.cpu_count()} CPUs; {args.steps} steps a "
          f"trial, {args.trials} alternating trials, medians; compression {args.compression}\n")
    print("| handed over | µs per step on the caller's thread | its CPU µs per step | process CPU µs per step (writer included) |")
    print("|---|---|---|---|")
    for kind, values in results.items():
        print(f"| {kind} | " + " | ".join(f"{statistics.median(v[i] for v in values):.0f}" for i in range(3)) + " |")


if __name__ == "__main__":
    main()
