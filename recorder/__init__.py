"""Recorder: a jitted Flax NNX + Optax training loop that records every tapped conv layer on fixed
probe images at every step into one HDF5 file per run (schema: docs/run_schema.md).

To record your own NNX model, call `tap(self, "name", y)` right after each nonlinearity you want to see
and register a builder in `recorder.models.MODELS` (see the README).
"""

from recorder.activations import ACTIVATIONS, get_activation
from recorder.config import ConfigError, RunConfig, apply_overrides
from recorder.data import DATASETS, Dataset, DatasetNotFoundError, load_dataset
from recorder.models import MODELS, build_model, register_model
from recorder.run import RunResult, record
from recorder.taps import Tap, TapKernel, tap

__all__ = [
    "ACTIVATIONS", "ConfigError", "DATASETS", "Dataset", "DatasetNotFoundError", "MODELS", "RunConfig",
    "RunResult", "Tap", "TapKernel", "apply_overrides", "build_model", "get_activation", "load_dataset",
    "record", "register_model", "tap",
]
