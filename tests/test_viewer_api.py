"""`emergence serve`'s API: bytes and numbers equal to what replay reads, security, live runs, bad files."""

import http.client
import json
import os
import re
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

from conftest import write_run
from replay import open_run
from replay.animate import LayerFrames
from replay.curves import centred
from replay.palette import DIVERGING, SEQUENTIAL, colour_map, level_thresholds, value_to_index
from replay.render import ReplayOptions, replay
from replay.scales import ScaleSpec, resolve_scale
from viewer.catalog import run_id
from viewer.server import is_loopback_host, start_in_thread


def request(server, path, method="GET", host=None):
    """(status, headers, body) of one raw request: the path bytes are sent exactly as given."""
    port = server.server_address[1]
    host = f"127.0.0.1:{port}" if host is None else host
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode("latin-1"))
        response = http.client.HTTPResponse(sock, method=method)
        response.begin()
        body = response.read()
    return response.status, {k.lower(): v for k, v in response.getheaders()}, body


def get_json(server, path):
    status, _, body = request(server, path)
    assert status == 200, body
    return json.loads(body)


@pytest.fixture
def runs_dir(tmp_path):
    folder = tmp_path / "runs"
    folder.mkdir()
    rng = np.random.default_rng(0)
    tanh = np.tanh(rng.normal(size=(5, 3, 4, 4, 2))).astype(np.float32)
    tanh[:, 0, 0, 0, 0] = 0.0
    tanh[:, 0, 0, 1, 0] = 1.0
    write_run(folder / "tanh.h5", {"conv1": tanh, "conv2": tanh[:, :, :2, :2]})
    relu = np.maximum(rng.normal(size=(7, 3, 4, 4, 3)) * 3, 0).astype(np.float32)
    (folder / "sub").mkdir()
    write_run(folder / "sub" / "relu.h5", {"conv1": relu}, activation="relu", steps=[0, 1, 2, 4, 8, 16, 32])
    return folder


@pytest.fixture
def server(runs_dir):
    srv = start_in_thread(runs_dir, idle_seconds=0.3)
    yield srv
    srv.shutdown()
    srv.server_close()


def ids(server):
    return {r["name"]: r for r in get_json(server, "/api/runs")["runs"]}


def test_frames_are_the_stored_bytes_and_the_numbers_are_replays(server, runs_dir):
    rows = ids(server)
    assert set(rows) == {"tanh", "sub/relu"} and rows["sub/relu"]["id"] == run_id("sub/relu.h5")
    rid = rows["sub/relu"]["id"]
    status, headers, body = request(server, f"/api/runs/{rid}/frames?layer=conv1&start=2&count=4")
    assert status == 200 and headers["x-frame-dtype"] == "float32" and headers["x-frame-shape"] == "4,3,4,4,3"
    with h5py.File(runs_dir / "sub" / "relu.h5", "r", locking=False) as f:  # as the server holds it
        assert body == f["layers/conv1/activations"][2:6].astype("<f4").tobytes()
        kernel_less = "kernel" not in f["layers/conv1"]
    meta = get_json(server, f"/api/runs/{rid}")
    with open_run(runs_dir / "sub" / "relu.h5") as run:
        assert meta["steps"] == run.steps.tolist() == [0, 1, 2, 4, 8, 16, 32]
        scale = LayerFrames(run, "conv1").scale  # what replay draws the GIF with
        train = run.train_metrics()
    layer = meta["layers"][0]
    assert layer["scale"]["hi"] == float(scale.hi) and layer["scale"]["lo"] == float(scale.lo)
    assert layer["scale"]["thresholds"] == level_thresholds(scale.lo, scale.hi).astype(float).tolist()
    assert meta["palettes"]["diverging"] == colour_map(DIVERGING).tolist()
    assert meta["palettes"]["sequential"] == colour_map(SEQUENTIAL).tolist()
    assert kernel_less and meta["kernels"] == []
    metrics = get_json(server, f"/api/runs/{rid}/metrics")
    assert metrics["train"]["step"] == train.step.tolist()
    assert metrics["train"]["loss"] == train.loss.astype(float).tolist()
    assert metrics["train"]["loss_smoothed"] == centred(train.loss).tolist()
    assert metrics["eval"]["accuracy"] == [0.75]


