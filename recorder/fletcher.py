"""HDF5's Fletcher-32 of an array's bytes, computed on the device inside the jitted step.

An uncompressed chunk's checksum (runfile/checksum.py) is a pass over every byte of the frame, on the
writer's thread: about 40 µs of host CPU for a 147 kB frame, a fifth of what recording a frame costs the host
beside a GPU (benchmarks/host_path.py). Beside a GPU or TPU the device computes it for almost nothing while the
frame is still in its memory, and lays each array's rows out as the chunks the file stores, its bytes then the
checksum's 4 (`recorder.blocks.CHUNKS`); the writer writes them as they are (`RunWriter.write_frames(...,
chunks=)`): no checksum and no copy on the host. The bytes are those the file stores: the array after its cast
to the stored dtype, in the host's (little-endian) order.

The closed form of runfile/checksum.py, in 32-bit integers: with N big-endian 16-bit words w_k (k = 0..N-1),
S = Σ w_k and T = Σ (N − k) w_k; both sums are 0 when every word is 0 and otherwise ((x − 1) mod 65535) + 1.
Every factor is reduced modulo 65535 first, so a product is below 65535² < 2³², and words are summed in groups
of GROUP before the next reduction, so no sum passes 2³². On the CPU backend XLA takes 7x as long as HDF5's
own function (157 against 22 µs for 108 kB, this 2-core machine), so there the host computes it
(`on_device`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

MOD = 65535
GROUP = 1 << 15  # words summed before a reduction: GROUP * (MOD - 1) < 2**32


def _sum_mod(x: jax.Array) -> jax.Array:
    """Σ x mod MOD for uint32 x < MOD with a length a multiple of GROUP."""
    partial = jnp.sum(x.reshape(-1, GROUP), axis=1, dtype=jnp.uint32) % MOD
    return jnp.sum(partial, dtype=jnp.uint32) % MOD  # fewer than 65,537 groups: arrays below 4 GB


def stored_bytes(x: jax.Array) -> jax.Array:
    """`x`'s bytes in memory order (C order, little-endian), uint8 [x.nbytes]: what a file stores of it."""
    return jax.lax.bitcast_convert_type(jnp.ravel(x), jnp.uint8).reshape(-1)


def fletcher32(x: jax.Array) -> jax.Array:
    """The Fletcher-32 of `x`'s bytes (C order, little-endian) as HDF5's filter computes it: uint32 []."""
    return fletcher32_of_bytes(stored_bytes(x))


def fletcher32_of_bytes(raw: jax.Array) -> jax.Array:
    """The Fletcher-32 of the bytes `raw` (uint8 [N]), as `fletcher32`."""
    if raw.size % 2:  # a lone last byte is the high byte of a last word
        raw = jnp.concatenate([raw, jnp.zeros((1,), jnp.uint8)])
    words = (raw[0::2].astype(jnp.uint32) << 8) | raw[1::2].astype(jnp.uint32)
    n = words.size
    pad = -n % GROUP
    padded = jnp.concatenate([words, jnp.zeros((pad,), jnp.uint32)]) if pad else words
    reduced = padded % MOD
    weights = (jnp.uint32(n) - jnp.arange(n + pad, dtype=jnp.uint32)) % MOD  # padding's words are 0 anyway
    s, t = _sum_mod(reduced), _sum_mod((reduced * weights) % MOD)
    s, t = jnp.where(s == 0, MOD, s), jnp.where(t == 0, MOD, t)
    return jnp.where(jnp.any(words != 0), (t << 16) | s, jnp.uint32(0))


def on_device(setting: str, compression: str, backend: str | None = None) -> bool:
    """Whether the frames' checksums are computed on the device: only for uncompressed frames (a deflated
    chunk's checksum covers its compressed bytes); `setting` auto: beside a GPU or TPU; device; host."""
    if compression != "none" or setting == "host":
        return False
    return setting == "device" or (backend or jax.default_backend()) != "cpu"
