"""Replay: pixel colours of known values, stamps read back, frame selection, size limits, partial runs."""

import numpy as np
import pytest
from matplotlib import colormaps
from PIL import Image

from conftest import write_run
from replay import font
from replay.animate import LayerFrames
from replay.gif import GifWriter
from replay.grid import GridStyle
from replay.palette import INK, build_palette, value_to_index
from replay.render import ReplayOptions, replay
from replay.scales import ScaleSpec, TopAbs, parse_scale, resolve_scale
from replay.selection import StepRange, parse_indices, parse_step_range, select_frames


def gif_frames(path):
    """Every frame of a GIF as composited RGB [H, W, 3]."""
    out = []
    with Image.open(path) as im:
        for k in range(im.n_frames):
            im.seek(k)
            out.append(np.asarray(im.convert("RGB")))
    return out


def to_index(rgb, palette):
    """RGB pixels back to palette indices (first match); the palettes used here have unique colours."""
    codes = palette.astype(np.int64) @ np.array([1 << 16, 1 << 8, 1])
    lookup = {int(c): i for i, c in reversed(list(enumerate(codes)))}
    flat = rgb.reshape(-1, 3).astype(np.int64) @ np.array([1 << 16, 1 << 8, 1])
    return np.array([lookup[int(c)] for c in flat], np.uint8).reshape(rgb.shape[:2])


def read_step(rgb, frames: LayerFrames):
    stamp = frames.grid.stamp
    ink = (rgb == 0).all(axis=-1)  # INK is pure black
    canvas = np.where(ink, INK, 0).astype(np.uint8)
    text = font.read_text(canvas, stamp.y, stamp.x, len(stamp.step_text(0)), INK, stamp.scale)
    assert text.startswith("STEP "), text
    return int(text[5:])


def test_tanh_zero_is_white_and_the_ends_are_the_colour_map_ends(tmp_path):
    acts = np.zeros((2, 3, 4, 4, 3), np.float32)
    acts[:, :, :, :, 1] = -1.0
    acts[:, :, :, :, 2] = 1.0
    write_run(tmp_path / "r.h5", {"conv1": acts})
    report = replay(tmp_path / "r.h5", tmp_path / "out", ReplayOptions(kernels=False, curves=False))
    assert [a.frames for _, a, _ in report.animations] == [2]
    from runfile.reader import open_run

    with open_run(tmp_path / "r.h5") as run:
        frames = LayerFrames(run, "conv1")
    ends = np.rint(np.array([colormaps["seismic_r"](0.0)[:3], colormaps["seismic_r"](1.0)[:3]]) * 255)
    for rgb in gif_frames(tmp_path / "out" / "conv1.gif"):
        for probe in range(3):
            for channel, colour in ((0, (255, 255, 255)), (1, ends[0]), (2, ends[1])):
                y0, y1, x0, x1 = frames.grid.tile_box(probe, channel)
                tile = rgb[y0:y1, x0:x1]
                assert tile.shape == (16, 16, 3)  # 4x4 maps replicated to the 16x16 input size
                assert (tile == np.asarray(colour, np.uint8)).all(), (probe, channel, tile[0, 0])


def test_nan_is_drawn_magenta_and_counted(tmp_path):
    acts = np.zeros((3, 2, 4, 4, 2), np.float32)
    acts[1:, 0, :, :, 1] = np.nan  # probe 0, channel 1 from frame 1 on: a diverged layer
    acts[2, 1, 0, 0, 0] = np.nan  # and one single value
    write_run(tmp_path / "r.h5", {"conv1": acts})
    report = replay(tmp_path / "r.h5", tmp_path / "out", ReplayOptions(kernels=False, curves=False))
    assert any(note.startswith("conv1: 33 NaN values in 2 of the 3 frames shown, drawn magenta (255, 0, 255)")
               for note in report.notes), report.notes
    from runfile.reader import open_run

    with open_run(tmp_path / "r.h5") as run:
        frames = LayerFrames(run, "conv1")
    rgb = gif_frames(tmp_path / "out" / "conv1.gif")
    y0, y1, x0, x1 = frames.grid.tile_box(0, 1)
    assert (rgb[0][y0:y1, x0:x1] == 255).all()  # frame 0: zeros, white
    assert (rgb[2][y0:y1, x0:x1] == np.array([255, 0, 255], np.uint8)).all()
    y0, y1, x0, x1 = frames.grid.tile_box(1, 0)
    tile = rgb[2][y0:y1, x0:x1]  # one NaN value of a 4x4 map, drawn 4x4 pixels at the 16x16 tile size
    assert (tile == np.array([255, 0, 255], np.uint8)).all(axis=-1).sum() == 16


