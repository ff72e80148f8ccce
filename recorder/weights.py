"""Weight trees as flat `{path: array}` maps: what the run file's `/weights` group stores (docs/run_schema.md)
and what `init_from` loads.

A path names a leaf by its place in the model, `/`-separated: an NNX model's `convs/0/kernel` or
`bn1/mean`, a Linen or plain dict's `params/Conv_0/kernel`. Each leaf has a kind: `Param` (what the optimiser
trains) or `BatchStat` (running statistics); RNG stream state is never stored (it is not a weight).

Sources `init_from` accepts (`read_weights`):

- a run file, `RUN.h5` (its final weights: the last stored step of a completed run) or `RUN.h5@STEP`;
- a NumPy archive, `weights.npz`, whose keys are paths (`np.savez(f, **{"convs/0/kernel": k, ...})`);
- a Flax msgpack file, `weights.msgpack` (`flax.serialization.to_bytes(tree)` of a nested dict of arrays,
  e.g. `nnx.to_pure_dict(nnx.state(model))`), flattened to paths the same way.
"""

from __future__ import annotations

import dataclasses
import zipfile
from pathlib import Path
from typing import Any, Mapping

import jax
import numpy as np
from flax import nnx

from recorder.taps import path_name
from runfile.writer import WeightSpec

PARAM, BATCH_STAT = "Param", "BatchStat"


class WeightsError(ValueError):
    """A weight source that cannot be read, or does not fit the model; the message says why."""


def flat_weights(*trees: Any) -> dict[str, tuple[Any, str]]:
    """`{path: (array, kind)}` of the weights in `trees` (nnx.Module, nnx.State, a tuple of those, or any pytree
    of arrays: all `Param`), in tree order. NNX RNG state is left out."""
    out: dict[str, tuple[Any, str]] = {}
    for tree in trees:
        if isinstance(tree, (tuple, list)) and any(isinstance(t, (nnx.Module, nnx.State)) for t in tree):
            out.update(flat_weights(*tree))  # e.g. (params, model_state)
            continue
        if isinstance(tree, nnx.Module):
            tree = nnx.state(tree)
        if isinstance(tree, nnx.State):
            for path, var in nnx.to_flat_state(tree):
                if isinstance(var, nnx.RngState):
                    continue
                kind = BATCH_STAT if isinstance(var, nnx.BatchStat) else PARAM
                out[path_name(path)] = (var.get_value() if isinstance(var, nnx.Variable) else var, kind)
        else:
            for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
                out[path_name(path)] = (leaf, PARAM)
    return out


def weight_specs(*trees: Any) -> tuple[WeightSpec, ...]:
    return tuple(WeightSpec(p, tuple(np.shape(v)), kind) for p, (v, kind) in flat_weights(*trees).items())


@dataclasses.dataclass(frozen=True)
class LoadedWeights:
    values: dict[str, np.ndarray]
    source: str  # in words: "runs/a.h5 at step 290", "weights.npz"


def read_weights(spec: str) -> LoadedWeights:
    """Reads `RUN.h5[@STEP]`, `FILE.npz` or `FILE.msgpack` (see the module docs) as `{path: array}`."""
    path_text, at, step_text = spec.rpartition("@") if "@" in spec else (spec, "", "")
    path = Path(path_text)
    if at and not step_text.lstrip("-").isdigit():
        raise WeightsError(f"init_from={spec!r}: the part after @ must be a step number")
    if not path.exists():
        raise WeightsError(f"init_from: no file at {path}")
    if path.suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as data:
                return LoadedWeights({k: np.asarray(data[k]) for k in data.files}, str(path))
        except (ValueError, OSError, zipfile.BadZipFile) as e:  # not an archive, or arrays of Python objects
            raise WeightsError(f"init_from: {path} is not a NumPy .npz archive of arrays: {e}") from None
    if path.suffix == ".msgpack":
        from flax import serialization

        try:
            tree = serialization.msgpack_restore(path.read_bytes())
        except Exception as e:  # msgpack raises its own types for damaged input
            raise WeightsError(f"init_from: {path} is not a Flax msgpack file: {e}") from None
        return LoadedWeights({p: np.asarray(v) for p, (v, _) in flat_weights(tree).items()}, str(path))
    return _from_run(path, int(step_text) if at else None)


