"""Replay speed: our renderer vs a plain matplotlib imshow-per-frame renderer, same layer, same frames.

    .venv/bin/python benchmarks/replay_speed.py [--run runs/learn_to_see.h5] [--trials 3]

Needs a recorded run (default runs/learn_to_see.h5: `emergence record learn_to_see`). Rows:

1. frames/s rendering the conv6 layer (10 probes x 16 channels, 7x7 maps shown at 28x28) from activations
   already in memory, to an image array in memory:
   - ours: palette-index lookup + integer-repeat upscaling into a template (replay.grid.LayerGrid);
   - matplotlib: one figure of 17x10 axes made once, then per frame `set_data` on every AxesImage,
     `canvas.draw()` and a copy of the RGBA buffer (the usual fast way; re-creating figures is slower still).
2. ours end to end for conv6: reading the HDF5 file, rendering, and encoding the GIF.
3. all recorded layers of the run, end to end (what `emergence replay` spends on the layer GIFs), with each
   GIF's size and frame count.
Medians over trials; ratios are ours / matplotlib.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from replay.animate import LayerFrames, write_animation
from replay.gif import frame_duration_ms
from runfile.reader import open_run


def ours_fps(frames: LayerFrames, values: np.ndarray) -> float:
    t = time.perf_counter()
    index = frames.grid.indices(values)
    for k in range(len(values)):
        frames.grid.render(index[k], f"STEP {k}")
    return len(values) / (time.perf_counter() - t)


def matplotlib_fps(values: np.ndarray, probes: np.ndarray, frames_to_draw: int) -> float:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t_, p, h, w, c = values.shape
    fig, axes = plt.subplots(c + 1, p, figsize=(p * 0.6, (c + 1) * 0.6), dpi=50)  # about the size of ours
    for ax in axes.flat:
        ax.set_axis_off()
    for k in range(p):
        axes[0, k].imshow(probes[k, ..., 0], cmap="gray", vmin=0, vmax=255)
    images = [[axes[ch + 1, k].imshow(values[0, k, :, :, ch], cmap="seismic_r", vmin=-1, vmax=1,
                                      interpolation="nearest") for k in range(p)] for ch in range(c)]
    title = fig.suptitle("")
    fig.canvas.draw()
    t = time.perf_counter()
    for i in range(frames_to_draw):
        for ch in range(c):
            for k in range(p):
                images[ch][k].set_data(values[i, k, :, :, ch])
        title.set_text(f"step {i}")
        fig.canvas.draw()
        np.asarray(fig.canvas.buffer_rgba()).copy()
    fps = frames_to_draw / (time.perf_counter() - t)
    plt.close(fig)
    return fps


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", default="runs/learn_to_see.h5")
    ap.add_argument("--layer", default="conv6")
    ap.add_argument("--trials", type=int, default=3)
    ap.add_argument("--mpl-frames", type=int, default=30, help="frames per matplotlib trial (it is slow)")
    args = ap.parse_args()
    if not Path(args.run).is_file():
        print(f"no run file at {args.run}; record one first: emergence record learn_to_see", file=sys.stderr)
        return 2
    with open_run(args.run) as run, tempfile.TemporaryDirectory() as tmp:
        frames = LayerFrames(run, args.layer)
        positions = np.arange(run.num_frames)
        values = frames.values(positions)  # [T, P, H, W, C] float32
        probes = run.probes()[0]
        ours = [ours_fps(frames, values) for _ in range(args.trials)]
        mpl = [matplotlib_fps(values, probes, min(args.mpl_frames, len(values))) for _ in range(args.trials)]
        e2e = []
        for _ in range(args.trials):
            t = time.perf_counter()
            f = LayerFrames(run, args.layer)
            a = write_animation(f, positions, Path(tmp) / "x.gif", frame_duration_ms(20))
            e2e.append(a.frames / (time.perf_counter() - t))
        all_layers = []
        for _ in range(args.trials):
            t = time.perf_counter()
            results = [write_animation(LayerFrames(run, n), positions, Path(tmp) / f"{n}.gif", frame_duration_ms(20))
                       for n in run.layers]
            all_layers.append(time.perf_counter() - t)
        p, h, w, c = run.layer_shape(args.layer)
        print(f"run {args.run}: {run.num_frames} frames; layer {args.layer}: {p} probes x {c} channels of {h}x{w}, "
              f"frame {frames.grid.shape[1]}x{frames.grid.shape[0]} px; medians of {args.trials} trials\n")
        print("| renderer | frames/s | ratio ours/matplotlib |")
        print("|---|---|---|")
        m = statistics.median(mpl)
        print(f"| matplotlib imshow per frame (set_data + draw) | {m:.1f} | 1 |")
        print(f"| ours, render only | {statistics.median(ours):.0f} | {statistics.median(ours) / m:.0f} |")
        print(f"| ours, read + render + GIF encode | {statistics.median(e2e):.0f} | {statistics.median(e2e) / m:.0f} |")
        print()
        print(f"All {len(run.layers)} layer GIFs of the run, end to end: {statistics.median(all_layers):.2f} s "
              f"(median; trials {', '.join(f'{x:.2f}' for x in all_layers)})\n")
        print("| layer | frames | GIF size |")
        print("|---|---|---|")
        for n, r in zip(run.layers, results):
            print(f"| {n} | {r.frames} | {r.bytes / 1e6:.2f} MB |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
