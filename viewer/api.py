"""The viewer's JSON and binary API. Every answer is computed from a run file through `replay`'s reader.

    GET /api/runs                                       the run list (catalog rows)
    GET /api/runs/<id>[?scale=symlog|step]              one run: layers, shapes, dtypes, steps, scales (symlog: on a
                                                        symmetric-log colour axis; step: each frame its own), palette
    GET /api/runs/<id>/step_scales?layer=L&start=i&count=n  the per-step rule's scale of frames i … i+n−1: float32
                                                        [n, N_LEVELS], S_t then the level thresholds of [−S_t, S_t]
    GET /api/runs/<id>/frames?layer=L&start=i&count=n   frames at positions i … i+n−1, as stored (little-endian
                                                        float16/float32 bytes, [n, P, H, W, C])
    GET /api/runs/<id>/kernels?layer=L&start=i&count=n  kernels as stored (float32 [n, kh, kw, Cin, Cout])
    GET /api/runs/<id>/probes                           probe pixels as stored (uint8 [P, H, W, C])
    GET /api/runs/<id>/metrics                          train (raw, the curves' EMA, wall time), eval, test, series names
    GET /api/runs/<id>/series?name=N                    one extra scalar series (per-layer measures, lr, own series)
    GET /api/runs/<id>/distribution?layer=L[&lo=&hi=][&channel=c]  the layer's histogram at every recorded step,
                                                        its quantiles (replay/distributions.py; bins over its scale,
                                                        or [lo, hi]; of one channel, by the model's number)
    GET /api/runs/<id>/geometry?layer=L                 the analysis images' aligned PCA at every analysed step
                                                        (replay/geometry.py)
    GET /api/runs/<id>/frame.png?layer=L&step=s[&scale=symlog|step]  the frame at recorded step s, rendered by
                                                        replay's own renderer (the GIF's frame, pixel for pixel)
    GET /api/compare?a=<id>&b=<id>                      shared steps, and (when both runs analysed the same
                                                        images) same-layer similarity and the layer map

Positions index the run's recorded steps (`steps` in the run's answer). A frame range holds at most
`max_frames` frames (in the run's answer, per layer: at most MAX_RANGE frames and MAX_BYTES bytes).
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import time
from typing import Any, Mapping
from urllib.parse import quote

import numpy as np

from compare.finiteness import nonfinite_layers
from compare.cross import cross_similarity, layer_map_at, layer_matching, probe_set_mismatch
from compare.linear_probes import wilson_interval
from replay.animate import LayerFrames
from replay.curves import centred, smoothing_label
from replay.distributions import QUANTILES, layer_distribution
from replay.geometry import layer_geometry
from replay.images import png_bytes
from replay.palette import DIVERGING, NAN_RGB, SEQUENTIAL, colour_map, level_thresholds
from replay.scales import Scale, fixed_scale, per_step_scale, shared_scale, step_scales, with_symlog
from runfile.reader import Run
from runfile.verify import compact_ranges
from viewer.catalog import Catalog
from viewer.scale_book import AUTO, ScaleBook, frame_nbytes, scale_json

MAX_RANGE = 64  # frames per request
MAX_BYTES = 16 << 20  # bytes per frame or kernel request


class ApiError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@dataclasses.dataclass(frozen=True)
class Reply:
    status: int
    content_type: str
    body: bytes
    headers: Mapping[str, str] = dataclasses.field(default_factory=dict)


def json_reply(obj: Any, status: int = 200) -> Reply:
    return Reply(status, "application/json; charset=utf-8", json.dumps(obj, allow_nan=False).encode())


def _num(v: float) -> float | None:
    return float(v) if math.isfinite(v) else None  # JSON has no NaN


class Api:
    def __init__(self, catalog: Catalog):
        self.catalog = catalog
        self.scales = ScaleBook()
        self._metrics: dict[tuple[str, float, int, int], dict[str, Any]] = {}
        self._meta: dict[tuple[str, str], tuple[tuple, Reply]] = {}  # (run id, scale mode) -> (file version, answer)
        self._views: dict[tuple, Reply] = {}  # distributions and geometry, per run, file version and layer
        self.palettes = palettes()  # at start-up: it imports matplotlib's colour maps, which takes a while

    # -- run list and one run -----------------------------------------------------------------------
    def runs(self) -> Reply:
        rows = self.catalog.rows()
        return json_reply({"root": str(self.catalog.root), "runs": rows, "truncated": self.catalog.truncated})

    def run(self, rid: str, query: Mapping[str, str] | None = None) -> Reply:
        mode = _scale_mode(query or {})
        entry = self.catalog.file(rid)
        with self.catalog.open(rid) as run:
            st = entry.path.stat()
            # the same file unchanged gives the same answer, but for the state, which ages: cached 10 s at most
            key = (st.st_ino, st.st_mtime_ns, st.st_size, int(time.time()) // 10)
            if self._meta.get((rid, mode), (None,))[0] != key:
                self._meta[(rid, mode)] = (key, self._run(rid, entry.name, run, mode))
            return self._meta[(rid, mode)][1]

    def _run(self, rid: str, run_name: str, run: Run, mode: str = "") -> Reply:
        state, reason = run.state()
        layers = []
        for name in run.layers:
            refused = too_large(run, name)
            layers.append({
                "name": name, "shape": list(run.layer_shape(name)), "activation": run.activation_label(name),
                "channels": run.layer_channels(name),  # the model's channel numbers of the stored ones
                "dtype": run.layer_dtype(name).name, "max_frames": _range_cap(run, name, kernel=False),
                "scale": scale_json(_NOT_SERVED if refused else self._layer_scale(rid, run, name, mode),
                                    provisional=state == "recording" and not refused and mode != "step"
                                    and fixed_scale(run.activation_label(name), AUTO) is None, covers=run.num_frames),
                "too_large": refused,
            })
        kernels = []
        for name in run.kernel_layers:
            refused = too_large(run, name, kernel=True)
            kernels.append({"name": name, "shape": list(run.kernel_shape(name)), "dtype": "float32",
                            "scale": scale_json(_NOT_SERVED if refused else self.scales.kernel_scale(rid, run, name)),
                            "max_frames": _range_cap(run, name, kernel=True), "too_large": refused})
        images, labels, indices = run.probes()
        return json_reply({
            "id": rid, "name": run_name, "experiment": run.experiment, "config": run.config, "facts": run.facts(),
            "training": run.describe_training(),
            "state": state, "reason": reason, "planned_steps": run.planned_steps, "schedule": run.schedule,
            "steps": run.steps.tolist(), "layers": layers, "kernels": kernels,
            "probes": {"shape": list(images.shape), "labels": labels.tolist(), "indices": indices.tolist()},
            "class_names": run.class_names, "has_analysis": run.has_analysis,
            "nonfinite": {name: f.describe() for name, f in nonfinite_layers(run).items()},  # the page's first line
            "counts": {"train": run.train_count, "eval": run.eval_count_written},
            "test": _test(run), "palettes": self.palettes,
        })

    def _layer_scale(self, rid: str, run: Run, name: str, mode: str) -> Scale:
        """The layer's scale in the page's colour mode: replay's rule (linear or symmetric-log) or per step."""
        if mode == "step":
            return per_step_scale(run.activation_label(name))
        return with_symlog(self.scales.layer_scale(rid, run, name), 0.0 if mode == "symlog" else None)

    def step_scales(self, rid: str, query: Mapping[str, str]) -> Reply:
        """The per-step rule (replay.scales.step_scales) over whole stored frames: for frames start … start+count−1,
        S_t and the thresholds of [−S_t, S_t] that the page colours with, as float32 rows."""
        with self.catalog.open(rid) as run:
            layer = _layer(run, query, kernel=False)
            start, stop = self._frame_range(run, layer, query, kernel=False)
            s = step_scales(run.read_frames(layer, np.arange(start, stop)))
        rows = np.concatenate([s[:, None], level_thresholds(-s, s)], axis=1).astype("<f4")
        return Reply(200, "application/octet-stream", rows.tobytes(), {
            "X-Frame-Start": str(start), "X-Frame-Count": str(stop - start), "X-Frames-Total": str(run.num_frames)})

    def _frame_range(self, run: Run, layer: str, query: Mapping[str, str], kernel: bool) -> tuple[int, int]:
        """(start, stop) of a frame request, checked: refused layers, the cap, positions recorded."""
        total = run.num_frames
        start, count = _int(query, "start", 0), _int(query, "count", 1)
        refused = too_large(run, layer, kernel)
        if refused:
            raise ApiError(413, refused)
        cap = _range_cap(run, layer, kernel)
        if count < 1 or count > cap:
            raise ApiError(400, f"count must be 1 to {cap} frames of {layer} per request, got {count}")
        if not 0 <= start < total:
            raise ApiError(416, f"start {start} is outside the {total} recorded frames (positions 0 to {total - 1})")
        return start, min(start + count, total)

    def frames(self, rid: str, query: Mapping[str, str], kernel: bool = False) -> Reply:
        with self.catalog.open(rid) as run:
            layer = _layer(run, query, kernel)
            total = run.num_frames
            start, stop = self._frame_range(run, layer, query, kernel)
            data = run.read_frames(layer, np.arange(start, stop), kernel=kernel)
        body = np.ascontiguousarray(data).astype(data.dtype.newbyteorder("<"), copy=False).tobytes()
        return Reply(200, "application/octet-stream", body, {
            "X-Frame-Start": str(start), "X-Frame-Count": str(stop - start), "X-Frame-Dtype": data.dtype.name,
            "X-Frame-Shape": ",".join(str(d) for d in data.shape), "X-Frames-Total": str(total)})

    def probes(self, rid: str) -> Reply:
        with self.catalog.open(rid) as run:
            images = run.probes()[0]
        return Reply(200, "application/octet-stream", np.ascontiguousarray(images, np.uint8).tobytes(),
                     {"X-Frame-Shape": ",".join(str(d) for d in images.shape)})

    def metrics(self, rid: str) -> Reply:
        with self.catalog.open(rid) as run:
            train, ev = run.train_metrics(), run.eval_metrics()
            key = (rid, run.created_unix, len(train.step), len(ev.step))
            cached = self._metrics.get(key)
            if cached is None:
                cached = {
                    "train": {"step": train.step.tolist(), "wall_time": [_num(v) for v in run.train_wall_time()],
                              "loss": [_num(v) for v in train.loss],
                              "accuracy": [_num(v) for v in train.accuracy],
                              "loss_smoothed": [_num(v) for v in centred(train.loss)],
                              "accuracy_smoothed": [_num(v) for v in centred(train.accuracy)],
                              "smoothing": smoothing_label(len(train.step))},
                    "eval": {"step": ev.step.tolist(), "loss": [_num(v) for v in ev.loss],
                             "accuracy": [_num(v) for v in ev.accuracy], "count": run.eval_count},
                    "test": _test(run),
                    "series": sorted(run.scalars()),  # the per-layer measures and the loop's own series: /series
                }
                self._metrics = {k: v for k, v in self._metrics.items() if k[0] != rid}
                self._metrics[key] = cached
        return json_reply(cached)

    def series(self, rid: str, query: Mapping[str, str]) -> Reply:
        """One extra scalar series (a per-layer measure, the learning rate, a user's own series) by name."""
        name = query.get("name", "")
        with self.catalog.open(rid) as run:
            found = run.scalars()
        if name not in found:
            raise ApiError(404, f"no series {name!r} in this run; it has: {', '.join(sorted(found)) or 'none'}")
        steps, values = found[name]
        return json_reply({"name": name, "step": steps.tolist(), "value": [_num(v) for v in values]})

    def distribution(self, rid: str, query: Mapping[str, str]) -> Reply:
        """Counts per bin [T × BINS, row by row], quantiles [T × 5], over the layer's scale or the asked range
        (compare asks both runs for one range, so their columns share bins)."""
        with self.catalog.open(rid) as run:
            layer = _layer(run, query, kernel=False)
            refused = too_large(run, layer)
            if refused:
                raise ApiError(413, refused)
            scale = self.scales.layer_scale(rid, run, layer)
            lo, hi = _float(query, "lo"), _float(query, "hi")
            if (lo is None) != (hi is None) or (lo is not None and not hi > lo):
                raise ApiError(400, "lo and hi go together, with hi > lo")
            if lo is not None:
                scale = Scale(np.float32(lo), np.float32(hi), "diverging", "asked", "asked")
            stored = None
            if "channel" in query:
                channel, numbers = _int(query, "channel", 0), run.layer_channels(layer)
                if channel not in numbers:
                    raise ApiError(404, f"{layer} has no stored channel {channel}; stored: {compact_ranges(numbers)}")
                stored = numbers.index(channel)
            key = ("distribution", rid, run.created_unix, run.num_frames, layer, lo, hi, stored)
            cached = self._views.get(key)
            if cached is None:
                d = layer_distribution(run, layer, scale, stored=stored)
                what = "every position and stored channel" if stored is None else f"every position of channel {d.channel}"
                cached = json_reply({
                    "layer": layer, "channel": d.channel, "steps": d.steps.tolist(), "edges": d.edges.tolist(),
                    "bins": len(d.edges) - 1,
                    "counts": d.counts.ravel().tolist(), "per_step": d.per_step, "quantile_levels": list(QUANTILES),
                    "quantiles": [[_num(v) for v in row] for row in d.quantiles],
                    "beyond": (d.below + d.above).tolist(), "nonfinite": d.nonfinite.tolist(), "describe": d.describe(),
                    "what": f"the {run.layer_shape(layer)[0]} probe images' activations ({what}), from the stored "
                            "frames",
                })
                self._remember(key, cached)
        return cached

    def geometry(self, rid: str, query: Mapping[str, str]) -> Reply:
        with self.catalog.open(rid) as run:
            layer = _layer(run, query, kernel=False)
            if not run.has_analysis or not len(run.analysis_steps):
                raise ApiError(404, "this run has no analysis images (recorded with analysis_probes=0): no geometry")
            key = ("geometry", rid, run.created_unix, len(run.analysis_steps), layer)
            cached = self._views.get(key)
            if cached is None:
                g = layer_geometry(run, layer)
                finite = g.coords[np.isfinite(g.coords).all(axis=(1, 2))]
                cached = json_reply({
                    "layer": layer, "steps": g.steps.tolist(), "labels": g.labels.tolist(),
                    "coords": [[[_num(round(float(v), 4)) for v in p] for p in frame] for frame in g.coords],
                    "explained": [_num(v) for v in g.explained], "class_share": [_num(v) for v in g.class_share],
                    "extent": float(np.abs(finite).max()) if finite.size else 1.0,
                    "method": f"exact PCA of the {len(g.labels)} analysis images' features from the stored centred Gram; "
                              "each step turned onto the next by orthogonal Procrustes (the last is PCA as it is); "
                              "unit RMS radius per step",
                })
                self._remember(key, cached)
        return cached

    def _remember(self, key: tuple, reply: Reply) -> None:
        if len(self._views) >= 64:  # answers of the runs looked at lately
            self._views.pop(next(iter(self._views)))
        self._views[key] = reply

    def png(self, rid: str, query: Mapping[str, str]) -> Reply:
        entry = self.catalog.file(rid)
        with self.catalog.open(rid) as run:
            layer = _layer(run, query, kernel=False)
            refused = too_large(run, layer)
            if refused:
                raise ApiError(413, refused)
            step = _int(query, "step", -1)
            steps = run.steps
            position = int(np.searchsorted(steps, step))
            if position >= len(steps) or steps[position] != step:
                raise ApiError(404, f"step {step} was not recorded in {entry.name}")
            frames = LayerFrames(run, layer, scale=self._layer_scale(rid, run, layer, _scale_mode(query)))
            picture = next(iter(frames(np.array([position]))))
            body = png_bytes(picture, frames.palette)
        name = f"{entry.name.replace('/', '_')}_{layer}_step{step}.png"
        return Reply(200, "image/png", body, {"Content-Disposition": content_disposition(name)})

    # -- two runs -----------------------------------------------------------------------------------
    def compare(self, query: Mapping[str, str]) -> Reply:
        ra, rb = query.get("a", ""), query.get("b", "")
        names = (self.catalog.file(ra).name, self.catalog.file(rb).name)
        with self.catalog.lock, self.catalog.open(ra) as a, self.catalog.open(rb) as b:
            steps = np.intersect1d(a.steps, b.steps)
            shared = [n for n in a.layers if n in b.layers]
            out: dict[str, Any] = {"a": ra, "b": rb, "names": names, "steps": steps.tolist(), "layers": shared,
                                   "alignment": "frames at the steps recorded in both runs"}
            out["shared_scales"] = {name: scale_json(shared_scale(self.scales.layer_scale(ra, a, name),
                                                                  self.scales.layer_scale(rb, b, name)))
                                    for name in shared if not too_large(a, name) and not too_large(b, name)}
            mismatch = probe_set_mismatch(a, b)
            out["similarity"] = None
            out["mismatch"] = mismatch
            if mismatch is None and shared and len(np.intersect1d(a.analysis_steps, b.analysis_steps)):
                cross = cross_similarity(a, b, shared)
                init_map, init_flags = layer_map_at(a, b, int(cross.steps[0]))
                out["similarity"] = {
                    "measure": "debiased linear CKA on the runs' shared analysis images",
                    "steps": cross.steps.tolist(),
                    "same_layer": {k: [_num(x) for x in v] for k, v in cross.same_layer.items()},
                    "map": {"step": cross.map_step, "rows": cross.map_rows, "cols": cross.map_cols,
                            "matrix": [[_num(x) for x in row] for row in cross.layer_map], "flags": cross.map_flags,
                            "thresholds": level_thresholds(0.0, 1.0).astype(np.float64).tolist()},
                    # the baseline: the same map at the first shared analysed step (initialisation), and how often
                    # a layer's most similar layer in the other run is itself, there and at the end
                    "map_init": {"step": int(cross.steps[0]), "rows": cross.map_rows, "cols": cross.map_cols,
                                 "matrix": [[_num(x) for x in row] for row in init_map], "flags": init_flags,
                                 "thresholds": level_thresholds(0.0, 1.0).astype(np.float64).tolist()},
                    "matching": {when: _matching(m, cross.map_rows, cross.map_cols)
                                 for when, m in (("init", init_map), ("end", cross.layer_map))},
                }
        return json_reply(out)