def _from_run(path: Path, step: int | None) -> LoadedWeights:
    from runfile.reader import RunFileError, open_run

    try:
        with open_run(path) as run:
            stored = run.weight_steps
            if not len(stored):
                raise WeightsError(f"init_from: {path} stores no weights (recorded before schema version 5, or "
                                   "by a loop that did not pass weights= to the Recorder)")
            if step is None:
                if run.status != "completed" or int(stored[-1]) != run.last_step():
                    raise WeightsError(f"init_from: {path} has no final weights ({run.describe_status()}); stored "
                                       f"steps: {', '.join(map(str, stored))}; name one as {path}@STEP")
                step = int(stored[-1])
            if step not in stored:
                raise WeightsError(f"init_from: {path} stores weights at steps {', '.join(map(str, stored))}, "
                                   f"not at {step}")
            return LoadedWeights(run.weights(step), f"{path} at step {step}")
    except (RunFileError, OSError) as e:
        raise WeightsError(f"init_from: cannot read {path}: {e}") from None


@dataclasses.dataclass(frozen=True)
class Assignment:
    """What loading a source into a model did: the new values, and the head left to its fresh initialisation."""

    values: dict[str, np.ndarray]
    reinitialised: tuple[str, ...]  # paths of the re-initialised head
    note: str  # one line, for the log and the run file


def match_weights(target: Mapping[str, tuple[Any, str]], loaded: LoadedWeights, head: str | None) -> Assignment:
    """Assigns `loaded` to the model whose weights are `target` (`flat_weights`). Every path must be present
    with its shape, except the head's (`head`, the module path of the output layer): when its shapes differ
    (another class count) it keeps its fresh initialisation, and the note says so. Anything else that does not
    fit raises WeightsError listing what."""
    source = loaded.values
    missing = [p for p in target if p not in source]
    wrong = [p for p in target if p in source and tuple(np.shape(source[p])) != tuple(np.shape(target[p][0]))]
    in_head = lambda p: head is not None and p.startswith(head + "/")
    reinit = [p for p in target if in_head(p) and (p in missing or p in wrong)]
    if reinit and not all(p in wrong for p in reinit):
        reinit = []  # a head that is missing altogether is an architecture mismatch, not a new class count
    missing = [p for p in missing if p not in reinit]
    wrong = [p for p in wrong if p not in reinit]
    unused = [p for p in source if p not in target]
    if missing or wrong or unused:
        parts = []
        if missing:
            parts.append(f"missing from the source: {_few(missing)}")
        if wrong:
            parts.append("shapes differ: " + _few([f"{p} {tuple(np.shape(source[p]))} in the source, "
                                                   f"{tuple(np.shape(target[p][0]))} here" for p in wrong]))
        if unused:
            parts.append(f"not in this model: {_few(unused)}")
        raise WeightsError(f"init_from: {loaded.source} does not fit this model's architecture: {'; '.join(parts)}")
    values = {p: np.asarray(source[p], np.asarray(target[p][0]).dtype) for p in target if p not in reinit}
    note = f"initialised from {loaded.source}"
    if reinit:
        shapes = ", ".join(f"{p} {tuple(np.shape(source[p]))} -> {tuple(np.shape(target[p][0]))}" for p in reinit)
        note += (f"; head {head!r} re-initialised: {np.shape(source[reinit[0]])[-1]} outputs in the source, "
                 f"{np.shape(target[reinit[0]][0])[-1]} here ({shapes})")
    return Assignment(values, tuple(reinit), note)


def _few(items: list[str], n: int = 6) -> str:
    return ", ".join(items[:n]) + (f" and {len(items) - n} more" if len(items) > n else "")


def assign(model: nnx.Module, values: Mapping[str, np.ndarray]) -> None:
    """Writes `values` (`{path: array}`, as from `match_weights`) into the model's variables in place."""
    state = nnx.state(model)
    for path, var in nnx.to_flat_state(state):
        key = path_name(path)
        if key in values:
            var.set_value(jax.numpy.asarray(values[key]))
    nnx.update(model, state)
