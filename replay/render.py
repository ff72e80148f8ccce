"""`emergence replay`: every picture of one run file into one folder, with an index.html.

    from replay.render import ReplayOptions, replay
    report = replay("runs/learn_to_see.h5", "runs/learn_to_see", ReplayOptions(every=2))

Outputs (names relative to the output folder):

    <layer>.gif                   one per recorded layer (activations on the probes, every selected step)
    curves.png                    train / eval / test loss and accuracy
    <layer>_kernels.png / .gif    the recorded kernels at the last selected step / over the selected steps
    snapshots/step<N>_<layer>.png                 with --step N: the layer's grid at step N
    snapshots/step<N>_<layer>_probe<k>.png        ... and its response to each selected probe, enlarged
    index.html                    all of the above with captions
"""

from __future__ import annotations

import dataclasses
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Sequence, TypeVar

import numpy as np

from replay.animate import Animation, Frames, KernelFrames, LayerFrames, layer_scale, write_animation
from replay.curves import write_curves
from replay.distributions import channel_distributions, layer_distribution, write_distributions
from replay.geometry import layer_geometry, write_geometry_gif
from replay.gif import BROWSER_MAX_FPS, frame_duration_ms
from replay.grid import GridStyle
from replay.images import save_png
from replay.index_page import Entry, write_index
from replay.palette import NAN_RGB
from runfile.reader import Run, open_run
from replay.scales import Scale, ScaleSpec, spec_for
from replay.selection import StepRange, parse_indices, select_frames

SNAPSHOT_PROBE_ZOOM = 3
T = TypeVar("T")
DEFAULT_MAX_MB = 8.0  # per GIF: frames are thinned evenly to fit, and the index says how many were dropped


@dataclasses.dataclass(frozen=True)
class ReplayOptions:
    layers: tuple[str, ...] | None = None  # None: every recorded layer
    every: int = 1
    steps: StepRange = StepRange()
    channels: str | None = None  # e.g. "0:8" or "0,3"; applied to every layer, as far as it has them
    probes: str | None = None  # positions among the run's probes
    zoom: int = 1
    fps: float = 20.0
    max_mb: float | None = DEFAULT_MAX_MB  # per animation; None or 0: no limit
    transpose: bool = False
    wrap: bool = True  # wide layers' channel rows in side-by-side blocks (replay/grid.py choose_blocks)
    scales: tuple[ScaleSpec, ...] = ()
    metrics_stamp: bool = True
    mp4: bool = False
    snapshot_steps: tuple[int, ...] = ()
    kernels: bool = True
    curves: bool = True
    distributions: bool = True  # distributions.png: every layer's histogram at every selected step
    channel_distributions: tuple[str, ...] = ()  # distributions_<layer>.png: one row per stored channel
    geometry: bool = True  # geometry_<layer>.gif: the analysis images' PCA at every analysed step (needs /analysis)
    clock: bool = True  # index.html steps every animation on one clock (clock/: the GIFs' bytes in scripts)
    maximise: tuple[str, ...] | None = None  # feature visualisation (replay/maximise.py): layers, () = all + logits


@dataclasses.dataclass
class ReplayReport:
    out: Path
    index: Path | None = None
    animations: list[tuple[str, Animation, str]] = dataclasses.field(default_factory=list)  # (layer, result, scale)
    pictures: list[Path] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)
    seconds: float = 0.0


def ordinal(n: int) -> str:
    """2 -> '2nd', 3 -> '3rd', 11 -> '11th'."""
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def _channels(options: ReplayOptions, run: Run, layer: str) -> list[int] | None:
    if options.channels is None:
        return None
    c = run.layer_shape(layer)[-1]
    widest = max(run.layer_shape(n)[-1] for n in run.layers)
    picked = [i for i in parse_indices(options.channels, widest, "channels") if i < c]
    if not picked:
        raise ValueError(f"--channels {options.channels} selects none of {layer}'s {c} channels (0 to {c - 1})")
    return picked