def test_unbounded_scale_is_the_percentile_of_all_steps_and_fixed(tmp_path):
    rng = np.random.default_rng(0)
    acts = np.maximum(rng.normal(0, 1, (12, 2, 4, 4, 2)), 0).astype(np.float32) * np.arange(1, 13)[:, None, None, None, None]
    write_run(tmp_path / "r.h5", {"conv1": acts}, activation="relu")
    expected = np.percentile(np.abs(acts), 99.9, method="inverted_cdf")  # nearest rank
    chunks = [acts[i : i + 5] for i in range(0, 12, 5)]
    scale = resolve_scale("relu", ScaleSpec(None, "auto"), chunks, (2, 4, 4, 2), 12)
    assert float(scale.hi) == pytest.approx(expected) and float(scale.lo) == -float(scale.hi)
    per_channel = resolve_scale("relu", ScaleSpec(None, "channel"), chunks, (2, 4, 4, 2), 12)
    for c in range(2):
        assert per_channel.hi[c] == pytest.approx(np.percentile(acts[..., c], 99.9, method="inverted_cdf"))
    # the same scale on every frame: a value of S/2 is the same colour in the first and last frame
    from runfile.reader import open_run

    with open_run(tmp_path / "r.h5") as run:
        frames = LayerFrames(run, "conv1")
    assert float(frames.scale.hi) == pytest.approx(expected)
    index = frames.grid.indices(np.full((2, 2, 4, 4, 2), float(scale.hi) / 2, np.float32))
    assert (index == index.flat[0]).all()


def test_relu_bar_is_one_sided_and_tanh_bar_is_not():
    """relu never goes below 0: its bar runs from the centre (white, 0) to the top colour, ticks 0 … S."""
    from replay.grid import BAR_LEVEL_PX, draw_colour_bar
    from replay.palette import CENTRE, N_LEVELS, PAPER

    acts = np.abs(np.random.default_rng(2).normal(0, 1, (3, 1, 4, 4, 2))).astype(np.float32)
    relu = resolve_scale("relu", ScaleSpec(None, "auto"), [acts], (1, 4, 4, 2), 3)
    tanh = resolve_scale("tanh", ScaleSpec(None, "auto"), [acts], (1, 4, 4, 2), 3)
    assert relu.one_sided and "[0, S]" in relu.rule and not tanh.one_sided
    width = N_LEVELS * BAR_LEVEL_PX
    for scale, first in ((relu, CENTRE), (tanh, 0)):
        canvas = np.full((40, width + 40), PAPER, np.uint8)
        draw_colour_bar(canvas, scale, 2, 4)
        row = canvas[3, 4 : 4 + width]
        assert row[0] == first and row[-1] == N_LEVELS - 1 and (np.diff(row.astype(int)) >= 0).all()
    assert len(set(row)) == N_LEVELS  # tanh: every level shown


def test_top_abs_streams_the_exact_percentile():
    rng = np.random.default_rng(1)
    values = rng.standard_cauchy((5000, 3)).astype(np.float32)
    top = TopAbs(per_channel=False, total=values.size)
    for i in range(0, 5000, 700):
        top.add(values[i : i + 700])
    assert float(top.percentile()) == np.percentile(np.abs(values), 99.9, method="inverted_cdf")


