"""One resource per asyncio event loop: grpc.aio channels and httpx pools belong to the loop that
made them, and a client used from several loops (a sync caller's asyncio.run, an executor's own
loop thread, a server's loop) needs one on each. Used by runtime.scheduler_client (channels) and
escalation.openai_llm (the SDK client)."""

from __future__ import annotations

import asyncio
import weakref
from typing import Awaitable, Callable, Generic, TypeVar

T = TypeVar("T")

__all__ = ["PerLoop"]


class PerLoop(Generic[T]):
    """`get()` is the running loop's resource (made by `make()` on first use; kept while the loop
    lives); `close()` closes them all, each on its own loop, with `closer(resource)`."""

    def __init__(self, make: Callable[[], T], closer: Callable[[T], Awaitable[None]]):
        self._make, self._closer = make, closer
        self._items: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # loop -> resource

    def get(self) -> T:
        loop = asyncio.get_running_loop()
        item = self._items.get(loop)
        if item is None:
            item = self._items[loop] = self._make()
        return item

    async def close(self) -> None:
        """This loop's now; another running loop's scheduled there (not awaited: that loop may be
        blocked on this one, in a sync close()); a stopped loop runs nothing, so its resource is
        dropped (grpc channels and httpx pools release their sockets when collected)."""
        here = asyncio.get_running_loop()
        items, self._items = list(self._items.items()), weakref.WeakKeyDictionary()
        for loop, item in items:
            if loop is here:
                await self._closer(item)
            elif loop.is_running():
                try:
                    asyncio.run_coroutine_threadsafe(self._closer(item), loop)
                except RuntimeError:  # it closed meanwhile
                    pass