def test_run_rows_carry_config_final_and_best_and_series_are_served_by_name(tmp_path, two_runs):
    """The runs table's cells come from the file: its config, the last and the best held-out accuracy; an extra
    scalar series (a per-layer measure) is the file's own values, asked for by name."""
    import shutil

    shutil.copy(two_runs["relu"], tmp_path / "relu.h5")
    srv = start_in_thread(tmp_path, idle_seconds=0.3)
    try:
        row = ids(srv)["relu"]
        with open_run(tmp_path / "relu.h5") as run:
            ev, config, scalars = run.eval_metrics(), run.config, run.scalars()
            wall = run.train_wall_time()
        assert row["config"]["activation"] == "relu" and row["config"]["seed"] == config["seed"]
        assert row["config"]["augment"] == "[]"  # a list: compact JSON text, one cell
        assert row["final"] == {"kind": "eval", "step": int(ev.step[-1]), "loss": float(ev.loss[-1]),
                                "accuracy": float(ev.accuracy[-1])}
        best = int(np.argmax(ev.accuracy))
        assert row["best"] == {"kind": "eval", "step": int(ev.step[best]), "accuracy": float(ev.accuracy[best])}
        metrics = get_json(srv, f"/api/runs/{row['id']}/metrics")
        assert metrics["series"] == sorted(scalars) and "conv1/weight_change" in scalars
        assert metrics["train"]["wall_time"] == wall.tolist() and np.all(np.diff(wall) >= 0)
        series = get_json(srv, f"/api/runs/{row['id']}/series?name=conv1%2Fweight_change")
        steps, values = scalars["conv1/weight_change"]
        assert series["step"] == steps.tolist() and series["value"] == values.tolist()
        status, _, body = request(srv, f"/api/runs/{row['id']}/series?name=nope")
        assert status == 404 and b"conv1/weight_change" in body
    finally:
        srv.shutdown()
        srv.server_close()


def test_distribution_and_geometry_answers_are_replays(tmp_path, two_runs):
    import shutil

    from replay.distributions import layer_distribution
    from replay.geometry import layer_geometry

    shutil.copy(two_runs["relu"], tmp_path / "relu.h5")
    write_run(tmp_path / "plain.h5", {"conv1": np.zeros((2, 2, 3, 3, 1), np.float32)})  # no analysis images
    srv = start_in_thread(tmp_path, idle_seconds=0.3)
    try:
        rows = ids(srv)
        rid = rows["relu"]["id"]
        d = get_json(srv, f"/api/runs/{rid}/distribution?layer=conv2")
        g = get_json(srv, f"/api/runs/{rid}/geometry?layer=conv2")
        shared = get_json(srv, f"/api/runs/{rid}/distribution?layer=conv2&lo=-2&hi=3")
        with open_run(tmp_path / "relu.h5") as run:
            mine = layer_distribution(run, "conv2", LayerFrames(run, "conv2").scale)
            geometry = layer_geometry(run, "conv2")
        assert d["counts"] == mine.counts.ravel().tolist() and d["edges"] == mine.edges.tolist()
        assert d["edges"][0] == 0.0  # relu: one-sided, from 0
        assert d["steps"] == mine.steps.tolist() and d["describe"] == mine.describe()
        assert shared["edges"][0] == -2.0 and shared["edges"][-1] == 3.0
        assert g["steps"] == geometry.steps.tolist() and g["labels"] == geometry.labels.tolist()
        assert np.allclose(np.array(g["coords"], float), geometry.coords, atol=1e-4)
        assert g["explained"] == pytest.approx(geometry.explained.tolist())
        for bad in ("lo=1&hi=1", "lo=1", "lo=nan&hi=2", "lo=x&hi=2"):
            assert request(srv, f"/api/runs/{rid}/distribution?layer=conv2&{bad}")[0] == 400, bad
        status, _, body = request(srv, f"/api/runs/{rows['plain']['id']}/geometry?layer=conv1")
        assert status == 404 and b"analysis_probes=0" in body
        assert request(srv, f"/api/runs/{rid}/distribution?layer=nope")[0] == 404
        one = get_json(srv, f"/api/runs/{rid}/distribution?layer=conv2&channel=5")
        with open_run(tmp_path / "relu.h5") as run:
            mine = layer_distribution(run, "conv2", LayerFrames(run, "conv2").scale, stored=5)
        assert one["channel"] == 5 and one["counts"] == mine.counts.ravel().tolist() and one["per_step"] == mine.per_step
        assert one["counts"] != d["counts"] and "every position of channel 5" in one["what"]
        status, _, body = request(srv, f"/api/runs/{rid}/distribution?layer=conv2&channel=16")
        assert status == 404 and b"conv2 has no stored channel 16; stored: 0-15" in body
    finally:
        srv.shutdown()
        srv.server_close()


