"""The run file's constants, stated once: the writer writes them, every reader checks against them.

`docs/run_schema.md` is the document; `tests/test_schema_doc.py` checks it against a freshly written file
in both directions and finds the version here.
"""

from __future__ import annotations

SCHEMA = "emergence.run"  # the root's `schema` attribute
SCHEMA_VERSION = 7  # what the writer writes; readers read every version in SUPPORTED_VERSIONS
SUPPORTED_VERSIONS = (1, 2, 3, 4, 5, 6, 7)  # 2 added /analysis; 3 /scalars, stage, interrupted; 4 the writer's
# identity; 5 /weights; 6 the layers' channels_json (channel subsets); 7 Fletcher-32 checksums on every chunk

# the oldest file format that SWMR allows: HDF5 1.10 readers (Debian 12, MATLAB, older h5py) read every dataset
LIBVER = ("v110", "latest")
STATUS_BYTES = 16
MESSAGE_BYTES = 4096
STATUSES = ("running", "completed", "failed", "interrupted", "diverged", "killed")  # as stored
STATES = ("recording", "completed", "failed", "interrupted", "diverged", "killed")  # as readers report them
COMPRESSIONS = ("none", "gzip", "lzf", "zstd")
MAX_SCALARS = 256  # names of extra scalar series a run can log
SCALAR_NAME_BYTES = 64

# a layer's `stage` attribute: what its recorded values are
AFTER_NONLINEARITY = "after the nonlinearity"  # also the stage of every layer of a version 1 or 2 file
PRE_ACTIVATION = "pre-activation"  # a conv layer's own output: what is recorded when the model marks nothing
STAGES = (AFTER_NONLINEARITY, PRE_ACTIVATION)

UNKNOWN_INDEX = -1  # /probes/indices of a probe whose place in its split was not given (Recorder API)
KERNEL_CHOICES = ("first", "all", "none")  # which layers' kernels a run records (the `kernels` config key)
SATURATION = 0.99  # |a| above this counts as saturated (the analysis stat `saturated_fraction`)
