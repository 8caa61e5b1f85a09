"""Run a server on its own event loop in a thread: for tests, `corea demo` and benchmarks.

    with ServerThread(lambda: build_server(cascade=c, port=0)) as s:
        channel = grpc.insecure_channel(f"127.0.0.1:{s.port}")
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from typing import Callable

from .app import Server


class ServerThread:
    def __init__(self, factory: Callable[[], Server], *, metrics_port: int | None = None, grace_s: float = 5.0):
        self._factory = factory
        self._metrics_port = metrics_port
        self.grace_s = grace_s
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="corea-grpc-server", daemon=True)
        self.server: Server | None = None

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def call(self, coro, timeout: float | None = 60):
        """Run a coroutine on the server's loop and wait for its value."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def start(self) -> "ServerThread":
        if not self._thread.is_alive():
            self._thread.start()

        async def make_and_start():
            server = self._factory()
            await server.start(self._metrics_port)
            return server

        self.server = self.call(make_and_start())
        return self

    def stop(self, grace_s: float | None = None) -> None:
        if self.server is not None:
            try:
                self.call(self.server.stop(self.grace_s if grace_s is None else grace_s), timeout=None)
            except concurrent.futures.CancelledError:
                pass
            self.server = None

    def close(self) -> None:
        self.stop()
        if self.loop.is_running():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout=10)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.close()
