"""Recorder: records how the conv layers of a model respond to fixed probe images during training, into one
HDF5 file per run (schema: docs/run_schema.md).

Two ways in:
* your own JAX loop: `Capture` (inside your jitted step) + `Recorder` (the file, the writer, the schedule);
  see the README's "Record your own training loop";
* `emergence record` / `record(config, path)`: the built-in loop, itself a client of the same `Recorder`.
"""

from recorder.activations import ACTIVATIONS, get_activation
from recorder.blocks import Block, BlockStep
from recorder.capture import AFTER_NONLINEARITY, PRE_ACTIVATION, Capture, CaptureError
from recorder.config import ConfigError, RunConfig, apply_overrides
from recorder.data import DATASETS, Dataset, DatasetNotFoundError, load_dataset
from recorder.host_memory import keep_freed_memory
from recorder.models import MODELS, build_model, register_model
from recorder.recorder import Probes, Recorder, RecorderError
from recorder.run import RunResult, record
from recorder.taps import Tap, TapKernel, tap
from recorder.train import layer_measures
from recorder.weights import flat_weights

__all__ = [
    "ACTIVATIONS", "AFTER_NONLINEARITY", "Block", "BlockStep", "Capture", "CaptureError", "ConfigError", "DATASETS", "Dataset",
    "DatasetNotFoundError", "MODELS", "PRE_ACTIVATION", "Probes", "Recorder", "RecorderError", "RunConfig",
    "RunResult", "Tap", "TapKernel", "apply_overrides", "build_model", "flat_weights", "get_activation",
    "keep_freed_memory", "layer_measures", "load_dataset", "record", "register_model", "tap",
]
