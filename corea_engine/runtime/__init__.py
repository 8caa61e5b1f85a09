"""Runtimes behind one Executor interface: the embedded torch one, a remote engine over the
SglangScheduler protocol (remote_executor.py) and the in-process SGLang one."""

from .executor import (
    ConfidenceEvent,
    ConfidenceReading,
    Constraint,
    Executor,
    ExecutorError,
    FinishedEvent,
    InvalidRequestError,
    OutOfRangeError,
    Request,
    RequestStream,
    Result,
    SamplingParams,
    TokenEvent,
    TokenLogprobs,
)
from .probe import ConfidenceProbe
from .sequence import Sequence

__all__ = [
    "ConfidenceEvent", "ConfidenceProbe", "ConfidenceReading", "Constraint", "Executor", "ExecutorError", "FinishedEvent",
    "InvalidRequestError", "OutOfRangeError", "Request", "RequestStream", "Result", "SamplingParams", "Sequence",
    "TokenEvent", "TokenLogprobs",
]