def _validate(options: ReplayOptions, run: Run) -> list[str]:
    if options.zoom < 1:
        raise ValueError(f"--zoom must be a whole number of at least 1, got {options.zoom}")
    if options.max_mb is not None and options.max_mb < 0:
        raise ValueError(f"--max-mb must be positive (0: no limit), got {options.max_mb}")
    layers = list(options.layers) if options.layers else list(run.layers)
    unknown = [n for n in layers if n not in run.layers]
    if unknown:
        raise ValueError(f"no layer {', '.join(unknown)} in {run.path}; layers: {', '.join(run.layers)}")
    spec_for(layers[0], options.scales, run.layers)  # raises if a --scale names a layer the run lacks
    shown = [n for n in options.channel_distributions if n not in layers]
    if shown:
        raise ValueError(f"--channel-distributions {', '.join(shown)}: not among the layers rendered ({', '.join(layers)})")
    missing = [s for s in options.snapshot_steps if s not in set(run.steps.tolist())]
    if missing:
        steps = run.steps
        raise ValueError(f"--step {missing[0]} was not recorded; recorded steps: {steps[0]} … {steps[-1]} "
                         f"({len(steps)} frames, schedule {run.schedule})")
    return layers


def replay(path: str | Path, out: str | Path, options: ReplayOptions = ReplayOptions(),
           log: Callable[[str], None] = lambda s: None) -> ReplayReport:
    """Renders the run at `path` into the folder `out` (created if needed)."""
    t0 = time.perf_counter()
    out = Path(out)
    with open_run(path) as run:
        if run.num_frames == 0:
            raise ValueError(f"{path} holds no complete frame yet (status: {run.describe_status()}); nothing to render")
        layers = _validate(options, run)
        out.mkdir(parents=True, exist_ok=True)
        report = ReplayReport(out)
        if run.status != "completed":
            report.notes.append(f"run status: {run.describe_status()}; rendered the {run.num_frames} frames written so far")
        if options.fps > BROWSER_MAX_FPS:
            report.notes.append(f"--fps {options.fps:g}: browsers play GIFs at most at about {BROWSER_MAX_FPS} fps")
        positions = select_frames(run.steps, options.steps, options.every)
        probes = parse_indices(options.probes, run.layer_shape(layers[0])[0], "probes") if options.probes else None
        style = GridStyle(zoom=options.zoom, transpose=options.transpose, wrap=options.wrap)
        duration = frame_duration_ms(options.fps)
        max_bytes = int(options.max_mb * 1e6) if options.max_mb else None
        entries: list[Entry] = []
        sizes: dict[str, tuple[int, int]] = {}

        def animate(name: str, frames: Frames, section: str, caption: str, result: Animation | None = None) -> Animation:
            if result is None:
                result = write_animation(frames, positions, out / f"{name}.gif", duration, max_bytes, options.mp4)
            sizes[f"{name}.gif"] = frames.grid.shape[::-1]
            dropped = (f"; --max-mb kept every {ordinal(result.stride)} of {result.selected} selected frames (+ the last), "
                       f"dropped {result.dropped}") if result.dropped else ""
            steps = run.steps[positions]
            video = f" Also as {result.mp4.name}." if result.mp4 else ""
            entries.append(Entry(section, f"{name}.gif", f"{name}.gif",
                                 f"{caption} {result.frames} frames, steps {steps[0]}–{steps[-1]}, "
                                 f"{duration} ms each; {result.bytes / 1e6:.2f} MB{dropped}.{video}",
                                 steps=tuple(int(s) for s in run.steps[list(result.positions)])))
            log(f"{name}.gif  {result.frames} frames  {result.bytes / 1e6:.2f} MB{dropped}")
            if result.dropped:
                report.notes.append(f"{name}.gif: to stay within --max-mb {options.max_mb:g}, every {ordinal(result.stride)} "
                                    f"of {result.selected} frames was kept (+ the last); --max-mb 0 keeps them all")
            if frames.nan_values:
                report.notes.append(f"{name}: {frames.nan_values:,} NaN values in {frames.nan_frames} of the "
                                    f"{result.frames} frames shown, drawn magenta {NAN_RGB} (not a value of the scale)")
            return result

        def render(layer: str) -> tuple[LayerFrames, Animation]:  # on a worker thread: reads and encodes
            with run.lock:  # its reads (the scale's pass over the layer) one thread at a time
                frames = LayerFrames(run, layer, probes, _channels(options, run, layer),
                                     spec_for(layer, options.scales, run.layers), style, options.metrics_stamp)
            return frames, write_animation(frames, positions, out / f"{layer}.gif", duration, max_bytes, options.mp4)

        layer_frames: dict[str, LayerFrames] = {}
        for layer, (frames, rendered) in zip(layers, _in_parallel(render, layers)):
            layer_frames[layer] = frames
            scale = frames.scale.describe()
            result = animate(layer, frames, "Layers",
                             f"{layer} ({run.activation_label(layer)}); rows: "
                             f"{'probes' if options.transpose else 'channels'}; colour scale {scale}.", rendered)
            report.animations.append((layer, result, scale))

        if options.curves:
            report.pictures.append(write_curves(run, out / "curves.png"))
            entries.append(Entry("Curves", "curves.png", "curves.png",
                                 "train: each batch's loss/accuracy with the parameters before its update (light) "
                                 "and smoothed; eval: the held-out subset at its own steps; test: the full split "
                                 "at the end.", display_zoom=1))

        if options.distributions:
            dists = _in_parallel(  # read_frames takes the run's lock; the binning runs beside the other layers'
                lambda layer: layer_distribution(run, layer, _fixed(run, layer, layer_frames[layer].scale), positions), layers)
            report.pictures.append(write_distributions(run, dists, out / "distributions.png"))
            entries.append(Entry("Distributions", "distributions.png", "distributions.png",
                                 f"Each layer's activations on the {run.layer_shape(layers[0])[0]} probe images (every "
                                 "position and stored channel) at each selected step: the share of values per bin "
                                 "(log colour; the layer's colour-scale range, the same bins at every step) and the "
                                 "5/25/50/75/95% quantiles. Computed from the stored frames.", display_zoom=1))
        for layer in options.channel_distributions:
            dists = channel_distributions(run, layer, _fixed(run, layer, layer_frames[layer].scale), positions)
            name = f"distributions_{layer}.png"
            report.pictures.append(write_distributions(run, dists, out / name))
            entries.append(Entry("Distributions", name, name,
                                 f"{layer}, one channel a row: each stored channel's activations on the probe images "
                                 "(every position) at each selected step, over its colour-scale range, with the "
                                 "5/25/50/75/95% quantiles. Computed from the stored frames.", display_zoom=1))

        if options.geometry and run.has_analysis and len(run.analysis_steps):
            for layer in layers:
                with run.lock:
                    geometry = layer_geometry(run, layer)
                name = f"geometry_{layer}"
                count = write_geometry_gif(run, geometry, out / f"{name}.gif", max(duration, 100))
                report.pictures.append(out / f"{name}.gif")
                final = geometry.explained[-1]
                entries.append(Entry("Representation geometry", f"{name}.gif", f"{name}.gif",
                                     f"{layer}: the {len(geometry.labels)} analysis images on the first two principal "
                                     f"components of the layer's features, coloured by class, at each of the {count} "
                                     f"analysed steps ({geometry.steps[0]}–{geometry.steps[-1]}). Exact PCA from the "
                                     "stored centred Gram; each step turned onto the next by orthogonal Procrustes "
                                     "(the last step is PCA as it is); unit RMS radius per frame. At the last step "
                                     f"PC1+PC2 explain {final:.0%} of the variance; between-class share of the variance "
                                     f"{geometry.class_share[0]:.2f} at step {geometry.steps[0]} → "
                                     f"{geometry.class_share[-1]:.2f} at step {geometry.steps[-1]}.", display_zoom=1,
                                     steps=tuple(int(s) for s in geometry.steps[:count])))
                log(f"{name}.gif  {count} frames")

        if options.kernels:
            for layer in (n for n in run.kernel_layers if n in layers):
                frames = KernelFrames(run, layer, GridStyle(zoom=options.zoom), options.metrics_stamp)
                name = f"{layer}_kernels"
                last = next(iter(frames(positions[-1:])))
                report.pictures.append(save_png(out / f"{name}.png", last, frames.palette))
                sizes[f"{name}.png"] = last.shape[::-1]
                entries.append(Entry("Filters", f"{name}.png", f"{name}.png",
                                     f"{layer} weights at step {run.steps[positions[-1]]}, one column per filter; "
                                     f"colour scale {frames.scale.describe()}."))
                report.animations.append((name, animate(name, frames, "Filters", f"{layer} weights over training."),
                                          frames.scale.describe()))

        if options.maximise is not None:
            from replay.maximise import write_maximise_gifs

            for gif, caption, size in write_maximise_gifs(run, out, list(options.maximise) or None,
                                                          zoom=options.zoom, log=log):
                entries.append(Entry("Feature visualisation", gif.stem, gif.name, caption))
                sizes[gif.name] = size
                report.pictures.append(gif)

        for step in options.snapshot_steps:
            report.pictures += _snapshots(run, layer_frames, step, probes, style, options, out, entries, sizes)

        facts = [("run file", str(Path(path).resolve())), ("experiment", run.experiment),
                 ("model", run.describe_training()),
                 ("status", run.describe_status()),
                 ("frames", f"{run.num_frames} recorded, {len(positions)} selected (--every {options.every}, "
                            f"--steps {options.steps})"),
                 ("probes", ", ".join(f"{k}: {run.class_names[int(l)]}" for k, l in enumerate(run.probes()[1])))]
        test_loss, test_acc, count = run.test_metrics()
        if count:
            facts.append(("test", f"accuracy {test_acc:.4f}, loss {test_loss:.4f} on {count} images"))
        facts.append(("stamps", "STEP = updates applied before the frame (0 = initialisation); TRAIN ACC = mean of "
                                "the last 10 training batches at or before it; EVAL ACC = latest evaluation at or "
                                "before it"))
        facts.append(("one clock", ("the bar above the pictures steps every layer, filter and geometry animation "
                                    "together (a GIF opened on its own plays on its own clock)" if options.clock else
                                    "each GIF here plays on its own clock (--no-clock)") + ". With the curves and "
                                   "distributions on the same cursor, and every recorded step: emergence serve "
                                   f"{Path(path).resolve().parent}, then open {Path(path).stem} in the runs table "
                                   "(http://127.0.0.1:8421/)"))
        facts += [("note", n) for n in report.notes]
        if not options.clock:
            entries = [dataclasses.replace(e, steps=()) for e in entries]
        report.index, clock_bytes = write_index(out, f"{Path(path).name}: {run.experiment}", facts, entries, sizes)
        if clock_bytes:
            log(f"clock/  {clock_bytes / 1e6:.2f} MB (index.html's one clock: the GIFs again, as scripts; --no-clock "
                "leaves it out)")
    report.seconds = time.perf_counter() - t0
    return report


