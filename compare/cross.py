"""How two runs' layers relate over training: same-layer similarity at every shared analysed step, and the
A × B layer map at the last one. Used by `emergence compare` (report.py) and by the live viewer.

Both runs must have analysed the very same images (`probe_set_mismatch` says why not otherwise).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from compare.similarity import cka_matrix, debiased_cka
from runfile.reader import Run


@dataclasses.dataclass(frozen=True)
class CrossSimilarity:
    steps: np.ndarray  # [A] analysed steps of both runs
    same_layer: dict[str, np.ndarray]  # layer -> [A] debiased CKA(A's layer, B's layer), NaN where undefined
    map_step: int  # the step of the layer map: the last shared analysed step
    map_rows: list[str]  # A's layers
    map_cols: list[str]  # B's layers
    layer_map: np.ndarray  # [len(map_rows), len(map_cols)]
    map_flags: list[str]


def probe_set_mismatch(a: Run, b: Run) -> str | None:
    """Why the two runs' analysis probe sets cannot be compared, or None if they are the same set."""
    for tag, run in (("A", a), ("B", b)):
        if not run.has_analysis:
            return f"run {tag}: {run.missing_analysis()}"
    pa, pb = a.analysis_probe_set(), b.analysis_probe_set()
    if pa["sha256"] != pb["sha256"]:
        return (f"the analysis probe sets differ: A used {len(pa['indices'])} {pa['dataset']} images "
                f"(sha256 {pa['sha256'][:12]}), B used {len(pb['indices'])} {pb['dataset']} images "
                f"(sha256 {pb['sha256'][:12]})")
    return None


def cross_similarity(a: Run, b: Run, layers: list[str]) -> CrossSimilarity:
    """Same-layer debiased CKA of `layers` at every analysed step both runs have, and the full layer map at
    the last one. The caller checks `probe_set_mismatch` first."""
    steps = np.intersect1d(a.analysis_steps, b.analysis_steps)
    if len(steps) == 0:
        raise ValueError(f"{a.path.name} and {b.path.name} have no analysed step in common")
    pa, pb = np.searchsorted(a.analysis_steps, steps), np.searchsorted(b.analysis_steps, steps)
    series = {}
    for layer in layers:
        ga, gb = a.grams(layer, pa), b.grams(layer, pb)
        series[layer] = np.array([debiased_cka(k, l).value for k, l in zip(ga, gb)])
    matrix, flags = layer_map_at(a, b, int(steps[-1]))
    return CrossSimilarity(steps, series, int(steps[-1]), list(a.layers), list(b.layers), matrix, flags)


def layer_map_at(a: Run, b: Run, step: int) -> tuple[np.ndarray, list[str]]:
    """Debiased CKA of every layer of A against every layer of B at analysed `step` (which both runs have),
    and the flags of its undefined entries."""
    pa, pb = int(np.searchsorted(a.analysis_steps, step)), int(np.searchsorted(b.analysis_steps, step))
    return cka_matrix([a.grams(n, [pa])[0] for n in a.layers], [b.grams(n, [pb])[0] for n in b.layers])


def layer_matching(layer_map: np.ndarray, rows: list[str], cols: list[str]) -> tuple[int, int]:
    """(matches, layers considered) in both directions of a CKA map between two runs of one architecture."""
    shared = [n for n in rows if n in cols]
    hits = total = 0
    for name in shared:
        i, j = rows.index(name), cols.index(name)
        for values, own in ((layer_map[i], j), (layer_map[:, j], i)):
            if np.all(np.isnan(values)):
                continue
            total += 1
            hits += int(np.nanargmax(values) == own)
    return hits, total