def test_thresholds_give_replays_level_for_every_half_and_random_floats():
    halves = np.arange(65536, dtype=np.uint16).view(np.float16).astype(np.float32)
    halves = halves[~np.isnan(halves)]
    rng = np.random.default_rng(1)
    for lo, hi in [(-1.0, 1.0), (0.0, 1.0), (-0.0371, 0.0371), (-2.5e-3, 2.5e-3), (-7.0, 3.0)]:
        t = level_thresholds(lo, hi)
        x = np.concatenate([halves, rng.normal(size=20000).astype(np.float32) * hi, t, np.nextafter(t, np.float32(-np.inf))])
        counted = np.searchsorted(t, x, side="right")  # the number of thresholds <= x: what the page computes
        assert np.array_equal(counted, value_to_index(x, lo, hi))


def test_the_scale_of_a_growing_run_is_the_rule_over_the_frames_so_far(tmp_path):
    from viewer.scale_book import ScaleBook

    rng = np.random.default_rng(2)
    acts = (rng.standard_exponential(size=(9, 2, 3, 3, 2)) * np.arange(1, 10)[:, None, None, None, None]).astype(np.float32)
    writer = write_run(tmp_path / "live.h5", {"conv1": acts[:4]}, activation="relu", close=False)
    book = ScaleBook()
    with open_run(tmp_path / "live.h5") as run:
        first = book.layer_scale("x", run, "conv1")
        for i in range(4, 9):
            writer.write_frame(i, {"conv1": acts[i], "logits": np.zeros((2, 10), np.float32)}, float(i))
        writer.flush()
        run.refresh()
        grown = book.layer_scale("x", run, "conv1")
    writer.close()
    for scale, n in ((first, 4), (grown, 9)):
        expected = resolve_scale("relu", ScaleSpec(None, "auto"), [acts[:n]], (2, 3, 3, 2), n)
        assert float(scale.hi) == float(expected.hi)
    assert float(grown.hi) > float(first.hi)