def render_threads(jobs: int) -> int:
    """Threads rendering layers at once: one per core (the caller only waits), at most one per job. Measured
    on 2 cores, learn_to_see's six layers: 2.9 s on one thread, 2.3 s on two."""
    return max(1, min(jobs, os.cpu_count() or 1))


def _in_parallel(fn: Callable[[str], T], items: Sequence[str]) -> list[T]:
    """`fn` of every item, in order, on `render_threads` threads (h5py serialises the reads; palette mapping,
    compression and Pillow's GIF encoder run without the GIL)."""
    threads = render_threads(len(items))
    if threads == 1:
        return [fn(item) for item in items]
    with ThreadPoolExecutor(threads, thread_name_prefix="emergence-replay") as pool:
        return list(pool.map(fn, items))


def _fixed(run: Run, layer: str, scale: Scale) -> Scale:
    """`scale`, or the default fixed rule's where it is per step (histograms need one range for every step)."""
    if not scale.per_step:
        return scale
    with run.lock:
        return layer_scale(run, layer)


def _snapshots(run: Run, layer_frames: dict[str, LayerFrames], step: int, probes: Sequence[int] | None,
               style: GridStyle, options: ReplayOptions, out: Path, entries: list[Entry],
               sizes: dict[str, tuple[int, int]]) -> list[Path]:
    """The grid of every layer at `step`, and each selected probe's feature maps, enlarged."""
    folder = out / "snapshots"
    folder.mkdir(exist_ok=True)
    position = int(np.searchsorted(run.steps, step))
    written = []
    for layer, frames in layer_frames.items():
        views = [(f"step{step}_{layer}", frames, f"{layer} at step {step}, all selected probes.")]
        for k in frames.probes:
            one = LayerFrames(run, layer, [k], frames.channels, style=dataclasses.replace(
                style, transpose=True, zoom=max(style.zoom, SNAPSHOT_PROBE_ZOOM), text_scale=2), metrics_stamp=options.metrics_stamp,
                scale=frames.scale)
            label = run.class_names[int(run.probes()[1][k])]
            views.append((f"step{step}_{layer}_probe{k}", one, f"{layer}'s response to probe {k} ({label}) at step {step}."))
        for name, f, caption in views:
            frame = next(iter(f(np.array([position]))))  # one frame, rendered exactly like the GIFs' frames
            written.append(save_png(folder / f"{name}.png", frame, f.palette))
            sizes[f"snapshots/{name}.png"] = frame.shape[::-1]
            entries.append(Entry(f"Snapshots at step {step}", name, f"snapshots/{name}.png",
                                 caption + f" Colour scale {f.scale.describe()}.", display_zoom=1 if "probe" in name else 2))
    return written
