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
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

AXIS = "data"


class Placement:
    """Where arrays go: `replicated(x)` on every device of the mesh, `batch(x)` split along its first axis."""

    def __init__(self, mesh: Mesh | None):
        self.mesh = mesh
        self.devices = 1 if mesh is None else mesh.size
        self.batch_sharding = None if mesh is None else NamedSharding(mesh, PartitionSpec(AXIS))
        self._replicated = None if mesh is None else NamedSharding(mesh, PartitionSpec())

    def replicated(self, tree: Any) -> Any:
        return jax.device_put(tree) if self.mesh is None else jax.device_put(tree, self._replicated)

    def batch(self, x: np.ndarray) -> Any:
        """A host array split along axis 0 over the mesh (one device: left on the host, copied in at dispatch)."""
        return x if self.mesh is None else jax.device_put(x, self.batch_sharding)

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
    available = jax.device_count()
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
