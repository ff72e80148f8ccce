"""How each layer of one run changed: drift to its final state, normalised progress, settling steps, activity.

For layer ℓ with centred Grams K_t at the analysed steps t (recorder/analysis.py):

* drift(t) = debiased CKA(K_t, K_final): 1 at the final step by definition;
* baseline "init vs final" = drift(0);
* null(t) = debiased CKA(K_t, Π K_final Πᵀ) for a fixed random permutation Π of the images: what
  "no correspondence" looks like at this n (≈ 0);
* progress(t) = (drift(t) − drift(0)) / (1 − drift(0)): 0 at initialisation, 1 at the end;
* t50, t90 = the first analysed step from which progress stays at or above 0.5 (0.9) for the rest of the run
  ("settled"); None when progress is undefined (a dead layer, or one that did not change: 1 − drift(0) < 0.005;
  below 0.05 it is flagged as a small change).
  Their resolution is the analysis schedule's spacing.

A layer is called "no change" only when its weights agree (compare/weight_change.py: moved less than 5% of their
initial norm, or the file stores no weights); a layer whose geometry stayed while its weights moved is
flagged "similar geometry" with both numbers: debiased CKA is blind to what a near-linear first layer
computes, not to how far it moved.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from compare.finiteness import Finiteness, flag_order, layer_finiteness
from compare.settling import settled_at
from compare.similarity import debiased_cka
from compare.weight_change import weight_change
from runfile.reader import Run

NULL_SEED = 0
MIN_CHANGE = 0.005  # 1 − drift(0) below this: the layer ended where it started, progress is not defined
SMALL_CHANGE = 0.05  # below this, progress is defined but flagged: small changes make t50/t90 noisy
CKA_BLIND = ("CKA does not see rotations or isotropic scaling of the features, the weight change does not see "
             "function-preserving reparametrisations, so both can be right")
MOVED = 0.05  # weights that moved this much (relative to their initial norm) are not "unchanged"


@dataclasses.dataclass
class LayerDynamics:
    layer: str
    activation: str
    steps: np.ndarray  # [A] analysed steps
    drift: np.ndarray  # [A] debiased CKA to the final step
    null: np.ndarray  # [A] probe-shuffled baseline
    progress: np.ndarray  # [A]
    t50: int | None
    t90: int | None
    activity: dict[str, np.ndarray]  # name -> [A]
    flags: list[str]
    weight_change: float | None = None  # ‖W_last − W_first‖ / ‖W_first‖ from the stored weights (compare/weight_change.py)
    finiteness: Finiteness | None = None  # which analysed steps held non-finite data (excluded everywhere)

    @property
    def init_vs_final(self) -> float:
        return float(self.drift[0]) if len(self.drift) else float("nan")

    def final_activity(self, name: str) -> float:
        return float(self.activity[name][-1]) if name in self.activity and len(self.activity[name]) else float("nan")


def layer_dynamics(run: Run, layer: str, positions: np.ndarray | None = None) -> LayerDynamics:
    """Dynamics of `layer` over the analysed steps at `positions` (all if None; the last one is 'final').
    Steps with non-finite data (compare/finiteness.py) are excluded: NaN there, and flagged; when the final step
    is one of them nothing is measured and the flag says from which step."""
    steps = run.analysis_steps
    positions = np.arange(len(steps)) if positions is None else np.asarray(positions)
    grams = run.grams(layer, positions)
    finite = layer_finiteness(run, layer, grams, positions)
    ok = ~finite.bad
    flags: set[str] = {finite.describe()} if finite.any else set()
    undefined: dict[str, list[int]] = {}
    drift, null = np.full(len(grams), np.nan), np.full(len(grams), np.nan)
    if len(grams) and ok[-1]:
        final = grams[-1]
        perm = np.random.default_rng(NULL_SEED).permutation(final.shape[0])
        shuffled = final[np.ix_(perm, perm)]
        for i in np.flatnonzero(ok):
            s, z = debiased_cka(grams[i], final), debiased_cka(grams[i], shuffled)
            drift[i], null[i] = s.value, z.value
            if s.flag:
                undefined.setdefault(s.flag, []).append(int(steps[positions[i]]))
    for flag, at in undefined.items():
        flags.add(f"{flag} at {len(at)} steps ({at[0]}..{at[-1]}): NaN there")
    moved = weight_change(run, layer)
    change = 1.0 - drift[0] if len(drift) else np.nan
    progress = np.full(len(grams), np.nan)
    if np.isfinite(change) and change >= MIN_CHANGE:
        progress = (drift - drift[0]) / change
        if change < SMALL_CHANGE:
            flags.add(f"small change: 1 - CKA(init, final) = {change:.3f}"
                      + (f", while its weights moved {moved:.3g} of their initial norm: {CKA_BLIND}"
                         if moved is not None and moved >= MOVED else ""))
    elif np.isfinite(change):
        if moved is not None and moved >= MOVED:  # the geometry stayed; the weights did not
            flags.add(f"similar geometry: CKA(init, final) = {drift[0]:.3f}, yet its weights moved "
                      f"{moved:.3g} of their initial norm: {CKA_BLIND}")
        else:
            flags.add(f"no change: CKA(init, final) = {drift[0]:.3f}"
                      + (f" and weight change {moved:.3g}" if moved is not None else ""))
    activity = {k: np.where(ok, v[positions], np.nan) for k, v in run.activity(layer).items()}
    if "constant_fraction" in activity and len(positions) and activity["constant_fraction"][-1] == 1.0:
        flags.add("constant at the final step: every unit ignores its input")
    step_list = steps[positions]
    return LayerDynamics(layer, run.activation_label(layer), step_list, drift, null, progress,
                         settled_at(step_list[ok], progress[ok], 0.5), settled_at(step_list[ok], progress[ok], 0.9),
                         activity, sorted(flags, key=flag_order), moved, finite)


def run_dynamics(run: Run, layers: list[str] | None = None) -> dict[str, LayerDynamics]:
    return {name: layer_dynamics(run, name) for name in (layers or run.layers)}
