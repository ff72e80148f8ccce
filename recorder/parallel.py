"""Data parallelism on JAX's own machinery: a 1-D device mesh, shardings, and where each array lives.

With `devices=N` the built-in loop builds a `("data",)` mesh of N devices with `jax.make_mesh`. Parameters,
optimizer state, the model's other state and the data set are replicated on every device; each training
batch is sharded along `data` (each device gathers and processes B/N images); the very same jitted step
runs on it: XLA's SPMD partitioner inserts the all-reduce of the gradients (the loss is a mean over the
global batch), and BatchNorm's batch statistics are over the global batch, as on one device. No pmap, no
collective written by hand. Probe and analysis images are replicated, so the recorded activations come back
replicated and the writer reads them without any collective.

On the CPU, N host devices come from `jax_num_cpu_devices`, which must be set before JAX starts
(`use_host_devices`; the CLI does it for `--set devices=N`).

**Several processes** (`start_processes`: `jax.distributed.initialize`, gloo collectives on the CPU): the mesh
spans every process's devices (`devices` counts them all). Every process loads the same data and runs the
same loop; each feeds only its own rows of the same deterministic global batch
(`jax.make_array_from_process_local_data`); replicated arrays are built from the value every process holds
(`jax.make_array_from_callback`). Only process 0 creates and writes the run file; the others write through a
`DiscardingWriter`, so the loops stay in step. Host copies of replicated results come from the process's own
replica (`host`), never through a collective, and the writer thread runs none. Decisions that end the loop
early (a non-finite value, Ctrl-C or SIGTERM to any one process) are agreed by all processes every
`SYNC_EVERY` steps (`gather`), on the main thread, so all of them stop, checkpoint and close at the same step.
"""

from __future__ import annotations

import signal
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

AXIS = "data"
SYNC_EVERY = 10  # steps between the processes' agreements on stopping early


