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