def test_scale_overrides():
    assert parse_scale("2.5") == ScaleSpec(None, "fixed", -2.5, 2.5)
    assert parse_scale("conv3=0:4") == ScaleSpec("conv3", "fixed", 0.0, 4.0)
    assert parse_scale("conv2=channel").mode == "channel"
    fixed = resolve_scale("relu", parse_scale("conv3=0:4"), None, (1, 2, 2, 1), 5)
    assert fixed.kind == "sequential" and float(fixed.hi) == 4.0
    with pytest.raises(ValueError, match="LO:HI"):
        parse_scale("conv1=wide")
    with pytest.raises(ValueError, match="empty or non-finite"):
        parse_scale("3:1")


def test_stamp_reads_back_as_the_stored_step(tmp_path):
    steps = [0, 1, 3, 7, 20, 150, 1234]
    acts = np.linspace(-1, 1, len(steps) * 2 * 4 * 4 * 2, dtype=np.float32).reshape(len(steps), 2, 4, 4, 2)
    write_run(tmp_path / "r.h5", {"conv1": acts}, steps=steps)
    replay(tmp_path / "r.h5", tmp_path / "out", ReplayOptions(kernels=False, curves=False))
    from runfile.reader import open_run

    with open_run(tmp_path / "r.h5") as run:
        frames = LayerFrames(run, "conv1")
    assert [read_step(rgb, frames) for rgb in gif_frames(tmp_path / "out" / "conv1.gif")] == steps


def test_frame_selection_follows_every_and_steps(tmp_path):
    acts = np.random.default_rng(2).uniform(-1, 1, (21, 2, 4, 4, 2)).astype(np.float32)
    write_run(tmp_path / "r.h5", {"conv1": acts})
    options = ReplayOptions(every=3, steps=parse_step_range("2:15"), kernels=False, curves=False)
    report = replay(tmp_path / "r.h5", tmp_path / "out", options)
    from runfile.reader import open_run

    with open_run(tmp_path / "r.h5") as run:
        frames = LayerFrames(run, "conv1")
    got = [read_step(rgb, frames) for rgb in gif_frames(tmp_path / "out" / "conv1.gif")]
    assert got == [2, 5, 8, 11, 14, 15]  # every 3rd from the first, and the last
    assert report.animations[0][1].frames == 6
    assert select_frames(np.arange(10), StepRange(), 3).tolist() == [0, 3, 6, 9]
    assert select_frames(np.arange(0, 100, 10), StepRange(25, None), 1).tolist() == [3, 4, 5, 6, 7, 8, 9]
    with pytest.raises(ValueError, match="selects no recorded step"):
        select_frames(np.arange(10), StepRange(50, 60))
    assert parse_indices("0:3,7", 10, "probes") == [0, 1, 2, 7]
    with pytest.raises(ValueError, match="valid probes: 0 to 9"):
        parse_indices("12", 10, "probes")


def test_the_clock_holds_each_gif_and_its_frames_steps_and_no_clock_leaves_it_out(tmp_path):
    import base64
    import json
    import re

    acts = np.random.default_rng(2).uniform(-1, 1, (21, 2, 4, 4, 2)).astype(np.float32)
    write_run(tmp_path / "r.h5", {"conv1": acts}, steps=list(range(0, 42, 2)))
    out = tmp_path / "out"
    replay(tmp_path / "r.h5", out, ReplayOptions(every=3, steps=parse_step_range("4:30"), kernels=False, curves=False))
    file, steps, data = json.loads("[" + re.fullmatch(r"emergenceClock\.add\((.*)\);\n",
                                                      (out / "clock" / "conv1.gif.js").read_text()).group(1) + "]")
    assert file == "conv1.gif" and steps == [4, 10, 16, 22, 28, 30]  # the recorded step of each frame written
    assert base64.b64decode(data) == (out / "conv1.gif").read_bytes()
    assert '<script src="clock/conv1.gif.js"></script>' in (out / "index.html").read_text()
    replay(tmp_path / "r.h5", out, ReplayOptions(kernels=False, curves=False, clock=False))
    assert not (out / "clock").exists() and "<script" not in (out / "index.html").read_text()


