"""`emergence serve`: the standard library's threading HTTP server in front of `viewer.api`.

A local tool that must not become a hole:
* it binds 127.0.0.1 unless told otherwise (and then warns);
* a request whose Host header is not exactly `host[:port]` naming a loopback name or address (or the address it
  was told to bind) gets 403, and one with two Host headers 400, so a web page cannot reach it through DNS
  rebinding;
* connections idle for IDLE_SECONDS are closed, at most MAX_CONNECTIONS are served at once (503 beyond), and
  a client that disconnects is not logged as an error;
* an answer's size is bounded before anything is read: a layer whose single frame exceeds the per-answer
  limit is listed as too large and its frames get 413 (viewer/api.py `too_large`);
* a file name in a header is encoded as RFC 6266 says (`content_disposition`);
* GET and HEAD only; every other method gets 405;
* routes are matched exactly; runs are addressed by the catalog's opaque ids and static files by a fixed
  table read at start-up, so no part of a request ever reaches the filesystem;
* every answer carries a Content-Security-Policy without inline scripts, `X-Content-Type-Options: nosniff`
  and no referrer; the page shows names and config strings with `textContent` only.
"""

from __future__ import annotations

import ipaddress
import re
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from typing import Any, Callable
from urllib.parse import parse_qsl

from runfile.reader import RunFileError
from viewer.api import Api, ApiError, Reply, json_reply
from viewer.catalog import Catalog, UnknownRun

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8421
MAX_TARGET = 2048  # characters of a request target
LOOPBACK_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost"}
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
                               "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Resource-Policy": "same-origin",
}
STATIC_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml"}
RUN_ID = re.compile(r"[0-9a-f]{16}")


def load_static() -> dict[str, Reply]:
    """The page's files, read once: request paths are looked up in this table, never joined to a folder."""
    table = {}
    for item in resources.files("viewer").joinpath("static").iterdir():
        suffix = Path(item.name).suffix
        if item.is_file() and suffix in STATIC_TYPES:
            table[item.name] = Reply(200, STATIC_TYPES[suffix], item.read_bytes(), {"Cache-Control": "no-cache"})
    return table


HOST_HEADER = re.compile(r"(?:\[(?P<ip6>[0-9a-f:.]+)\]|(?P<name>[a-z0-9.-]+))(?::(?P<port>[0-9]{1,5}))?")


def is_loopback_host(host_header: str, extra: set[str]) -> bool:
    """Whether a Host header is exactly `host[:port]` (RFC 7230: a name, an IPv4 address or a bracketed IPv6
    one, nothing else: no user info, no path) naming this machine's loopback or one of `extra`."""
    match = HOST_HEADER.fullmatch(host_header.strip().lower())
    if match is None:
        return False
    host = match["ip6"] or match["name"]
    if host in LOOPBACK_NAMES or host in extra:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


IDLE_SECONDS = 30.0  # a connection that sends nothing for this long is closed (its thread ends)
MAX_CONNECTIONS = 64  # connections served at once; more get 503 and are closed


class ViewerServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, catalog: Catalog, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
                 log: Callable[[str], None] | None = None):
        self.catalog = catalog
        self.api = Api(catalog)
        self.static = load_static()
        self.extra_hosts = {host.lower()} if host not in ("", "0.0.0.0", "::") else set()
        self.log = log
        self._stopping = threading.Event()  # before binding: a failed bind calls server_close()
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        super().__init__((host, port), Handler)
        self._janitor = threading.Thread(target=self._close_idle, name="emergence-serve-janitor", daemon=True)
        self._janitor.start()

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        shown = "127.0.0.1" if host in ("0.0.0.0", "") else host
        return f"http://{'[' + shown + ']' if ':' in shown else shown}:{port}/"

    def process_request(self, request: Any, client_address: Any) -> None:
        """A thread per connection, at most MAX_CONNECTIONS of them: beyond, a 503 and the connection closed."""
        if not self._slots.acquire(blocking=False):
            try:
                request.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            except OSError:
                pass
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that goes away mid-answer is not an error of ours: one line at most, never a traceback."""
        kind, error = sys.exc_info()[:2]
        if self.log is not None and not isinstance(error, (ConnectionError, TimeoutError)):
            self.log(f"connection from {client_address[0]}: {kind.__name__ if kind else 'error'}: {error}")

    def _close_idle(self) -> None:
        while not self._stopping.wait(min(1.0, self.catalog.idle_seconds / 2)):
            self.catalog.close_idle()

    def server_close(self) -> None:
        self._stopping.set()
        super().server_close()
        self.catalog.close()


class Handler(BaseHTTPRequestHandler):
    server: ViewerServer
    server_version = "emergence"
    sys_version = ""
    protocol_version = "HTTP/1.1"
    timeout = IDLE_SECONDS  # socket timeout: an idle keep-alive connection ends instead of holding its thread
    disable_nagle_algorithm = True  # headers and body are two writes: without this, each answer waits ~40 ms for an ACK

    def do_GET(self) -> None:  # noqa: N802 - the http.server naming
        self._answer(head=False)

    def do_HEAD(self) -> None:  # noqa: N802
        self._answer(head=True)

    def _refuse_method(self) -> None:
        self._send(Reply(405, "text/plain; charset=utf-8", b"only GET and HEAD\n", {"Allow": "GET, HEAD"}), False)

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_TRACE = do_CONNECT = _refuse_method  # noqa: N815

    def _answer(self, head: bool) -> None:
        started = time.perf_counter()
        try:
            reply = self._route()
        except ApiError as e:
            reply = _error(e.status, str(e))
        except UnknownRun as e:
            reply = _error(404, e.args[0])
        except (RunFileError, KeyError, ValueError, OSError) as e:  # a file that cannot be read answers, never hangs
            reply = _error(422, f"{type(e).__name__}: {e.args[0] if e.args else e}")
        except Exception as e:  # noqa: BLE001 - the server keeps serving; the page shows the reason
            reply = _error(500, f"{type(e).__name__}: {e}")
        self._send(reply, head)
        if self.server.log is not None and reply.status >= 400:
            self.server.log(f"{self.command} {self.path[:200]} -> {reply.status} ({(time.perf_counter() - started) * 1e3:.0f} ms)")

    def _route(self) -> Reply:
        hosts = self.headers.get_all("Host") or []
        if len(hosts) > 1:
            return _error(400, "one Host header, please")
        if not is_loopback_host(hosts[0] if hosts else "", self.server.extra_hosts):
            return _error(403, "this viewer answers requests addressed to a loopback name only (Host header refused)")
        target = self.path
        if len(target) > MAX_TARGET or "\x00" in target or "\\" in target:
            return _error(400, "bad request target")
        path, _, query_text = target.partition("?")
        if "%" in path or "/../" in f"{path}/" or "/./" in f"{path}/" or "//" in path:
            return _error(404, "not found")
        try:
            query = dict(parse_qsl(query_text, keep_blank_values=True, strict_parsing=False, max_num_fields=16))
        except ValueError:
            return _error(400, "bad query string")
        parts = path.strip("/").split("/") if path != "/" else []
        api = self.server.api
        if not parts or parts == ["index.html"]:
            return self.server.static["index.html"]
        if parts[0] == "static" and len(parts) == 2 and parts[1] in self.server.static:
            return self.server.static[parts[1]]
        if parts[0] != "api":
            return _error(404, "not found")
        if parts == ["api", "runs"]:
            return api.runs()
        if parts == ["api", "compare"]:
            for key in ("a", "b"):
                if not RUN_ID.fullmatch(query.get(key, "")):
                    return _error(400, "compare needs two run ids, a= and b=")
            return api.compare(query)
        if len(parts) >= 3 and parts[:2] == ["api", "runs"] and RUN_ID.fullmatch(parts[2]):
            rid, rest = parts[2], parts[3:]
            if not rest:
                return api.run(rid, query)
            if rest == ["frames"]:
                return api.frames(rid, query)
            if rest == ["kernels"]:
                return api.frames(rid, query, kernel=True)
            if rest == ["probes"]:
                return api.probes(rid)
            if rest == ["metrics"]:
                return api.metrics(rid)
            if rest == ["distribution"]:
                return api.distribution(rid, query)
            if rest == ["geometry"]:
                return api.geometry(rid, query)
            if rest == ["step_scales"]:
                return api.step_scales(rid, query)
            if rest == ["series"]:
                return api.series(rid, query)
            if rest == ["frame.png"]:
                return api.png(rid, query)
        return _error(404, "not found")

    def _send(self, reply: Reply, head: bool) -> None:
        self.send_response(reply.status)
        headers = {**SECURITY_HEADERS, "Cache-Control": "no-store", **reply.headers,
                   "Content-Type": reply.content_type, "Content-Length": str(len(reply.body))}
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        if not head:
            self.wfile.write(reply.body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - quiet: errors are logged in _answer
        pass


def _error(status: int, message: str) -> Reply:
    return json_reply({"error": message}, status)


def serve(runs_dir: str | Path = "runs", host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, open_browser: bool = False,
          log: Callable[[str], None] = lambda s: print(s, file=sys.stderr)) -> None:
    """Serves every run under `runs_dir` until interrupted."""
    catalog = Catalog(runs_dir)
    if host != DEFAULT_HOST and not _is_loopback_address(host):
        log(f"warning: serving on {host}, not loopback: anyone who can reach this machine on port {port} can read "
            f"every run under the folder. Requests must still name the host as loopback or exactly as {host}.")
    try:
        server = ViewerServer(catalog, host, port, log)
    except OSError as e:
        raise RuntimeError(f"cannot listen on {host}:{port} ({e.strerror}); pass --port N, or --port 0 for any free "
                           "port") from None
    print(f"emergence serve: {server.url}  (runs under {catalog.root}; Ctrl-C stops)", flush=True)
    if open_browser:
        import webbrowser

        webbrowser.open(server.url)
    try:
        server.serve_forever(poll_interval=0.25)
    finally:
        server.server_close()


def _is_loopback_address(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host.lower() in LOOPBACK_NAMES


def start_in_thread(runs_dir: str | Path, port: int = 0, idle_seconds: float = 3.0) -> ViewerServer:
    """A server on 127.0.0.1 (a free port by default) answering from a daemon thread; `shutdown()` and
    `server_close()` stop it. For tests, benchmarks and notebooks."""
    server = ViewerServer(Catalog(runs_dir, idle_seconds), DEFAULT_HOST, port)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, name="emergence-serve",
                     daemon=True).start()
    return server
