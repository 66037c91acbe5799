"""A loopback HTTP server in a thread, for the fakes at the external edge (scripted providers,
evaluators) and the loopback studio API: a free port, uvicorn, start/stop."""

from __future__ import annotations

import socket
import threading
import time

import uvicorn


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerThread:
    def __init__(self, app):
        self.port = free_port()
        self._server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port,
                                                     log_level="warning"))
        self._thread = threading.Thread(target=self._server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ServerThread:
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        assert self._server.started, "a loopback test server did not start"
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(10)


class HandlerThread:
    """A stdlib ``http.server`` on a free port of ``host`` in a thread: for listeners that record
    exactly what reaches them (a request that must never arrive, a redirect, raw bytes)."""

    def __init__(self, handler, host: str = "127.0.0.1"):
        import http.server

        self.server = http.server.ThreadingHTTPServer((host, 0), handler)
        self.port = self.server.server_address[1]
        self.url = f"http://{host}:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)
