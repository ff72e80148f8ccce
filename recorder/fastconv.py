"""A faster 3×3 'same' convolution on the CPU for layers with very few channels, same numbers as XLA's.

XLA's CPU convolution runs at a few GFLOP/s when Cin·Cout is tiny (learn_to_see's 1→4, 4→4 and 4→8 layers at
batch 1024), and its weight gradient is often the slowest part. Here such a layer becomes one well-shaped
matrix product: the image is cut into row blocks of `wb` output pixels (plus a one-pixel border on each
side), the three input rows each output row needs are laid side by side, and a banded (Toeplitz) matrix built
from the kernel maps them to the block's outputs:

    rows [B, H, W / wb, 3 (wb + 2) Cin]  @  band [3 (wb + 2) Cin, wb Cout]  ->  y [B, H, W, Cout]

The band has 9 Cin Cout non-zeros per column, so this does about (wb + 2) / 3 times the minimal FLOPs, but as
a GEMM with K and N in the tens to hundreds instead of a convolution with N = Cout = 4, which XLA runs several
times faster; its gradients (autodiff through the same gather, matmul and band construction) are GEMMs too.
Measured on the 2-core development machine, forward + backward at batch 1024 (benchmarks/README.md):
28×28 1→4 2.5×, 4→4 2×, 14×14 4→8 2× faster; at Cin·Cout ≥ 64 XLA's own convolution wins, so those layers
keep it.

`conv_general_dilated` has the signature of `jax.lax.conv_general_dilated` and is passed to `nnx.Conv`: it
takes the banded path only where it applies (3×3 kernel, stride 1, 'SAME' padding, no dilation, one group,
NHWC/HWIO, Cin·Cout ≤ MAX_CHANNEL_PRODUCT) and calls XLA's convolution otherwise. Results match
`lax.conv_general_dilated`, values and gradients, to float32 rounding (tests/test_fastconv.py).

Both this path and the custom max-pool (recorder/pooling.py) are CPU speed paths: on a GPU or TPU, cuDNN and
XLA's own kernels are the fast ones. `conv_impl` (a config key, `set_conv_impl`) chooses, process-wide and at
trace time: `auto` (the default) takes them on the CPU backend only, `xla` never, `banded` wherever they
apply.
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

CONV_IMPLS = ("auto", "xla", "banded")
_impl = ["auto"]
MAX_CHANNEL_PRODUCT = 32
MAX_BLOCK = 14  # output pixels per row block: larger blocks waste more FLOPs on the band's zeros
_NHWC = lax.conv_dimension_numbers((1, 1, 1, 1), (1, 1, 1, 1), ("NHWC", "HWIO", "NHWC"))


def set_conv_impl(impl: str) -> None:
    """Chooses the convolution and pooling implementation for functions traced from now on (see the docs)."""
    if impl not in CONV_IMPLS:
        raise ValueError(f"unknown conv_impl {impl!r}; expected one of: {', '.join(CONV_IMPLS)}")
    _impl[0] = impl


def cpu_paths(backend: str | None = None) -> bool:
    """Whether the CPU speed paths are taken under the current `conv_impl` on `backend` (default: JAX's)."""
    impl = _impl[0]
    return impl == "banded" or (impl == "auto" and (backend or jax.default_backend()) == "cpu")


def block_width(width: int) -> int:
    """The largest divisor of `width` not above MAX_BLOCK."""
    return max(d for d in range(1, min(width, MAX_BLOCK) + 1) if width % d == 0)


@functools.lru_cache(maxsize=None)
def _placement(wb: int) -> np.ndarray:
    """[3, wb + 2, wb] 0/1: input column a of a padded block feeds output column o through kernel column dx."""
    p = np.zeros((3, wb + 2, wb), np.float32)
    for dx in range(3):
        p[dx, np.arange(wb) + dx, np.arange(wb)] = 1.0
    return p


def banded_conv3x3(x: jax.Array, w: jax.Array, precision: Any = None) -> jax.Array:
    """3×3 'same' convolution, stride 1: x [B, H, W, Cin], w [3, 3, Cin, Cout] -> [B, H, W, Cout]."""
    b, h, width, cin = x.shape
    cout = w.shape[-1]
    wb = block_width(width)
    nb = width // wb
    band = jnp.einsum("xao,yxic->yaioc", _placement(wb), w, precision=lax.Precision.HIGHEST)
    band = band.reshape(3 * (wb + 2) * cin, wb * cout)  # rows (dy, a, ci), columns (o, co)
    xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))  # [B, H+2, W+2, Cin]
    blocks = jnp.stack([xp[:, :, j * wb : j * wb + wb + 2] for j in range(nb)], axis=2)  # [B, H+2, nb, wb+2, Cin]
    rows = jnp.stack([blocks[:, dy : dy + h] for dy in range(3)], axis=3)  # [B, H, nb, 3, wb+2, Cin]
    rows = rows.reshape(b, h, nb, 3 * (wb + 2) * cin)
    y = jnp.einsum("bhjk,kn->bhjn", rows, band, precision=precision)  # [B, H, nb, wb Cout]
    return y.reshape(b, h, width, cout)


def applies(lhs_shape: Sequence[int], rhs_shape: Sequence[int], window_strides: Sequence[int], padding: Any,
            lhs_dilation: Any, rhs_dilation: Any, dimension_numbers: Any, feature_group_count: int) -> bool:
    """Whether the banded path computes exactly this convolution (and is expected to be faster)."""
    if len(lhs_shape) != 4 or tuple(rhs_shape[:2]) != (3, 3):
        return False
    if tuple(window_strides) != (1, 1) or feature_group_count != 1:
        return False
    if any(d not in (None, (1, 1), [1, 1]) and tuple(d) != (1, 1) for d in (lhs_dilation, rhs_dilation)):
        return False
    if not (padding == "SAME" or (not isinstance(padding, str) and [tuple(p) for p in padding] == [(1, 1), (1, 1)])):
        return False
    dn = lax.conv_dimension_numbers(tuple(lhs_shape), tuple(rhs_shape), dimension_numbers)
    if dn != _NHWC:
        return False
    return rhs_shape[2] * rhs_shape[3] <= MAX_CHANNEL_PRODUCT


def conv_general_dilated(lhs: jax.Array, rhs: jax.Array, window_strides: Sequence[int], padding: Any,
                         lhs_dilation: Any = None, rhs_dilation: Any = None, dimension_numbers: Any = None,
                         feature_group_count: int = 1, batch_group_count: int = 1, precision: Any = None,
                         **kwargs: Any) -> jax.Array:
    """Drop-in for `jax.lax.conv_general_dilated` that takes the banded path where it applies."""
    if cpu_paths() and batch_group_count == 1 and not kwargs.get("preferred_element_type") and applies(
            lhs.shape, rhs.shape, window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers,
            feature_group_count):
        return banded_conv3x3(lhs, rhs, precision)
    return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers,
                                    feature_group_count, batch_group_count, precision, **kwargs)
