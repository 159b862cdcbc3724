"""The ground service on uvicorn in a thread of this process: what `skycourier sim --ground`
runs beside a simulated flight, and what the tests serve a real browser from.

The listening socket is bound before uvicorn starts and handed to it, so no other process
can take the port in between, and the caller knows the port before anything is served.
"""

from __future__ import annotations

import socket
import threading
import time

import uvicorn
from fastapi import FastAPI


class BackgroundServer:
    """`app` served on `sock` (bound, not yet listening) from a thread named `name`.
    `start()` returns once uvicorn serves (its lifespan has run), `stop()` ends it."""

    def __init__(
        self, app: FastAPI, sock: socket.socket, name: str, graceful_shutdown_s: float = 5.0
    ) -> None:
        self.app = app
        self.sock = sock
        host, port = sock.getsockname()[:2]
        self.url = f"http://{host}:{port}"
        self.server = uvicorn.Server(
            uvicorn.Config(
                app,
                log_level="warning",
                access_log=False,
                lifespan="on",
                # Open live streams never end by themselves: give them a few seconds.
                timeout_graceful_shutdown=graceful_shutdown_s,
            )
        )
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [sock]}, name=name
        )

    def start(self, timeout_s: float) -> bool:
        """Start serving; False if uvicorn did not start within `timeout_s` (or ended)."""
        self.thread.start()
        deadline = time.monotonic() + timeout_s
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                return False
            time.sleep(0.02)
        return True

    def wait(self) -> None:
        """Until the server ends (Ctrl-C in the calling thread ends the wait, not the server)."""
        while self.thread.is_alive():
            self.thread.join(0.5)

    def stop(self, timeout_s: float) -> bool:
        """Stop serving (the app's lifespan stops what it started); False if the thread did
        not end within `timeout_s`."""
        self.server.should_exit = True
        if self.thread.is_alive():
            self.thread.join(timeout_s)
        self.sock.close()
        return not self.thread.is_alive()


def local_socket(port: int = 0) -> socket.socket:
    """A TCP socket bound on 127.0.0.1:`port` (0: any free port); OSError if it is taken."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(("127.0.0.1", port))
    except OSError:
        sock.close()
        raise
    return sock
