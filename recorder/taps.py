"""The marker call that makes a layer's output recordable.

A model marks a value with `tap(self, "conv1", y)` right after the nonlinearity. Under the hood this is
Flax NNX's own `Module.sow` into a dedicated `Intermediate` subclass, so the values leave the jitted step as
ordinary outputs of `nnx.capture` (no host callbacks, nothing stored on the module).

Passing `kernel=self.conv1.kernel` as well lets the recorder store that layer's weights with each frame
(used for filter pictures).

`tap` sows only inside `capture_taps` (what the recorder's captures use); anywhere else, a loss function
calling the model as usual for instance, it returns the value and does nothing: no state is added to the
module, and Flax's warning about `sow` outside `nnx.capture` does not apply.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any, Iterator, Sequence

import jax
from flax import nnx


class Tap(nnx.Intermediate):
    """Activations marked for recording (after the nonlinearity)."""


class TapKernel(nnx.Intermediate):
    """The kernel of a tapped layer, captured next to its activation."""


_order = threading.local()
_capturing = threading.local()
KERNEL_SUFFIX = ":kernel"


@contextlib.contextmanager
def capturing() -> Iterator[None]:
    """While (trace-time) active, `tap` sows its values for `nnx.capture` to collect."""
    before = getattr(_capturing, "on", False)
    _capturing.on = True
    try:
        yield
    finally:
        _capturing.on = before


def capture_taps(model: nnx.Module, *extra: type, **kwargs: object) -> object:
    """`nnx.capture(model, Tap, TapKernel, *extra, **kwargs)` with `tap` switched on: call it like the model."""
    forward = nnx.capture(model, Tap, TapKernel, *extra, **kwargs)

    def call(*args: object, **kw: object) -> object:
        with capturing():
            return forward(*args, **kw)

    return call


def tap(module: nnx.Module, name: str, value: jax.Array, kernel: nnx.Param | jax.Array | None = None,
        source: nnx.Module | None = None) -> jax.Array:
    """Marks `value` (shape [B, H, W, C]) as the recorded output of layer `name`; returns it unchanged.

    `name` must be unique in the model and must not equal an attribute of `module` (NNX keeps sown
    values beside the module's own attributes). `source` is the submodule whose parameters computed the
    value, when no single `kernel` says so (a residual block): `freeze=NAME` then freezes that submodule.
    """
    if not getattr(_capturing, "on", False):
        return value
    module.sow(Tap, name, value)
    if kernel is not None:
        # Captured values of all types share one namespace per module, hence the suffix.
        module.sow(TapKernel, name + KERNEL_SUFFIX, kernel[...] if isinstance(kernel, nnx.Variable) else kernel)
    log = getattr(_order, "calls", None)
    if log is not None:  # trace-time only: remembers the call order, and which parameters made the value
        log.append((module, name, source if source is not None else kernel))
    return value


def path_name(path: Sequence[Any]) -> str:
    """A path as one `/`-separated name: NNX's (attribute names, list indices) or a JAX key path's entries
    (`DictKey`, `SequenceKey`, `GetAttrKey`), so `convs/0/kernel` either way."""
    return "/".join(str(getattr(p, "key", getattr(p, "idx", getattr(p, "name", p)))) for p in path)


@contextlib.contextmanager
def call_order() -> Iterator[list[tuple[nnx.Module, str, object]]]:
    """Collects (module, tap name, source module or kernel) in the order a forward pass calls `tap` (while
    tracing)."""
    _order.calls = []
    try:
        yield _order.calls
    finally:
        _order.calls = None


def tap_sources(model: nnx.Module, calls: list[tuple[nnx.Module, str, object]]) -> dict[str, str | None]:
    """{full tap name: path of the module whose parameters computed it}, in call order: the tap's `source`, or
    the module holding its `kernel`; None when the tap names neither (or a kernel that is not a variable)."""
    paths = {id(m): path_name(path) for path, m in nnx.iter_modules(model)}
    owners = {}
    for path, m in nnx.iter_modules(model):
        for value in vars(m).values():
            if isinstance(value, nnx.Variable):
                owners[id(value)] = path_name(path)
    out: dict[str, str | None] = {}
    for module, name, source in calls:
        full = "/".join(p for p in (paths[id(module)], name) if p)
        if full not in out:
            out[full] = paths.get(id(source)) if isinstance(source, nnx.Module) else owners.get(id(source))
    return out


def flatten_taps(state: nnx.State) -> dict[str, jax.Array]:
    """Turns a captured `Tap`/`TapKernel` state into {layer name: array}.

    A tap inside a nested module is named by its module path, e.g. `block1/conv`.
    """
    out: dict[str, jax.Array] = {}
    for path, var in nnx.to_flat_state(state):
        name = path_name(path).removesuffix(KERNEL_SUFFIX)
        values = var.get_value() if isinstance(var, nnx.Variable) else var
        if isinstance(values, tuple):
            if len(values) != 1:
                raise ValueError(
                    f"layer {name!r} was tapped {len(values)} times in one forward pass; "
                    "each tap name must be used once per call"
                )
            values = values[0]
        out[name] = values
    return out