def _matching(matrix: np.ndarray, rows: list[str], cols: list[str]) -> dict[str, Any] | None:
    hits, total = layer_matching(matrix, rows, cols)
    if not total:
        return None
    lo, hi = wilson_interval(hits / total, total)
    return {"accuracy": hits / total, "matches": hits, "compared": total, "interval95": [lo, hi]}


def content_disposition(name: str) -> str:
    """`inline` with `name` as RFC 6266 says: an ASCII fallback (anything but letters, digits and `._-` as
    `_`) and the exact name percent-encoded as UTF-8 (RFC 5987), so that no name (CR/LF, quotes, any script)
    can end the header or fail to encode."""
    fallback = re.sub(r"[^A-Za-z0-9._-]", "_", name) or "frame.png"
    return f"inline; filename=\"{fallback}\"; filename*=UTF-8''{quote(name, safe='')}"


def palettes() -> dict[str, Any]:
    """The data colours of each scale kind (replay/palette.py) and the NaN colour."""
    return {"diverging": colour_map(DIVERGING).tolist(), "sequential": colour_map(SEQUENTIAL).tolist(),
            "nan": list(NAN_RGB)}


def _test(run: Run) -> dict[str, Any] | None:
    loss, acc, count = run.test_metrics()
    return {"loss": _num(loss), "accuracy": _num(acc), "count": count} if count else None