def test_max_mb_is_respected_and_the_drop_reported(tmp_path):
    acts = np.random.default_rng(3).uniform(-1, 1, (60, 4, 8, 8, 4)).astype(np.float32)  # noise: compresses badly
    write_run(tmp_path / "r.h5", {"conv1": acts})
    full = replay(tmp_path / "r.h5", tmp_path / "full", ReplayOptions(kernels=False, curves=False))
    full_bytes = full.animations[0][1].bytes
    limit_mb = full_bytes / 3 / 1e6
    report = replay(tmp_path / "r.h5", tmp_path / "out", ReplayOptions(max_mb=limit_mb, kernels=False, curves=False))
    result = report.animations[0][1]
    size = (tmp_path / "out" / "conv1.gif").stat().st_size
    assert size <= limit_mb * 1e6 and size == result.bytes
    assert result.selected == 60 and 2 <= result.frames < 60 and result.dropped == 60 - result.frames
    assert len(gif_frames(tmp_path / "out" / "conv1.gif")) == result.frames
    assert "dropped" in (tmp_path / "out" / "index.html").read_text()


def test_a_run_still_recording_renders_what_is_written(tmp_path):
    acts = np.random.default_rng(4).uniform(-1, 1, (5, 2, 4, 4, 2)).astype(np.float32)
    writer = write_run(tmp_path / "live.h5", {"conv1": acts}, close=False)
    try:
        report = replay(tmp_path / "live.h5", tmp_path / "out", ReplayOptions(kernels=False))
        assert report.animations[0][1].frames == 5
        assert any("recording" in note for note in report.notes)
        assert (tmp_path / "out" / "curves.png").is_file()
        # a frame half written (one layer one row longer, as a killed writer leaves it) is not rendered
        writer._col["layers/conv1/activations"].append(acts[:1])
        writer.flush()
        report = replay(tmp_path / "live.h5", tmp_path / "out2", ReplayOptions(kernels=False, curves=False))
        assert report.animations[0][1].frames == 5
    finally:
        writer.close()


def test_gif_frames_decode_to_exactly_the_rendered_frames(tmp_path):
    rng = np.random.default_rng(5)
    palette = build_palette("diverging")
    frames = [rng.integers(0, 255, (30, 50), dtype=np.uint8)]
    for k in range(6):
        f = frames[-1].copy()
        f[k : k + 4, 10 : 10 + 3 * k] = rng.integers(0, 111, (4, 3 * k))
        frames.append(f)
    frames.append(frames[-1].copy())  # an identical frame stays a frame
    with GifWriter(tmp_path / "x.gif", palette, 50) as gif:
        for f in frames:
            gif.add(f)
    decoded = gif_frames(tmp_path / "x.gif")
    assert len(decoded) == len(frames)
    for f, rgb in zip(frames, decoded):
        np.testing.assert_array_equal(rgb, palette[f])
    with Image.open(tmp_path / "x.gif") as im:
        assert im.info["loop"] == 0 and im.info["duration"] == 50


def test_font_glyphs_are_distinct_and_read_back():
    glyphs = list(font.GLYPHS.values())
    assert len({g.tobytes() for g in glyphs}) == len(glyphs)
    canvas = np.zeros((30, 200), np.uint8)
    font.draw_text(canvas, "Step 0123456789", 3, 2, 7, scale=2)
    assert font.read_text(canvas, 3, 2, 15, 7, scale=2) == "STEP 0123456789"


