"""A circuit breaker for the escalation tier.

closed: calls go through. After `failures` consecutive failures it opens: calls are refused
at once (the cascade answers degraded instead of waiting on a dead LLM). After `cooldown_s` it
is half-open: one trial call goes through; success closes it, failure opens it again.
"""

from __future__ import annotations

import time
from typing import Callable

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"


class CircuitBreaker:
    def __init__(self, failures: int = 5, cooldown_s: float = 10.0, clock: Callable[[], float] = time.monotonic):
        if failures < 1:
            raise ValueError(f"breaker failures must be >= 1, got {failures}")
        self.failures = failures
        self.cooldown_s = cooldown_s
        self._clock = clock
        self._state = CLOSED
        self._consecutive = 0
        self._opened_at = 0.0
        self._trial_in_flight = False

    @property
    def state(self) -> str:
        if self._state == OPEN and self._clock() - self._opened_at >= self.cooldown_s:
            return HALF_OPEN
        return self._state

    def allow(self) -> bool:
        """May a call go out now? In half-open state only one trial at a time."""
        state = self.state
        if state == CLOSED:
            return True
        if state == HALF_OPEN and not self._trial_in_flight:
            self._state, self._trial_in_flight = HALF_OPEN, True
            return True
        return False

    def would_allow(self) -> bool:
        """Like allow() but takes no trial slot (to decide whether to try at all)."""
        state = self.state
        return state == CLOSED or (state == HALF_OPEN and not self._trial_in_flight)

    def record_success(self) -> None:
        self._state, self._consecutive, self._trial_in_flight = CLOSED, 0, False

    def record_failure(self) -> None:
        self._consecutive += 1
        if self._state == HALF_OPEN or self._consecutive >= self.failures:
            self._state, self._opened_at = OPEN, self._clock()
        self._trial_in_flight = False

    def release(self) -> None:
        """A call ended with neither verdict (cancelled, refused input): free the trial slot."""
        self._trial_in_flight = False
