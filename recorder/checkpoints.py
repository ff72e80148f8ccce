"""Checkpoints of a run's training state beside its run file (`RUN.ckpt/<step>/`), with orbax-checkpoint.

A checkpoint at step S holds the `TrainState` after update S: parameters, optimizer state and the model's
other state (BatchNorm statistics, RNG stream keys and counters). The data order needs nothing more: the
shuffle of every epoch is a pure function of (seed, epoch) (recorder/plan.py), so the step says where the
data stream stands. Next to the state, a small JSON record names the step and the run's config.

Saving copies the state to the host (a checkpoint is taken only once the run file holds every row up to S,
so that resuming from S never leaves a gap: the built-in loop queues its periodic checkpoints behind the
rows on the writer thread, `Recorder.after_written`) and writes it on orbax's background thread; a checkpoint exists only once orbax has finalised it, so a kill during a save leaves the
previous one. The newest `keep` are kept.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from recorder.parallel import host


class CheckpointError(ValueError):
    """A checkpoint does not belong to this run or cannot be restored; the message says which and why."""


def checkpoint_dir(run_path: str | Path) -> Path:
    """Where the checkpoints of the run file `run_path` live: beside it, `NAME.ckpt`."""
    run_path = Path(run_path)
    return run_path.with_name(run_path.stem + ".ckpt")


def _is_key(leaf: Any) -> bool:
    return isinstance(leaf, jax.Array) and jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key)


class Checkpoints:
    """The checkpoints of one run. `like` is a state of the run's structure (the initial state): it gives
    the tree, shapes and dtypes that saved states must have and restored ones get."""

    def __init__(self, run_path: str | Path, like: Any, identity: dict[str, Any], keep: int = 3):
        self.directory = checkpoint_dir(run_path).absolute()
        self.identity = dict(identity)
        leaves, self._treedef = jax.tree.flatten(like)
        self._keys = {i: jax.random.key_impl(leaf) for i, leaf in enumerate(leaves) if _is_key(leaf)}
        self._like = {str(i): (np.shape(v), v.dtype) for i, v in enumerate(self._host(leaves))}  # shape, dtype
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=True, create=True)
        self._last_saved: int | None = None
        self._manager = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "meta"))

    def _host(self, leaves: list[Any]) -> list[np.ndarray]:
        """Leaves as numpy arrays (typed PRNG keys as their raw key data)."""
        return [host(jax.random.key_data(v) if i in self._keys else v) for i, v in enumerate(leaves)]

    def steps(self) -> list[int]:
        """Steps of the finalised checkpoints, ascending."""
        return sorted(self._manager.all_steps())

    def device_copy(self, state: Any) -> list[Any]:
        """The state's leaves copied on the device (typed PRNG keys as their key data), for `save_leaves` on
        another thread: later steps may donate the state's own buffers. No wait. A key's data is copied too:
        `key_data` returns the key's own buffer, which the next step's donation deletes."""
        leaves = jax.tree.leaves(state)
        return [jax.numpy.copy(jax.random.key_data(v) if i in self._keys else v) for i, v in enumerate(leaves)]

    def save(self, step: int, state: Any) -> None:
        """Checkpoints `state` (the state after update `step`); returns once it is on the host. A step already
        saved by this process is not saved again (a stop right after a periodic checkpoint)."""
        self.save_leaves(step, self._host(jax.tree.leaves(state)))

    def save_leaves(self, step: int, leaves: list[np.ndarray]) -> None:
        """`save` of host leaves as `device_copy` lays them out (this process's replica: no collective)."""
        if step == self._last_saved:
            return
        self._last_saved = step
        if len(leaves) != len(self._like):
            raise CheckpointError(f"state to checkpoint has {len(leaves)} arrays, the run's state {len(self._like)}")
        arrays = {str(i): np.asarray(v) for i, v in enumerate(leaves)}
        meta = {**self.identity, "step": int(step)}
        self._manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(arrays),
                                                         meta=ocp.args.JsonSave(meta)), force=True)

    def restore(self, step: int) -> Any:
        """The state checkpointed at `step`, on the default device, checked against this run's identity."""
        if step not in self.steps():
            raise CheckpointError(f"no checkpoint of step {step} in {self.directory}; there are: {self.steps()}")
        meta = self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
        differs = sorted(k for k in self.identity if meta.get(k) != self.identity[k])
        if differs:
            raise CheckpointError(f"checkpoint {self.directory / str(step)} belongs to another run (its "
                                  f"{', '.join(differs)} differ); remove {self.directory} to start over")
        try:
            target = {k: np.zeros(shape, dtype) for k, (shape, dtype) in self._like.items()}  # numpy in, numpy out
            got = self._manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target))).state
        except (ValueError, KeyError, TypeError) as e:
            raise CheckpointError(f"checkpoint {self.directory / str(step)} does not fit this run's state: {e}") from None
        leaves = []
        for i in range(len(self._like)):
            value = np.asarray(got[str(i)])
            shape, dtype = self._like[str(i)]
            if value.shape != shape or value.dtype != dtype:
                raise CheckpointError(f"checkpoint {self.directory / str(step)}: array {i} is {value.dtype}"
                                      f"{list(value.shape)}, the run's state needs {dtype}{list(shape)}")
            leaves.append(jax.random.wrap_key_data(value, impl=self._keys[i]) if i in self._keys else jax.device_put(value))
        return jax.tree.unflatten(self._treedef, leaves)

    def wait(self) -> None:
        """Blocks until every save has been finalised."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()