def test_replay_cli_on_a_recorded_run(tmp_path):
    import subprocess
    import sys

    from conftest import tiny_config
    from recorder.run import record

    record(tiny_config(steps=4), tmp_path / "tiny.h5", show_progress=False)
    out = subprocess.run([sys.executable, "-m", "emergence", "replay", str(tmp_path / "tiny.h5"), "--step", "2",
                          "--probes", "0,1"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    folder = tmp_path / "tiny"
    names = {p.name for p in folder.iterdir()}
    assert {"conv1.gif", "conv2.gif", "curves.png", "conv1_kernels.png", "conv1_kernels.gif", "index.html"} <= names
    assert len(gif_frames(folder / "conv1.gif")) == 5
    assert (folder / "snapshots" / "step2_conv1_probe1.png").is_file()
    page = (folder / "index.html").read_text()
    for name in ("conv1.gif", "conv2.gif", "curves.png", "conv1_kernels.gif", "snapshots/step2_conv2.png"):
        assert f'src="{name}"' in page
    bad = subprocess.run([sys.executable, "-m", "emergence", "replay", str(tmp_path / "tiny.h5"), "--step", "99"],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "--step 99 was not recorded" in bad.stderr
    assert bad.stderr.count("\n") == 1


def test_mp4_has_the_gif_frames(tmp_path):
    ffmpeg = pytest.importorskip("imageio_ffmpeg", reason="MP4 output is optional: pip install 'emergence[video]'")
    import subprocess

    acts = np.random.default_rng(6).uniform(-1, 1, (9, 2, 4, 4, 2)).astype(np.float32)
    write_run(tmp_path / "r.h5", {"conv1": acts})
    report = replay(tmp_path / "r.h5", tmp_path / "out", ReplayOptions(every=2, mp4=True, kernels=False, curves=False))
    animation = report.animations[0][1]
    gif = gif_frames(animation.path)[-1]
    h, w = gif.shape[:2]
    decoded = subprocess.run([ffmpeg.get_ffmpeg_exe(), "-v", "error", "-i", str(animation.mp4), "-f", "rawvideo",
                              "-pix_fmt", "rgb24", "-"], capture_output=True, check=True).stdout
    frames = np.frombuffer(decoded, np.uint8).reshape(-1, h + h % 2, w + w % 2, 3)
    assert len(frames) == animation.frames == 5
    assert np.abs(frames[-1][:h, :w].astype(int) - gif).mean() < 8  # lossy codec, same picture


def test_wide_layers_wrap_into_near_square_blocks_with_every_tile_in_its_place(tmp_path):
    from replay.grid import choose_blocks
    from replay.palette import build_palette, value_to_index

    c = 64
    acts = np.broadcast_to(np.linspace(-1, 1, c, dtype=np.float32), (2, 10, 4, 4, c)).copy()  # channel c: one value
    write_run(tmp_path / "r.h5", {"conv2": acts})
    replay(tmp_path / "r.h5", tmp_path / "out", ReplayOptions(kernels=False, curves=False))
    from runfile.reader import open_run

    with open_run(tmp_path / "r.h5") as run:
        frames = LayerFrames(run, "conv2")
        narrow = LayerFrames(run, "conv2", style=GridStyle(wrap=False))
    grid = frames.grid
    assert grid.blocks > 1 and grid.rows_per_block == -(-c // grid.blocks)  # 64 rows of 10 probes: wrapped
    h, w = grid.shape
    assert 0.6 < w / h < 1.6 and narrow.grid.shape[0] / narrow.grid.shape[1] > 4
    palette = build_palette("diverging")
    rgb = gif_frames(tmp_path / "out" / "conv2.gif")[-1]
    assert rgb.shape[:2] == grid.shape
    boxes = set()
    for channel in range(c):
        want = palette[value_to_index(acts[0, 0, :1, 0, channel], -1, 1)[0]]
        for probe in (0, 9):
            y0, y1, x0, x1 = grid.tile_box(probe, channel)
            boxes.add((y0, x0))
            assert (rgb[y0:y1, x0:x1] == want).all(), (channel, probe)
    assert len(boxes) == 2 * c  # no two tiles share a place
    assert choose_blocks(4, 10, (18, 18), 20) == 1 and choose_blocks(16, 10, (18, 18), 20) == 1  # narrow: as before


@pytest.mark.parametrize("kind", ["external link", "soft link", "virtual", "external storage", "chunks"])
def test_layouts_the_recorder_never_writes_are_refused_by_every_reader(tmp_path, kind):
    """Data from outside the file (or assembled from elsewhere) never reaches a reader: info, replay, compare
    and the viewer all open runs through open_run, which refuses with the reason."""
    import h5py

    from runfile.reader import RunFileError

    path = tmp_path / "run.h5"
    write_run(path, {"conv1": np.zeros((2, 3, 4, 4, 2), np.float32)})
    outside = tmp_path / "outside.h5"
    with h5py.File(outside, "w") as f:
        f["secret"] = np.arange(4, dtype=np.float32)
    with h5py.File(path, "r+") as f:
        if kind == "external link":
            f["layers/conv1/extra"] = h5py.ExternalLink(str(outside), "/secret")
        elif kind == "soft link":
            f["layers/extra"] = h5py.SoftLink("/layers/conv1/activations")
        elif kind == "virtual":
            layout = h5py.VirtualLayout(shape=(4,), dtype="f4")
            layout[:] = h5py.VirtualSource(str(outside), "secret", shape=(4,))
            f.create_virtual_dataset("layers/conv1/virtual", layout)
        elif kind == "external storage":
            (tmp_path / "raw.bin").write_bytes(np.arange(4, dtype=np.float32).tobytes())
            f.create_dataset("layers/conv1/stored_outside", shape=(4,), dtype="f4",
                             external=[(str(tmp_path / "raw.bin"), 0, 16)])
        else:
            data = f["layers/conv1/activations"][()]
            attrs = dict(f["layers/conv1/activations"].attrs)
            del f["layers/conv1/activations"]
            ds = f["layers/conv1"].create_dataset("activations", data=data, maxshape=(None, *data.shape[1:]),
                                                  chunks=(2, *data.shape[1:]))
            ds.attrs.update(attrs)
    from runfile.reader import open_run

    with pytest.raises(RunFileError, match="not laid out as emergence writes run files"):
        open_run(path)


def test_the_smoothed_train_line_is_centred_and_does_not_lag():
    from replay.curves import centred

    drop = np.array([1.0] * 50 + [0.0] * 50)
    smooth = centred(drop)  # 11 batches for 100
    assert smooth[44] == 1.0 and smooth[55] == 0.0  # flat beyond half a window of the drop
    assert smooth[49] + smooth[50] == pytest.approx(1.0) and smooth[49] > 0.5 > smooth[50]  # halfway at the drop
    gappy = drop.copy()
    gappy[[0, 60]] = np.nan
    assert np.isfinite(centred(gappy)).all() and centred(gappy)[0] == 1.0  # a NaN is left out, not spread
    assert centred(np.array([2.0, 4.0, 6.0]), half=1).tolist() == [3.0, 4.0, 5.0]  # the window shrinks at the ends


def test_symlog_scale_colours_small_values_and_is_stated(tmp_path):
    from replay.palette import CENTRE, N_LEVELS, level_thresholds, symlog

    acts = np.zeros((2, 1, 4, 4, 2), np.float32)
    acts[:, 0, :, :, 0] = 0.05  # small beside …
    acts[:, 0, :, :, 1] = 10.0  # … a few large ones
    write_run(tmp_path / "r.h5", {"conv1": acts}, activation="relu")
    replay(tmp_path / "r.h5", tmp_path / "out", ReplayOptions(kernels=False, curves=False, distributions=False,
                                                                scales=(parse_scale("symlog:0.1"),)))
    from runfile.reader import open_run

    with open_run(tmp_path / "r.h5") as run:
        frames = LayerFrames(run, "conv1", scale_spec=parse_scale("symlog:0.1"))
    s = frames.scale
    assert s.linthresh == pytest.approx(0.1) and "symlog colours: linear within ±0.1" in s.rule
    t = symlog(np.array([-10.0, 0.05, 10.0]), 0.1).astype(np.float64)
    level = int(np.rint((t[1] - t[0]) / (t[2] - t[0]) * (N_LEVELS - 1)))
    assert level >= CENTRE + 5 and value_to_index(np.array([0.05], np.float32), -10.0, 10.0)[0] == CENTRE  # linear: white
    index = frames.grid.indices(acts[:1])
    assert (index[0, 0, :, :, 0] == level).all() and (index[0, 0, :, :, 1] == N_LEVELS - 1).all()
    lo, mid, hi = s.tick_values()  # one-sided: the bar runs 0 … 10, its middle where symlog is halfway
    assert lo == 0.0 and hi == 10.0 and symlog(mid, 0.1) == pytest.approx(symlog(10.0, 0.1) / 2, rel=1e-5)
    x = np.random.default_rng(3).normal(size=20000).astype(np.float32) * 4  # the viewer's thresholds agree
    thresholds = level_thresholds(s.lo, s.hi, s.linthresh)
    assert np.array_equal(np.searchsorted(thresholds, x, side="right"), value_to_index(x, s.lo, s.hi, s.linthresh))
    with pytest.raises(ValueError, match="symlog:C needs a positive C"):
        parse_scale("symlog:-1")


@pytest.mark.parametrize("zoom, upright", [(1, True), (4, False)])
def test_class_names_are_drawn_whole_upright_when_the_column_is_narrow(tmp_path, zoom, upright):
    acts = np.zeros((2, 3, 4, 4, 2), np.float32)
    write_run(tmp_path / "r.h5", {"conv1": acts})  # 16-pixel probes; classes named "class 0", "class 1", ...
    replay(tmp_path / "r.h5", tmp_path / "out", ReplayOptions(kernels=False, curves=False, zoom=zoom))
    from runfile.reader import open_run

    with open_run(tmp_path / "r.h5") as run:
        frames = LayerFrames(run, "conv1", style=GridStyle(zoom=zoom))
    rgb = gif_frames(tmp_path / "out" / "conv1.gif")[0]
    canvas = np.where((rgb == 0).all(axis=-1), INK, 0).astype(np.uint8)
    labels = frames.grid.column_labels
    assert [(t, up) for t, _, _, up in labels] == [(f"class {k}", upright) for k in range(3)]
    read = font.read_text_up if upright else font.read_text
    assert [read(canvas, y, x, len(t), INK) for t, y, x, _ in labels] == ["CLASS 0", "CLASS 1", "CLASS 2"]


def _text_in_row(canvas, y, text):
    """Whether `text` is drawn (unscaled) anywhere on the line that starts at row y."""
    w = font.text_size(text)[1]
    return any(font.read_text(canvas, y, x, len(text), INK) == text.upper() for x in range(canvas.shape[1] - w))


def test_per_step_scale_fills_each_frame_and_states_its_own_range(tmp_path):
    acts = np.zeros((2, 1, 4, 4, 2), np.float32)
    acts[0, ..., 0], acts[0, ..., 1] = 0.01, -0.01  # step 0: tiny
    acts[1, ..., 0], acts[1, ..., 1] = 10.0, -10.0  # step 1: large
    write_run(tmp_path / "r.h5", {"conv1": acts}, activation="gelu")
    from replay.grid import BAR_HEIGHT, GAP
    from replay.palette import CENTRE, N_LEVELS
    from runfile.reader import open_run

    for spec, out in ((parse_scale("step"), "step"), (parse_scale("auto"), "fixed")):
        replay(tmp_path / "r.h5", tmp_path / out, ReplayOptions(kernels=False, curves=False, distributions=False,
                                                              scales=(spec,)))
        with open_run(tmp_path / "r.h5") as run:
            frames = LayerFrames(run, "conv1", scale_spec=spec)
        palette = build_palette(frames.scale.kind)
        y, _, _ = frames.grid._bar
        ticks_y = y + BAR_HEIGHT + GAP
        for k, rgb in enumerate(gif_frames(tmp_path / out / "conv1.gif")):
            levels = []
            for channel in (0, 1):
                y0, y1, x0, x1 = frames.grid.tile_box(0, channel)
                levels.append(set(np.unique(to_index(rgb[y0:y1, x0:x1], palette)).tolist()))
            canvas = np.where((rgb == 0).all(axis=-1), INK, 0).astype(np.uint8)
            if out == "step":  # every frame spans the whole bar, and says so with its own ticks
                assert levels == [{N_LEVELS - 1}, {0}]
                assert _text_in_row(canvas, ticks_y, "+0.01" if k == 0 else "+10")
                assert _text_in_row(canvas, ticks_y + font.CELL_H, "PER STEP")
            else:  # one scale [-10, 10]: step 0 is white
                assert levels == ([{CENTRE}, {CENTRE}] if k == 0 else [{N_LEVELS - 1}, {0}])
                assert _text_in_row(canvas, ticks_y, "+10")
    assert "colours of different steps are not comparable" in (tmp_path / "step" / "index.html").read_text()