def too_large(run: Run, layer: str, kernel: bool = False) -> str | None:
    """Why the viewer does not serve `layer` (one frame over MAX_BYTES), or None. Checked before any read, so a
    small file declaring huge shapes allocates nothing."""
    n = frame_nbytes(run, layer, kernel)
    if n <= MAX_BYTES:
        return None
    what = f"{layer}'s kernel" if kernel else layer
    return (f"one frame of {what} is {n / 1e6:.0f} MB, over the viewer's {MAX_BYTES / 1e6:.0f} MB per answer; "
            "`emergence replay` renders it")


def _scale_mode(query: Mapping[str, str]) -> str:
    """The colour mode a request asks for: "" (linear), "symlog" or "step"."""
    mode = query.get("scale", "")
    if mode not in ("", "symlog", "step"):
        raise ApiError(400, f"scale must be symlog, step or left out, got {mode[:20]!r}")
    return mode


def _range_cap(run: Run, layer: str, kernel: bool) -> int:
    """Frames of `layer` (or of its kernel) one request may ask for: MAX_RANGE, fewer if they exceed MAX_BYTES
    (0: not even one)."""
    return min(MAX_RANGE, MAX_BYTES // frame_nbytes(run, layer, kernel))


_NOT_SERVED = Scale(np.float32(-1), np.float32(1), "diverging", "not computed: the frames are too large to serve",
                    "not served")


def _layer(run: Run, query: Mapping[str, str], kernel: bool) -> str:
    layer = query.get("layer", "")
    valid = run.kernel_layers if kernel else run.layers
    if layer not in valid:
        what = "recorded kernels" if kernel else "layers"
        raise ApiError(404, f"no {'kernel of ' if kernel else ''}layer {layer!r}; {what}: {', '.join(valid) or 'none'}")
    return layer


def _float(query: Mapping[str, str], name: str) -> float | None:
    text = query.get(name)
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise ApiError(400, f"{name} must be a finite number, got {text[:40]!r}")
    return value


def _int(query: Mapping[str, str], name: str, default: int) -> int:
    text = query.get(name)
    if text is None:
        return default
    try:
        return int(text)
    except ValueError:
        raise ApiError(400, f"{name} must be a whole number, got {text[:40]!r}") from None