def host(x: Any) -> Any:
    """A numpy copy of `x`; for an array spread over processes, this process's own replica (no collective)."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        return np.asarray(x.addressable_data(0))
    return np.asarray(x)


def processes() -> int:
    return jax.process_count()


def is_primary() -> bool:
    """Whether this is process 0, the one that writes the run file (always, with one process)."""
    return jax.process_index() == 0


def start_processes(coordinator: str, num_processes: int, process_id: int, devices: int) -> None:
    """Joins a multi-process run before JAX starts: gloo collectives on the CPU, `devices / num_processes`
    host devices here, then `jax.distributed.initialize`."""
    if num_processes < 2:
        return
    if not 0 <= process_id < num_processes:
        raise ValueError(f"process id {process_id} is not in 0..{num_processes - 1}")
    if devices % num_processes:
        raise ValueError(f"devices={devices} does not divide over {num_processes} processes")
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    use_host_devices(max(devices // num_processes, 1))
    jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes, process_id=process_id)


def gather(values: Any) -> np.ndarray:
    """Every process's `values` (a few integers), stacked: [processes, len(values)] (every process must call
    it at the same point)."""
    values = np.asarray(values, np.int64).reshape(1, -1)
    if processes() == 1:
        return values
    return np.asarray(multihost_utils.process_allgather(values[0])).reshape(processes(), -1)


def from_primary(flag: bool) -> bool:
    """Process 0's `flag` on every process (every process must call it at the same point): decisions that
    depend on the run file, which only process 0 has written."""
    return bool(gather([flag])[0, 0])


def leave_processes() -> None:
    """Leaves a multi-process run (JAX's shutdown barrier, which every process must reach) with Ctrl-C
    ignored: a second Ctrl-C arriving there would fail the barrier and abort every process."""
    if not jax.distributed.is_initialized():
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        jax.distributed.shutdown()
    finally:
        signal.signal(signal.SIGINT, previous)


def barrier(name: str) -> None:
    if processes() > 1:
        multihost_utils.sync_global_devices(name)


class Placement:
    """Where arrays go: `replicated(x)` on every device of the mesh, `batch(x)` split along its first axis."""

    def __init__(self, mesh: Mesh | None):
        self.mesh = mesh
        self.devices = 1 if mesh is None else mesh.size
        self.batch_sharding = None if mesh is None else NamedSharding(mesh, PartitionSpec(AXIS))
        self._replicated = None if mesh is None else NamedSharding(mesh, PartitionSpec())

    def replicated(self, tree: Any) -> Any:
        if self.mesh is None:
            return jax.device_put(tree)
        if processes() == 1:
            return jax.device_put(tree, self._replicated)
        return jax.tree.map(self._global, tree)

    def argument(self, x: np.ndarray) -> Any:
        """A small host array given at every call (a block's plan), replicated. One device: left on the host,
        copied in at dispatch (on the CPU backend 10 µs a call, against 31 µs for `device_put` and a dispatch
        with the put array of 77 µs in all, measured)."""
        return x if self.mesh is None else self.replicated(x)

    def _global(self, leaf: Any) -> Any:
        """A leaf every process holds, as one array replicated over the whole mesh."""
        if isinstance(leaf, jax.Array) and jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            data = self._global(jax.random.key_data(leaf))
            return jax.random.wrap_key_data(data, impl=jax.random.key_impl(leaf))
        value = host(leaf)
        return jax.make_array_from_callback(value.shape, self._replicated, lambda index: value[index])

    def batch(self, x: np.ndarray) -> Any:
        """A host array split along axis 0 over the mesh (one device: left on the host, copied in at dispatch).
        With several processes each passes the same global `x` and contributes only its own rows."""
        if self.mesh is None:
            return x
        if processes() == 1:
            return jax.device_put(x, self.batch_sharding)
        rows = [index[0] for index in self.batch_sharding.addressable_devices_indices_map(x.shape).values()]
        lo, hi = min(r.start for r in rows), max(r.stop for r in rows)
        return jax.make_array_from_process_local_data(self.batch_sharding, x[lo:hi], x.shape)

    def describe(self) -> str:
        if self.mesh is None:
            return f"one device ({jax.devices()[0].device_kind})"
        kinds = sorted({d.device_kind for d in self.mesh.devices.flat})
        return f"{self.devices} devices ({', '.join(kinds)}), mesh axis '{AXIS}': batches sharded, state replicated"


def data_placement(devices: int, batch_size: int) -> Placement:
    """The placement for `devices` (1: no mesh, the single-device path); raises ValueError with the fix."""
    if devices < 1:
        raise ValueError(f"devices must be >= 1, got {devices}")
    if devices == 1:
        return Placement(None)
    available = jax.device_count()  # over every process
    if devices > available:
        hint = (f"; on the CPU, `--set devices={devices}` through the CLI sets jax_num_cpu_devices, or set "
                f"XLA_FLAGS=--xla_force_host_platform_device_count={devices} before starting Python"
                if jax.default_backend() == "cpu" else "")
        raise ValueError(f"devices={devices} but JAX sees {available} {jax.default_backend()} device(s){hint}")
    if batch_size % devices:
        raise ValueError(f"batch_size {batch_size} does not divide over {devices} devices; use a multiple of "
                         f"{devices} (e.g. {batch_size // devices * devices or devices})")
    # Auto axes: the partitioner follows the inputs' shardings (computation follows data), as one device would
    return Placement(jax.make_mesh((devices,), (AXIS,), (AxisType.Auto,), devices=jax.devices()[:devices]))


def use_host_devices(n: int) -> None:
    """Asks JAX for `n` CPU devices; only possible before its backends start (else a clear error)."""
    if n <= 1:
        return
    try:
        jax.config.update("jax_num_cpu_devices", n)
    except RuntimeError as e:
        raise ValueError(f"devices={n}: JAX has already started with {jax.device_count()} device(s) ({e})") from None
