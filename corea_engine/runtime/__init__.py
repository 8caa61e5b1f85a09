"""Runtimes behind one Executor interface: the embedded torch one and the SGLang one."""

from .executor import (
    ConfidenceEvent,
    ConfidenceReading,
    Executor,
    ExecutorError,
    FinishedEvent,
    InvalidRequestError,
    Request,
    RequestStream,
    Result,
    SamplingParams,
    TokenEvent,
)

__all__ = [
    "ConfidenceEvent", "ConfidenceReading", "Executor", "ExecutorError", "FinishedEvent",
    "InvalidRequestError", "Request", "RequestStream", "Result", "SamplingParams", "TokenEvent",
]
