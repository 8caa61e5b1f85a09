"""RequestStream delivery into an event loop: every event, in order, and one wake-up of the loop
for a burst of events pushed from an engine thread (not one per event)."""

from __future__ import annotations

import asyncio
import gc
import threading
import weakref

from corea_engine.runtime import FinishedEvent, RequestStream, Result, TokenEvent


def finished(request_id: str) -> FinishedEvent:
    return FinishedEvent(request_id, Result(request_id=request_id, text="", finish_reason="stop"))


def test_events_pushed_from_a_thread_arrive_in_order_with_one_wake_up_per_burst():
    rows, steps = 16, 20

    async def main():
        loop = asyncio.get_running_loop()
        streams = [RequestStream(f"r{i}") for i in range(rows)]
        wake_ups = 0
        schedule = loop.call_soon_threadsafe

        def counted(*args, **kwargs):
            nonlocal wake_ups
            wake_ups += 1
            return schedule(*args, **kwargs)

        loop.call_soon_threadsafe = counted
        step_done, step_taken = threading.Event(), threading.Event()

        def engine():  # one token for every row per step, as the torch executor's step does
            for step in range(steps):
                for s in streams:
                    s.push(TokenEvent(s.request_id, step, str(step)))
                step_done.set()
                step_taken.wait()
                step_taken.clear()
            for s in streams:
                s.push(finished(s.request_id))

        async def collect(stream):
            return [event async for event in stream]

        consumers = [asyncio.ensure_future(collect(s)) for s in streams]
        thread = threading.Thread(target=engine)
        thread.start()
        for _ in range(steps):
            assert step_done.wait(timeout=30)  # blocks the loop: the whole step is pushed meanwhile
            step_done.clear()
            await asyncio.sleep(0)  # the loop runs on and delivers the step
            step_taken.set()
        during_steps = wake_ups
        events = await asyncio.gather(*consumers)
        thread.join()
        del loop.call_soon_threadsafe
        return events, during_steps

    events, wake_ups = asyncio.run(main())
    for i, got in enumerate(events):
        assert [e.token_id for e in got[:-1]] == list(range(steps))
        assert isinstance(got[-1], FinishedEvent) and got[-1].request_id == f"r{i}"
    assert wake_ups == steps  # rows x steps token events, one wake-up of the loop per step


def test_a_stream_whose_loop_is_gone_takes_events_without_error():
    loop = asyncio.new_event_loop()

    async def make():
        return RequestStream("r")

    stream = loop.run_until_complete(make())
    loop.close()
    stream.push(TokenEvent("r", 1, "a"))
    stream.push(finished("r"))
    assert stream.wait(timeout=1).request_id == "r"
    assert not stream._mailbox._items  # nothing kept for a loop that will never drain it
    gone = weakref.ref(loop)
    del loop
    gc.collect()
    assert gone() is None  # neither the stream nor the loop's mailbox keeps the loop
    stream.push(finished("r"))  # a loop freed: still taken without error
    assert not stream._mailbox._items
