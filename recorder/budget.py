"""How many bytes a run will write, and the schedule that fits a byte budget (`budget_mb`)."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from recorder.analysis import ANALYSIS_FRAMES, STAT_NAMES
from recorder.config import ConfigError
from recorder.plan import RunPlan, frame_bytes
from recorder.recorder import Recorder
from recorder.schedule import recorded_steps, snapshot_steps
from recorder.weights import weight_specs
from runfile.writer import WeightSpec


LARGE_FILE_BYTES = 2 * 1024**3


def weight_bytes(specs: Sequence[WeightSpec]) -> int:
    """Bytes of one stored copy of the weights (float32)."""
    return sum(4 * int(np.prod(s.shape)) for s in specs)


def projected_bytes(rec: Recorder, weight_rows: int = 2) -> int:
    """An upper bound of the run file's size before compression (`weight_rows`: steps with stored weights)."""
    layout = rec.layout
    frame = frame_bytes(layout.layers, len(layout.probe_labels), layout.dtype, layout.num_classes)
    total = len(rec.frame_steps) * frame + weight_rows * weight_bytes(layout.weights)
    if layout.analysis is not None:
        n = len(layout.analysis.indices)
        total += len(rec.analysis_steps) * len(layout.layers) * 4 * (n * (n + 1) // 2 + len(layout.analysis.stat_names))
    return total


def fitting_advice(plan: RunPlan, free: float) -> str:
    """What to do when a run may not fit in `free` bytes, in words."""
    budget = int(free / 1e6 * 0.8)  # room for the checkpoints and HDF5's own metadata
    try:
        budget_schedule(plan, budget)
    except ConfigError:
        return "even two frames would not fit: free some space, or analyse fewer images (--set analysis_probes=32)"
    return f"--set budget_mb={budget} picks a frame schedule that fits"


def budget_schedule(plan: RunPlan, budget_mb: float) -> tuple[str, str]:
    """(schedule, explanation): the densest frame schedule whose run file fits `budget_mb` before compression:
    every step if that fits, else the most log-spaced frames (dense early, where features change fastest)
    that do. The analysis rows (at most ANALYSIS_FRAMES + 1) and the stored weights are counted first."""
    c, cap = plan.config, plan.capture
    frame = frame_bytes(cap.layers, len(plan.probe_idx), c.dtype, cap.num_classes)
    weights = weight_specs(RunPlan.weights(plan.fns.init_state))
    fixed = len(snapshot_steps(c.snapshots, plan.total)) * weight_bytes(weights)
    if plan.analysis_idx is not None:
        n = len(plan.analysis_idx)
        fixed += (ANALYSIS_FRAMES + 1) * len(cap.layers) * 4 * (n * (n + 1) // 2 + len(STAT_NAMES))
    budget = budget_mb * 1e6
    fits = int((budget - fixed) // frame)
    need = f"{frame / 1e6:.3f} MB a frame, {fixed / 1e6:.1f} MB of analysis and weights"
    if fits >= plan.total + 1:
        return "every", f"budget_mb={budget_mb:g}: every step fits ({plan.total + 1} frames, {need})"
    if fits < 2:
        raise ConfigError(f"budget_mb={budget_mb:g} is too small: {need}, so even 2 frames need "
                          f"{(fixed + 2 * frame) / 1e6:.1f} MB; raise it or record fewer probes")
    steps = recorded_steps(f"log:{fits}", plan.total)
    while len(steps) > fits:  # rounding of log-spaced steps never adds any, but be exact
        fits -= 1
        steps = recorded_steps(f"log:{fits}", plan.total)
    return f"log:{fits}", (f"budget_mb={budget_mb:g}: {len(steps)} log-spaced frames of {plan.total + 1} steps "
                           f"fit ({need}; at most {(fixed + len(steps) * frame) / 1e6:.1f} MB before compression)")
