"""The per-channel measures (compare/channels.py) and linear probes (compare/linear_probes.py) of one run, over the
steps whose weights it stores (recorder/snapshots.py): one forward pass of the measure images per step.

    with open_run("runs/learn_to_see.h5") as run:
        m = measure_run(run)
    m.layers["conv1"].probe_accuracy[-1], m.layers["conv1"].settle(0.9)

The last stored step is "the end" of the correlations. Without snapshots a completed run stores step 0 and
its last step: the correlations, selectivity and probes then exist at those two steps, and no settle step is
meaningful; record with `--set snapshots=N` to follow them over training.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np
from flax import nnx

from compare import channels as ch
from compare.linear_probes import ProbeResult, linear_probe, probe_positions, split_balanced
from recorder.snapshots import MEASURE_IMAGES, MeasureSet, Snapshots, measure_set
from runfile.reader import Run
from runfile.schema import PRE_ACTIVATION


CONTROL_SEED = 0  # the permutation of the fit labels of the shuffled-label control


@dataclasses.dataclass
class LayerMeasures:
    layer: str
    steps: np.ndarray  # [S] stored steps
    correlation: np.ndarray  # [S, C] ρ_c(t) to the last step
    selectivity: np.ndarray  # [S, C]
    preferred: np.ndarray  # [S, C] the class with the largest mean response
    saturated_share: np.ndarray  # [S, C]
    dead: np.ndarray  # [S, C] bool
    constant: np.ndarray  # [S, C] bool
    probes: list[ProbeResult | None]  # [S]: at the probed steps (`probed`), None elsewhere
    activity: str  # "a" or "|a|": what selectivity averages
    saturates: bool = True  # a bounded activation (tanh, sigmoid): saturated channels are flagged
    nonfinite: np.ndarray | None = None  # [S] bool: steps whose activations held NaN or inf (not measured: NaN)
    control: ProbeResult | None = None  # the probe at the last step fit on shuffled labels: what it finds in nothing

    @property
    def progress(self) -> np.ndarray:
        return ch.progress(self.correlation)

    def settle(self, level: float) -> list[int | None]:
        return ch.settle_steps(self.steps, self.progress, level)

    @property
    def probe_accuracy(self) -> np.ndarray:
        """[S] held-out accuracy of the linear probe, NaN at steps not probed."""
        return np.asarray([p.accuracy if p is not None else np.nan for p in self.probes])

    def flags(self) -> list[str]:
        """Dead, constant-but-not-dead and saturated channels at the last stored step, by name; only that the
        layer is non-finite when it is at the last step."""
        bad = self.nonfinite if self.nonfinite is not None else np.zeros(len(self.steps), bool)
        if bad.any():
            where = f"non-finite from step {int(self.steps[np.argmax(bad)])} ({int(bad.sum())} of {len(bad)} stored steps)"
            if bad[-1]:
                return [where]
        out = [where] if bad.any() else []
        dead, const = self.dead[-1], self.constant[-1] & ~self.dead[-1]
        sat = (self.saturated_share[-1] > ch.SATURATED_SHARE) & self.saturates
        for word, mask in (("dead", dead), ("constant", const), ("saturated", sat)):
            if mask.any():
                out.append(f"{word} channels: {', '.join(ch.named(self.layer, mask))} "
                           f"({int(mask.sum())} of {len(mask)})")
        return out

    def unchanged(self) -> bool:
        """Every channel responds at the end as at the start (ρ(first, last) >= 1 - MIN_CHANGE)."""
        rho = self.correlation[0]
        return bool(np.all(np.isfinite(rho)) and np.all(rho >= 1 - ch.MIN_CHANGE))


@dataclasses.dataclass
class RunMeasures:
    steps: np.ndarray
    measure_set: str  # in words
    n_fit: int
    n_eval: int
    layers: dict[str, LayerMeasures]
    input_probe: ProbeResult  # the same probe on the raw pixels: the depth-0 reference
    logits_probe: list[ProbeResult | None]  # [S] on the model's logits
    probed: np.ndarray  # [S] bool: the steps with linear probes
    num_classes: int = 10


def measure_run(run: Run, layers: list[str] | None = None, n: int = MEASURE_IMAGES, model: nnx.Module | None = None,
                log: Callable[[str], None] = lambda s: None) -> RunMeasures:
    """Runs the measures of the module docs; raises SnapshotError when the run cannot be re-run."""
    snaps = Snapshots(run, model)
    data: MeasureSet = measure_set(run, n)
    layers = list(layers or run.layers)
    fit, held = split_balanced(data.labels)
    k = data.num_classes
    steps = np.asarray(snaps.steps)
    probed = np.zeros(len(steps), bool)
    probed[probe_positions(len(steps))] = True

    def probe(x: np.ndarray, at: int = -1) -> ProbeResult | None:
        if not probed[at] or not np.isfinite(x).all():  # non-finite features are not probed (None, marked)
            return None
        return linear_probe(x[fit], data.labels[fit], x[held], data.labels[held], k)

    nonneg = {n_: run.activation_name(n_) in ch.NONNEGATIVE and run.layer_stage(n_) != PRE_ACTIVATION
              for n_ in layers}
    log(f"measures: {len(steps)} stored steps x {data.rule}; linear probes fit on {len(fit)}, evaluated on "
        f"{len(held)}")
    last = snaps.forward(int(steps[-1]), data.images)  # the end every correlation is to
    final = last[1]
    rows: dict[str, dict[str, list]] = {n_: {k_: [] for k_ in ("rho", "si", "pref", "sat", "dead", "const", "probe",
                                                               "bad")} for n_ in layers}
    logits_probe = []
    for i, s in enumerate(steps):
        logits, acts = last if i == len(steps) - 1 else snaps.forward(int(s), data.images)
        logits_probe.append(probe(logits, i))
        for name in layers:
            a, r = acts[name], rows[name]
            r["bad"].append(not (np.isfinite(a).all() and np.isfinite(final[name]).all()))
            if r["bad"][-1]:  # excluded, marked: NaN measures, no probe, no channel called dead or constant
                c = a.shape[-1]
                for key, value in (("rho", np.nan), ("si", np.nan), ("pref", -1), ("sat", np.nan), ("dead", False),
                                   ("const", False)):
                    r[key].append(np.full(c, value))
                r["probe"].append(None)
                continue
            r["rho"].append(ch.correlation(a, final[name]))
            means = ch.class_means(ch.unit_responses(a, nonneg[name]), data.labels, k)
            r["si"].append(ch.selectivity(means))
            r["pref"].append(np.argmax(means, 0))
            state = ch.channel_state(a)
            r["sat"].append(state.saturated_share)
            r["dead"].append(state.dead)
            r["const"].append(state.constant)
            r["probe"].append(probe(a, i))
        if probed[i]:
            log(f"  step {int(s)}: linear probes " + " ".join(
                f"{n_} {p.accuracy:.3f}" if (p := rows[n_]["probe"][-1]) is not None else f"{n_} non-finite"
                for n_ in layers))
    out = {name: LayerMeasures(name, steps, np.stack(r["rho"]), np.stack(r["si"]), np.stack(r["pref"]),
                               np.stack(r["sat"]), np.stack(r["dead"]), np.stack(r["const"]), r["probe"],
                               "a" if nonneg[name] else "|a|",
                               run.activation_name(name) in ch.SATURATING and run.layer_stage(name) != PRE_ACTIVATION,
                               np.asarray(r["bad"], bool))
           for name, r in rows.items()}
    shuffled = np.random.default_rng(CONTROL_SEED).permutation(data.labels[fit])
    for name, l in out.items():  # the control task: the same probe, fit on labels that carry no information
        a = final[name]
        if np.isfinite(a).all():
            l.control = linear_probe(a[fit], shuffled, a[held], data.labels[held], k)
    pixels = data.images.astype(np.float64) / 255.0
    return RunMeasures(steps, data.rule, len(fit), len(held), out, probe(pixels), logits_probe, probed, k)