@pytest.mark.parametrize("mode", ["", "step"])
def test_png_export_is_the_gifs_frame(server, runs_dir, tmp_path, mode):
    from replay.scales import parse_scale

    rid = ids(server)["sub/relu"]["id"]
    status, headers, body = request(server, f"/api/runs/{rid}/frame.png?layer=conv1&step=8&scale={mode}")
    assert status == 200 and headers["content-type"] == "image/png"
    (tmp_path / "f.png").write_bytes(body)
    replay(runs_dir / "sub" / "relu.h5", tmp_path / "out", ReplayOptions(
        kernels=False, curves=False, scales=(parse_scale(mode),) if mode else ()))
    with Image.open(tmp_path / "out" / "conv1.gif") as gif:
        gif.seek(4)  # steps 0, 1, 2, 4, 8: the fifth frame
        expected = np.asarray(gif.convert("RGB"))
    with Image.open(tmp_path / "f.png") as png:
        assert np.array_equal(np.asarray(png.convert("RGB")), expected)
    assert request(server, f"/api/runs/{rid}/frame.png?layer=conv1&step=5")[0] == 404  # not recorded
    assert request(server, f"/api/runs/{rid}/frame.png?layer=conv1&step=8&scale=cubic")[0] == 400


@pytest.mark.parametrize("path", [
    "/static/..%2f..%2f..%2fetc%2fpasswd", "/static/%2e%2e/%2e%2e/etc/passwd", "/../../../../etc/passwd",
    "/static/../../../../etc/passwd", "/etc/passwd", "//etc/passwd", "/static/..\\..\\..\\etc\\passwd",
    "/static/app.js%00.html", "/static/app.js\x00", "/static/%2fetc%2fpasswd", "/api/runs/..%2f..%2fetc%2fpasswd",
    "/api/runs/%2e%2e%2f%2e%2e", "/static/style.css/../../tanh.h5", "/tanh.h5", "/sub/relu.h5",
    "/static/", "/static/.", "/api/runs/0123456789abcdef",
])
def test_traversal_attempts_never_reach_the_filesystem(server, path):
    status, _, body = request(server, path)
    assert 400 <= status < 500, (path, status)
    assert b"root:" not in body and b"HDF" not in body


