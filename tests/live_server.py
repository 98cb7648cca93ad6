"""A real uvicorn server on a free local port, shared by the serve tests and the distill HTTP-teacher tests.

Importable as ``live_server`` because pytest puts ``tests/`` on sys.path (it holds a rootdir conftest, no __init__).
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def running_server(app, *, path: str = "", log_level: str = "warning") -> Iterator[str]:
    """Serve `app` in a background thread on 127.0.0.1 and yield its base URL plus `path` (e.g. "/v1")."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level=log_level, lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}{path}"
    finally:
        server.should_exit = True
        thread.join(20)
        sock.close()


class Upstream:
    """A real HTTP server (http.server, own thread) whose answers a test scripts: `answer(body, hit)` returns
    (status, JSON-able body), or None to stall until the test ends (the client's timeout must fire). Records each
    request's body and headers, and how many were in flight at once."""

    def __init__(self, answer, *, delay: float = 0.0):
        import http.server
        import json

        self.answer = answer
        self.delay = delay
        self.bodies: list[dict] = []
        self.headers: list[dict] = []
        self.hits = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.release = threading.Event()
        self._lock = threading.Lock()
        upstream = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
                with upstream._lock:
                    upstream.hits += 1
                    hit = upstream.hits
                    upstream.bodies.append(body)
                    upstream.headers.append(dict(self.headers))
                    upstream.in_flight += 1
                    upstream.max_in_flight = max(upstream.max_in_flight, upstream.in_flight)
                try:
                    time.sleep(upstream.delay)
                    reply = upstream.answer(body, hit)
                    if reply is None:
                        upstream.release.wait(30)
                        return
                    status, payload = reply
                    data = json.dumps(payload).encode()
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:  # the client gave up first
                    pass
                finally:
                    with upstream._lock:
                        upstream.in_flight -= 1

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def __enter__(self) -> Upstream:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


def closed_port_url() -> str:
    """A local URL nothing listens on (a port just bound and released)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return f"http://127.0.0.1:{port}/v1"
