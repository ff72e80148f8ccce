"""Where the project leans on something no public API offers, a test that fails the day it changes.

- runfile/repair.py clears HDF5's "open for writing" flags itself (h5clear's job, without a subprocess):
  checked byte for byte against Debian's `h5clear -s`, which setup.sh installs with hdf5-tools.
- runfile/reader.py bounds HDF5's SWMR metadata read retries through the C library (h5py has no binding
  for H5Pset_metadata_read_attempts): the library must still be found, and the setting must take.
- recorder/host_memory.py sets glibc's malloc parameters through mallopt(3) over ctypes: with them, memory
  freed and allocated again is not faulted in again; with EMERGENCE_KEEP_FREED_MEMORY=0 it is.
- replay/gif.py writes frames through Pillow's `GifImagePlugin.getdata`: tests/test_replay.py's
  `test_gif_frames_decode_to_exactly_the_rendered_frames` decodes every frame back, pixel for pixel.
"""

import ctypes
import os
import shutil
import subprocess
import sys

import h5py
import pytest

from runfile.reader import METADATA_READ_ATTEMPTS, _hdf5_library, open_swmr
from runfile.repair import clear_open_flags, open_flags

ON_CI = os.environ.get("CI") == "true"
HOST_MEMORY = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "recorder", "host_memory.py")

REALLOCATING = """
import ctypes, importlib.util, resource, sys
spec = importlib.util.spec_from_file_location("host_memory", sys.argv[1])  # the module alone: no JAX, no threads
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
kept = module.keep_freed_memory()
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype, libc.malloc.argtypes, libc.free.argtypes = ctypes.c_void_p, (ctypes.c_size_t,), (ctypes.c_void_p,)
def faults():  # what XLA's CPU runtime does with its buffers every step: malloc, write, free
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    p = libc.malloc(64 * 2**20)
    ctypes.memset(p, 1, 64 * 2**20)
    libc.free(p)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(int(kept), faults(), faults())
"""

KILLED_WRITER = """
import os, sys
import h5py
f = h5py.File(sys.argv[1], "w", libver=("v110", "latest"))
d = f.create_dataset("x", (0, 4), maxshape=(None, 4), chunks=(1, 4), dtype="f4")
f.swmr_mode = True
d.resize((3, 4))
d[:] = 1.5
f.flush()
os._exit(0)  # as a kill leaves it: never closed
"""


def test_clearing_the_open_flags_is_byte_for_byte_what_h5clear_does(tmp_path):
    if shutil.which("h5clear") is None:
        if ON_CI:
            pytest.fail("h5clear is missing: ./setup.sh installs Debian's hdf5-tools for this test")
        pytest.skip("h5clear not installed (./setup.sh installs hdf5-tools)")
    ours, theirs = tmp_path / "ours.h5", tmp_path / "theirs.h5"
    subprocess.run([sys.executable, "-c", KILLED_WRITER, str(ours)], check=True, timeout=60)
    shutil.copy(ours, theirs)
    assert open_flags(ours) != 0  # left open for SWMR writing
    assert clear_open_flags(ours)
    subprocess.run(["h5clear", "-s", str(theirs)], check=True, timeout=60, capture_output=True)
    assert open_flags(ours) == open_flags(theirs) == 0
    assert ours.read_bytes() == theirs.read_bytes()
    with h5py.File(ours, "r") as f:  # a plain (non-SWMR) reader opens it now
        assert f["x"][()].tolist() == [[1.5] * 4] * 3


def test_the_swmr_read_retries_are_bounded_through_the_hdf5_library(tmp_path):
    lib = _hdf5_library()
    assert lib is not None, "libhdf5 was not found in /proc/self/maps: SWMR reads would retry HDF5's default 100 times"
    fapl = h5py.h5p.create(h5py.h5p.FILE_ACCESS)
    attempts = ctypes.c_uint(0)
    assert lib.H5Pset_metadata_read_attempts(ctypes.c_int64(fapl.id), ctypes.c_uint(METADATA_READ_ATTEMPTS)) >= 0
    assert lib.H5Pget_metadata_read_attempts(ctypes.c_int64(fapl.id), ctypes.byref(attempts)) >= 0
    assert attempts.value == METADATA_READ_ATTEMPTS
    path = tmp_path / "r.h5"
    with h5py.File(path, "w", libver="latest") as f:
        f["x"] = [1, 2, 3]
    with open_swmr(path) as f:
        assert f["x"][()].tolist() == [1, 2, 3]
        assert h5py.h5f.ACC_SWMR_READ & f.id.get_intent()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc: Linux only")
def test_kept_freed_memory_is_not_faulted_in_again_and_the_opt_out_restores_glibcs_defaults():
    def run(setting):
        env = {**os.environ, "EMERGENCE_KEEP_FREED_MEMORY": setting}
        done = subprocess.run([sys.executable, "-c", REALLOCATING, HOST_MEMORY], env=env, capture_output=True,
                              text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return [int(v) for v in done.stdout.split()]

    pages = 64 * 2**20 // 4096
    kept, first, second = run("1")
    assert kept == 1
    assert first > pages // 2  # the first time, the heap grows: its pages are new
    assert second < pages // 20  # the second time, the same pages again
    kept, first, second = run("0")
    assert kept == 0
    assert first > pages // 2 and second > pages // 2  # glibc's default: mmapped, unmapped at free, faulted again