def test_a_symlink_out_of_the_folder_is_not_served(server, runs_dir, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    write_run(outside / "secret.h5", {"conv1": np.zeros((2, 1, 2, 2, 1), np.float32)})
    os.symlink(outside / "secret.h5", runs_dir / "link.h5")
    os.symlink(outside, runs_dir / "linked_folder")
    os.symlink(runs_dir / "tanh.h5", runs_dir / "inside_link.h5")  # inside the folder: served
    names = set(ids(server))
    assert "link" not in names and not any(n.startswith("linked_folder") for n in names)
    assert "inside_link" in names
    assert request(server, f"/api/runs/{run_id('link.h5')}")[0] == 404


@pytest.mark.parametrize("host", ["evil.example", "evil.example:8421", "127.0.0.1.nip.io", "localhost.evil.com",
                                  "10.0.0.1", "", "[::2]:80"])
def test_a_foreign_host_header_is_refused(server, host):
    status, _, body = request(server, "/api/runs", host=host)
    assert status == 403 and b"Host" in body


def test_loopback_host_headers_are_accepted_in_the_strict_grammar_only():
    for host in ("localhost", "localhost:8421", "127.0.0.1:1", "127.5.6.7", "[::1]:8421", "[::1]", "LOCALHOST"):
        assert is_loopback_host(host, set())
    assert is_loopback_host("myhost:8421", {"myhost"}) and not is_loopback_host("other:8421", {"myhost"})
    # host[:port] and nothing else: user info, paths, bare IPv6, two ports, long ports, spaces inside
    for host in ("localhost:80@evil.com", "evil.com@localhost", "localhost/x", "::1", "127.0.0.1:80:81",
                 "localhost:123456", "local host", "localhost:", "[::1", "127.0.0.1\tevil"):
        assert not is_loopback_host(host, set()), host


def test_two_host_headers_get_400(server):
    port = server.server_address[1]
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(f"GET /api/runs HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nHost: evil.example\r\n"
                     "Connection: close\r\n\r\n".encode())
        response = http.client.HTTPResponse(sock)
        response.begin()
        assert response.status == 400 and b"one Host header" in response.read()


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS"])
def test_only_get_and_head(server, method):
    status, headers, _ = request(server, "/api/runs", method=method)
    assert status == 405 and headers["allow"] == "GET, HEAD"
    status, _, body = request(server, "/api/runs", method="HEAD")
    assert status == 200 and body == b""


def test_ranges_are_bounded(server):
    rid = ids(server)["tanh"]["id"]
    assert request(server, f"/api/runs/{rid}/frames?layer=conv1&start=0&count=100000")[0] == 400
    assert request(server, f"/api/runs/{rid}/frames?layer=conv1&start=0&count=0")[0] == 400
    assert request(server, f"/api/runs/{rid}/frames?layer=conv1&start=5&count=1")[0] == 416
    assert request(server, f"/api/runs/{rid}/frames?layer=conv1&start=x")[0] == 400
    assert request(server, f"/api/runs/{rid}/frames?layer=nope&start=0")[0] == 404
    assert request(server, "/api/runs?" + "a=1&" * 5000)[0] == 400  # request target too long
    status, headers, _ = request(server, f"/api/runs/{rid}/frames?layer=conv1&start=3&count=64")
    assert status == 200 and headers["x-frame-count"] == "2"  # clipped to what is recorded


def test_every_answer_carries_the_security_headers(server):
    for path in ("/", "/static/app.js", "/api/runs", "/nope"):
        _, headers, _ = request(server, path)
        csp = headers["content-security-policy"]
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "default-src 'none'" in csp
        assert headers["x-content-type-options"] == "nosniff"


def test_unreadable_files_are_listed_with_their_reason_and_break_nothing(server, runs_dir):
    (runs_dir / "garbage.h5").write_bytes(b"this is not hdf5" * 100)
    whole = (runs_dir / "tanh.h5").read_bytes()
    (runs_dir / "cut.h5").write_bytes(whole[: len(whole) // 2])
    with h5py.File(runs_dir / "foreign.h5", "w") as f:
        f["x"] = np.arange(3)
    t0 = time.monotonic()
    rows = ids(server)
    assert time.monotonic() - t0 < 5
    assert rows["tanh"]["readable"] and rows["sub/relu"]["readable"]
    assert not rows["garbage"]["readable"] and "not an HDF5 file" in rows["garbage"]["reason"]
    assert not rows["cut"]["readable"] and "cut short" in rows["cut"]["reason"]
    assert not rows["foreign"]["readable"] and "not an emergence run" in rows["foreign"]["reason"]
    status, _, body = request(server, f"/api/runs/{rows['cut']['id']}")
    assert status == 422 and b"cut short" in body


def test_default_bind_is_loopback_and_the_url_is_printed(tmp_path):
    from emergence.cli import build_parser

    assert build_parser().parse_args(["serve"]).host == "127.0.0.1"
    (tmp_path / "runs").mkdir()
    with subprocess.Popen([sys.executable, "-m", "emergence.cli", "serve", str(tmp_path / "runs"), "--port", "0"],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        try:
            line = proc.stdout.readline()
            url = re.search(r"http://([0-9.]+):(\d+)/", line)
            assert url and url.group(1) == "127.0.0.1", line
            conn = http.client.HTTPConnection("127.0.0.1", int(url.group(2)), timeout=5)
            conn.request("GET", "/api/runs")
            assert conn.getresponse().status == 200
            conn.close()
        finally:
            proc.terminate()
            proc.wait(timeout=10)


def test_a_missing_folder_is_one_clear_error(tmp_path):
    r = subprocess.run([sys.executable, "-m", "emergence.cli", "serve", str(tmp_path / "nope"), "--port", "0"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "no folder" in r.stderr and "Traceback" not in r.stderr


LIVE_WRITER = textwrap.dedent("""
    import sys, time
    import numpy as np
    sys.path.insert(0, {tests!r})
    from conftest import write_run
    writer = write_run(__import__("pathlib").Path({path!r}), {{"conv1": np.full((1, 2, 3, 3, 1), {first}, np.float32)}},
                       activation={activation!r}, close=False)
    for step in range(1, {last} + 1):
        time.sleep({pause})
        writer.write_frame(step, {{"conv1": np.full((2, 3, 3, 1), {value}, np.float32),
                                  "logits": np.zeros((2, 10), np.float32)}}, float(step))
        writer.flush()
    writer.set_status("completed")
    writer.close()
""")


def live_writer(path, activation="tanh", first=0.0, value="step / 12", last=12, pause=0.15):
    """A script that records a run at `path` in its own process, one frame every `pause` s to step `last` (frame
    values: the expression `value` of `step`), then completes it."""
    return LIVE_WRITER.format(tests=str(Path(__file__).parent), path=str(path), activation=activation, first=first,
                              value=value, last=last, pause=pause)


def test_a_run_being_written_grows_live_and_can_be_reopened_after(server, runs_dir):
    path = runs_dir / "live.h5"
    proc = subprocess.Popen([sys.executable, "-c", live_writer(path)])
    seen, states = [], set()
    rid = run_id("live.h5")
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if path.exists() and rid in {r["id"] for r in get_json(server, "/api/runs")["runs"]}:
                try:
                    meta = get_json(server, f"/api/runs/{rid}")
                except AssertionError:
                    continue  # the file exists but its layout is not written yet
                seen.append(len(meta["steps"]))
                states.add(meta["state"])
                if meta["state"] == "completed":
                    break
            time.sleep(0.1)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == 0
    assert "recording" in states and "completed" in states
    assert seen[-1] == 13 and len(set(seen)) >= 3 and seen == sorted(seen)  # frame count rose while served
    time.sleep(1.0)  # longer than the server's idle time (0.3 s): its handle is closed
    assert server.catalog.open_count == 0
    with h5py.File(path, "r+") as f:  # the recorder (or anyone) can reopen the file for writing
        f["status"][()] = np.bytes_(b"completed")


def test_a_run_the_viewer_holds_open_can_be_opened_for_writing_by_another_process(runs_dir):
    """`emergence resume` of a run the viewer shows opens it for writing in its own process: the viewer's
    handle takes no HDF5 file lock, so that open is not refused ("unable to lock file"), and the viewer
    serves what was written through the handle it kept."""
    srv = start_in_thread(runs_dir, idle_seconds=60)
    try:
        rid = ids(srv)["tanh"]["id"]
        assert get_json(srv, f"/api/runs/{rid}")["state"] == "completed"
        assert srv.catalog.open_count == 1
        script = textwrap.dedent(f"""
            import h5py, numpy as np
            with h5py.File({str(runs_dir / "tanh.h5")!r}, "r+") as f:
                f["status"][()] = np.bytes_(b"recording")
        """)
        r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        assert srv.catalog.open_count == 1
        assert get_json(srv, f"/api/runs/{rid}")["state"] == "recording"
    finally:
        srv.shutdown()
        srv.server_close()


def test_a_port_in_use_is_one_clear_error(server, tmp_path):
    port = str(server.server_address[1])
    r = subprocess.run([sys.executable, "-m", "emergence.cli", "serve", str(tmp_path), "--port", port],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and f"cannot listen on 127.0.0.1:{port}" in r.stderr and "Traceback" not in r.stderr


def test_file_names_in_headers_are_encoded_whatever_they_hold(tmp_path):
    """CR/LF, quotes and non-Latin-1 in a run's name: the answer is whole, with no header of the name's making."""
    folder = tmp_path / "runs"
    folder.mkdir()
    names = ["x\r\nSet-Cookie: pwn=1\r\nX-Injected: yes", 'quote"d; a=b', "名前"]
    data = np.tanh(np.random.default_rng(0).normal(size=(2, 3, 4, 4, 2))).astype(np.float32)
    for name in names:
        write_run(folder / f"{name}.h5", {"conv1": data})
    srv = start_in_thread(folder)
    try:
        rows = ids(srv)
        assert sorted(rows) == sorted(names)
        for name in names:
            status, headers, body = request(srv, f"/api/runs/{rows[name]['id']}/frame.png?layer=conv1&step=1")
            assert status == 200 and body.startswith(b"\x89PNG")
            assert "set-cookie" not in headers and "x-injected" not in headers
            disposition = headers["content-disposition"]
            assert re.fullmatch(r'inline; filename="[A-Za-z0-9._-]+"; filename\*=UTF-8\'\'[A-Za-z0-9._~%-]+', disposition)
            from urllib.parse import unquote
            assert unquote(disposition.split("''", 1)[1]) == f"{name}_conv1_step1.png"
    finally:
        srv.shutdown()
        srv.server_close()


def _hostile_oversized(path):
    """A valid run file of 3 frames whose conv1 declares 2 probes x 4096 x 4096 x 2 float16 (134 MB a frame)
    and stores no chunk: a few kB on disk."""
    write_run(path, {"conv1": np.zeros((3, 2, 4, 4, 2), np.float16)})
    with h5py.File(path, "r+") as f:
        old = f["layers/conv1/activations"]
        attrs = dict(old.attrs)
        del f["layers/conv1/activations"]
        ds = f["layers/conv1"].create_dataset("activations", shape=(3, 2, 4096, 4096, 2), dtype="f2",
                                              maxshape=(None, 2, 4096, 4096, 2), chunks=(1, 2, 4096, 4096, 2))
        ds.attrs.update(attrs)


def _peak_rss_mb(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def test_a_file_declaring_huge_frames_is_refused_before_anything_is_allocated(tmp_path):
    folder = tmp_path / "runs"
    folder.mkdir()
    _hostile_oversized(folder / "huge.h5")
    assert (folder / "huge.h5").stat().st_size < 1_000_000
    proc = subprocess.Popen([sys.executable, "-m", "emergence", "serve", str(folder), "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        url = proc.stdout.readline()
        port = int(re.search(r"http://127\.0\.0\.1:(\d+)/", url).group(1))

        class Srv:
            server_address = ("127.0.0.1", port)

        status, _, body = request(Srv, "/api/runs")
        assert status == 200
        before = _peak_rss_mb(proc.pid)
        rid = json.loads(body)["runs"][0]["id"]
        status, _, body = request(Srv, f"/api/runs/{rid}")
        layer = json.loads(body)["layers"][0]
        assert status == 200 and layer["max_frames"] == 0 and "134 MB" in layer["too_large"]
        for path in (f"/api/runs/{rid}/frames?layer=conv1&start=0&count=1", f"/api/runs/{rid}/frame.png?layer=conv1&step=0"):
            status, _, body = request(Srv, path)
            assert status == 413 and "emergence replay" in json.loads(body)["error"]
        assert _peak_rss_mb(proc.pid) - before < 100
    finally:
        proc.terminate()
        proc.communicate(timeout=30)


def test_idle_connections_close_and_connections_are_capped(tmp_path, monkeypatch):
    import viewer.server as server_module

    monkeypatch.setattr(server_module.Handler, "timeout", 0.5)
    monkeypatch.setattr(server_module, "MAX_CONNECTIONS", 3)
    (tmp_path / "runs").mkdir()
    logged = []
    srv = start_in_thread(tmp_path / "runs")
    srv.log = logged.append
    port = srv.server_address[1]
    try:
        idle = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(3)]
        time.sleep(0.2)
        with socket.create_connection(("127.0.0.1", port), timeout=10) as extra:  # the fourth: refused at once
            assert extra.recv(100).startswith(b"HTTP/1.1 503")
        for sock in idle:  # the idle ones are closed by the server after its timeout
            assert sock.recv(100) == b""
            sock.close()
        time.sleep(0.2)
        assert request(srv, "/api/runs")[0] == 200  # their slots are free again
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:  # a client that leaves mid-request
            sock.sendall(b"GET /api/runs HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        time.sleep(0.8)
        assert all("Traceback" not in line for line in logged) and len(logged) <= 1
    finally:
        srv.shutdown()
        srv.server_close()


def test_a_listed_file_swapped_for_a_link_out_of_the_folder_is_not_served(tmp_path):
    folder, outside = tmp_path / "runs", tmp_path / "outside"
    folder.mkdir()
    outside.mkdir()
    data = np.tanh(np.random.default_rng(0).normal(size=(2, 3, 4, 4, 2))).astype(np.float32)
    write_run(folder / "a.h5", {"conv1": data})
    write_run(outside / "secret.h5", {"conv1": data * 0 + 0.25})
    srv = start_in_thread(folder, idle_seconds=0.2)
    try:
        rid = ids(srv)["a"]["id"]
        assert request(srv, f"/api/runs/{rid}/frames?layer=conv1&start=0&count=1")[0] == 200
        time.sleep(0.5)  # the idle handle is closed
        (folder / "a.h5").unlink()
        (folder / "a.h5").symlink_to(outside / "secret.h5")
        status, _, body = request(srv, f"/api/runs/{rid}/frames?layer=conv1&start=0&count=1")
        assert status == 404 and b"replaced by a link" in body
    finally:
        srv.shutdown()
        srv.server_close()


def test_progress_files_list_runs_recorded_elsewhere_and_hostile_ones_are_refused(tmp_path):
    from runfile.progress import STALE_SECONDS, write_progress
    from viewer.catalog import Catalog

    write_progress(tmp_path / "live.h5", {"state": "recording", "step": 40, "planned_steps": 100, "frames": 41,
                                          "train": {"step": 40, "loss": 0.5, "accuracy": 0.75},
                                          "config": {"seed": 3, "activation": "relu", "lr": float("nan")}})
    old = write_progress(tmp_path / "old.h5", {"state": "recording", "step": 7, "planned_steps": 100})
    body = json.loads(old.read_text())
    old.write_text(json.dumps({**body, "updated_unix": body["updated_unix"] - STALE_SECONDS - 5}))
    (tmp_path / "big.progress.json").write_text(" " * (70 * 1024))
    (tmp_path / "types.progress.json").write_text(json.dumps({"format": "emergence progress 1", "step": "many"}))
    (tmp_path / "other.progress.json").write_text("[1, 2]")
    write_run(tmp_path / "done.h5", {"conv1": np.zeros((2, 1, 2, 2, 1), np.float32)})
    write_progress(tmp_path / "done.h5", {"state": "recording", "step": 5, "planned_steps": 9})  # a retry
    rows = {r["name"]: r for r in Catalog(tmp_path).rows()}
    live = rows["live"]
    assert (live["state"], live["staged"], live["readable"], live["last_step"]) == ("recording elsewhere", True, False, 40)
    assert live["final"] == {"kind": "train", "step": 40, "loss": 0.5, "accuracy": 0.75}
    assert live["config"]["lr"] == "nan" and "own disk; here when it completes" in live["reason"]
    assert rows["old"]["state"] == "stale" and "probably killed" in rows["old"]["reason"]
    for name, why in (("big", "larger than"), ("types", "step is not a number"), ("other", "not a progress file")):
        assert rows[name]["state"] == "unreadable" and why in rows[name]["reason"], rows[name]
    assert rows["done"]["readable"] and "step 5 of 9" in rows["done"]["progress"]
    server = start_in_thread(tmp_path, idle_seconds=0.5)
    try:
        listed = {r["name"]: r for r in get_json(server, "/api/runs")["runs"]}
        assert listed["live"]["staged"] and request(server, f"/api/runs/{listed['live']['id']}")[0] == 404
    finally:
        server.shutdown()
        server.server_close()
