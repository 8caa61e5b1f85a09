"""The Executor interface and the messages that cross it.

Every runtime (the embedded torch one, the SGLang one) takes a `Request`, streams `TokenEvent`s,
at most one `ConfidenceEvent` and one final `FinishedEvent`, and can abort a request by id.
A request is chat messages, raw text or token ids; its output may follow our answer contract or
any grammar (`Constraint`: EBNF, JSON schema or regex, SGLang's three), and may ask for the
log-probabilities of chosen tokens at every position (`TokenLogprobs` on each TokenEvent).
Streams work from plain threads (iterate) and from asyncio (async iterate); the runtime's own
engine runs wherever it likes and pushes events in.

Executors know grammars and the confidence probe (probe.py), not answers: each request's output
goes through the shared Sequence (sequence.py), and the Result carries text that the cascade's
check_contract parses.
"""

from __future__ import annotations

import asyncio
import contextvars
import itertools
import math
import queue
import threading
import weakref
from abc import ABC, abstractmethod
from collections import deque
from dataclasses import dataclass, field

from ..contract import Format, UnknownFormatError, get_format

MAX_NEW_TOKENS_LIMIT = 4096
DEFAULT_FREE_TEXT_TOKENS = 256


class ExecutorError(RuntimeError):
    """The runtime could not serve a request (it stays up for others)."""


class InvalidRequestError(ValueError):
    """A request that is refused before it reaches the batch; the message names the field."""


class OutOfRangeError(InvalidRequestError):
    """A well-formed value beyond what this runtime grants (a token budget over the cap)."""


# The grammar kinds (SGLang's names) and their fields in the SglangScheduler protocol's SamplingParams.
CONSTRAINT_PROTO_FIELDS = {"ebnf": "ebnf_grammar", "json_schema": "json_schema", "regex": "regex"}
CONSTRAINT_KINDS = tuple(CONSTRAINT_PROTO_FIELDS)
MAX_TOP_LOGPROBS = 20  # OpenAI's bound on top_logprobs


@dataclass(frozen=True)
class Constraint:
    """A grammar the output must match. kind: "ebnf" (xgrammar's EBNF), "json_schema" (a JSON
    schema as text) or "regex"; source: its text. Compiled for the runtime's tokenizer at submit."""

    kind: str
    source: str


# Sampling ranges that are numerically safe in float32: below MIN_TEMPERATURE, logits / T overflow
# to inf (a Python float like 1e-300 even becomes 0 in a float32 tensor); below MIN_TOP_P the
# nucleus cut-off underflows the same way. Temperature 0 means greedy and needs neither.
MIN_TEMPERATURE, MAX_TEMPERATURE = 0.01, 10.0
MIN_TOP_P = 0.01
MAX_SEED = 2**63 - 1  # int64: what torch and SGLang both take


@dataclass
class SamplingParams:
    """How tokens are chosen. The one place their ranges are checked (every executor, every service):

    temperature: 0 (greedy) or in [MIN_TEMPERATURE, MAX_TEMPERATURE]; top_p in [MIN_TOP_P, 1];
    seed in [0, 2**63 - 1] or None; max_new_tokens in [1, MAX_NEW_TOKENS_LIMIT] or None.
    validate() raises InvalidRequestError naming the field.
    """

    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    seed: int | None = None
    max_new_tokens: int | None = None  # None: the contract's worst case, or 256 for free text
    top_k: int = -1  # -1: every token
    stop: tuple[str, ...] = ()  # finish when the text contains one (cut before it)
    stop_token_ids: tuple[int, ...] = ()  # finish on one of these tokens (not part of the output)

    def validate(self) -> None:
        if self.max_new_tokens is not None:
            if not (_is_int(self.max_new_tokens) and self.max_new_tokens >= 1):
                raise InvalidRequestError(f"max_new_tokens must be an integer >= 1, got {self.max_new_tokens!r}")
            if self.max_new_tokens > MAX_NEW_TOKENS_LIMIT:
                raise OutOfRangeError(f"max_new_tokens is {self.max_new_tokens}; the limit is {MAX_NEW_TOKENS_LIMIT}")
        if not (self.top_k == -1 or (_is_int(self.top_k) and self.top_k >= 1)):
            raise InvalidRequestError(f"top_k must be -1 (off) or >= 1, got {self.top_k!r}")
        if not all(isinstance(s, str) and s for s in self.stop):
            raise InvalidRequestError("stop strings must be non-empty")
        t = self.temperature
        if not (_is_real(t) and (t == 0 or MIN_TEMPERATURE <= t <= MAX_TEMPERATURE)):
            raise InvalidRequestError(
                f"temperature must be 0 (greedy) or in [{MIN_TEMPERATURE}, {MAX_TEMPERATURE}], got {t!r}")
        if not (_is_real(self.top_p) and MIN_TOP_P <= self.top_p <= 1.0):
            raise InvalidRequestError(f"top_p must be in [{MIN_TOP_P}, 1], got {self.top_p!r}")
        if self.seed is not None and not (_is_int(self.seed) and 0 <= self.seed <= MAX_SEED):
            raise InvalidRequestError(f"seed must be an integer in [0, 2**63 - 1], got {self.seed!r}")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_real(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


_ids = itertools.count()


def new_request_id(prefix: str = "req") -> str:
    return f"{prefix}-{next(_ids)}"


@dataclass
class Request:
    """One generation. Give `messages` (chat), `prompt` (raw text, no chat template) or
    `input_ids` (already tokenized for this runtime's tokenizer)."""

    messages: list[dict] | None = None
    prompt: str | None = None
    contract: str | Format | None = None  # None = free text, no grammar
    sampling: SamplingParams = field(default_factory=SamplingParams)
    # Answer-first contracts: finish on the confidence step (the rest is forced text).
    stop_at_confidence: bool = True
    request_id: str = field(default_factory=new_request_id)
    input_ids: list[int] | None = None
    constraint: Constraint | None = None  # a grammar of the caller's (not with `contract`)
    # Per output position (TokenEvent.logprobs): the logprobs of these token ids, of the emitted
    # token (return_logprob) and of the top_logprobs_num most likely tokens.
    logprob_token_ids: tuple[int, ...] = ()
    return_logprob: bool = False
    top_logprobs_num: int = 0

    @property
    def wants_logprobs(self) -> bool:
        return bool(self.logprob_token_ids) or self.return_logprob or self.top_logprobs_num > 0

    @property
    def format(self) -> Format | None:
        return None if self.contract is None else get_format(self.contract)

    @property
    def ends_on_confidence(self) -> bool:
        """An answer-first contract that finishes on the confidence step (the rest is forced text)."""
        return self.contract is not None and self.stop_at_confidence and not self.format.confidence_first

    @property
    def grammar(self) -> Constraint | None:
        """The grammar the output must match: the contract's (EBNF), the caller's constraint, or None."""
        return Constraint("ebnf", self.format.ebnf()) if self.contract is not None else self.constraint

    @property
    def max_new_tokens(self) -> int:
        """The token budget: as asked, else enough for the contract's longest output."""
        if self.sampling.max_new_tokens is not None:
            return self.sampling.max_new_tokens
        return self.format.max_tokens if self.contract is not None else DEFAULT_FREE_TEXT_TOKENS

    def validate(self, max_prompt_chars: int) -> None:
        if sum(x is not None for x in (self.messages, self.prompt, self.input_ids)) != 1:
            raise InvalidRequestError("give exactly one of messages, prompt or input_ids")
        if self.contract is not None and self.constraint is not None:
            raise InvalidRequestError("give a contract or a constraint, not both")
        if self.constraint is not None and self.constraint.kind not in CONSTRAINT_KINDS:
            raise InvalidRequestError(f"constraint kind must be one of {', '.join(CONSTRAINT_KINDS)}, got {self.constraint.kind!r}")
        if not (isinstance(self.top_logprobs_num, int) and 0 <= self.top_logprobs_num <= MAX_TOP_LOGPROBS):
            raise InvalidRequestError(f"top_logprobs_num must be in [0, {MAX_TOP_LOGPROBS}], got {self.top_logprobs_num!r}")
        self.sampling.validate()
        if self.input_ids is not None:
            if not self.input_ids:
                raise InvalidRequestError("input_ids is empty")
            return
        if self.prompt is not None:
            text = self.prompt
        else:
            if not self.messages or not all(isinstance(m, dict) and "content" in m for m in self.messages):
                raise InvalidRequestError("messages must be a non-empty list of {'role', 'content'}")
            if not all(isinstance(m.get("content"), str) for m in self.messages):
                raise InvalidRequestError("every message content must be a string")
            text = "".join(m["content"] for m in self.messages)
        question = self.prompt if self.prompt is not None else self.messages[-1]["content"]
        if not question.strip():
            raise InvalidRequestError("the question is empty")
        if len(text) > max_prompt_chars:
            raise InvalidRequestError(f"the prompt is {len(text)} characters; the limit is {max_prompt_chars}")
        try:
            self.format
        except UnknownFormatError as err:
            raise InvalidRequestError(str(err)) from None

    def check_token_ids(self, vocab_size: int) -> None:
        """Every token id the request names must be in [0, vocab_size); the error names the field."""
        for name, ids in (("input_ids", self.input_ids or ()), ("stop_token_ids", self.sampling.stop_token_ids),
                          ("token_ids_logprob", self.logprob_token_ids)):
            for i, token in enumerate(ids):
                if not (isinstance(token, int) and 0 <= token < vocab_size):
                    raise InvalidRequestError(f"{name}[{i}] = {token!r} is outside the vocabulary (0..{vocab_size - 1})")


@dataclass(frozen=True)
class ConfidenceReading:
    """The model's confidence at the confidence position.

    sampled: the value of the symbol actually emitted; expected: the mean of the scale under
    the model's distribution there (the continuous confidence); probs: that distribution over
    the scale symbols (normalised); mass: how much of the raw softmax was on the scale;
    position: completion tokens generated before the confidence symbol.
    """

    sampled: float
    expected: float
    probs: tuple[float, ...]
    mass: float
    entropy: float
    position: int


@dataclass
class Result:
    """What a request produced: text (cut before a stop string; an answer-first contract's forced
    closing text appended), never parsed here (the cascade's check_contract makes it an answer)."""

    request_id: str
    text: str
    finish_reason: str  # "confidence" | "stop" | "length" | "abort" | "error"
    prompt_tokens: int = 0
    completion_tokens: int = 0
    confidence: ConfidenceReading | None = None
    error: str | None = None
    latency_s: float = 0.0
    time_to_confidence_s: float | None = None
    token_ids: list[int] = field(default_factory=list)
    matched_stop: int | str | None = None  # the stop token id or stop string that finished it


@dataclass(frozen=True)
class TokenLogprobs:
    """Natural-log probabilities at one output position, from the raw log-softmax of the step's
    logits (before temperature, top-p/top-k and the grammar mask).

    logprob: of the emitted token; top: (token id, logprob) of the most likely tokens, most likely
    first (Request.top_logprobs_num of them); selected: of each Request.logprob_token_ids, in order.
    """

    logprob: float
    top: tuple[tuple[int, float], ...] = ()
    selected: tuple[float, ...] = ()


@dataclass(frozen=True)
class TokenEvent:
    request_id: str
    # None only for the last event of a request that ends with text still held back: it carries
    # that text and is no output token.
    token_id: int | None
    # The newly decoded text: "" until a multi-byte character completes, and text that may start a
    # stop string waits until it cannot; joined over a request's events it is Result.text.
    text: str
    logprobs: TokenLogprobs | None = None  # when the request asked for any


@dataclass(frozen=True)
class ConfidenceEvent:
    request_id: str
    reading: ConfidenceReading


@dataclass(frozen=True)
class FinishedEvent:
    request_id: str
    result: Result


Event = TokenEvent | ConfidenceEvent | FinishedEvent


# The loop a stream made off the loop belongs to (Executor.submit_async sets it in its thread).
_consumer_loop: contextvars.ContextVar[asyncio.AbstractEventLoop | None] = contextvars.ContextVar(
    "corea_consumer_loop", default=None)


class _Mailbox:
    """Events bound for one event loop's streams, handed over in one wake-up of the loop: an
    engine step pushes a token for every row, and the loop takes them all at once instead of
    being woken (and taking the GIL) once per event."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        # Weak: the mailbox is the loop's value in _mailboxes, so a strong one would keep it forever.
        self._loop = weakref.ref(loop)
        self._items: deque = deque()
        self._lock = threading.Lock()
        self._scheduled = False

    def post(self, target: asyncio.Queue, event: Event) -> None:
        loop = self._loop()
        if loop is None or loop.is_closed():  # the consumer's loop is gone; nobody is listening
            return
        self._items.append((target, event))
        with self._lock:
            if self._scheduled:  # a drain is pending and will see this event
                return
            self._scheduled = True
        try:
            loop.call_soon_threadsafe(self._drain)
        except RuntimeError:  # the loop closed since the check above: drop what it will never take
            with self._lock:
                self._scheduled = False
                self._items.clear()

    def _drain(self) -> None:
        with self._lock:  # first: an event posted from here on schedules another drain
            self._scheduled = False
        items = self._items
        while items:
            target, event = items.popleft()
            target.put_nowait(event)


_mailboxes: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Mailbox]" = weakref.WeakKeyDictionary()
_mailboxes_lock = threading.Lock()


def _mailbox(loop: asyncio.AbstractEventLoop) -> _Mailbox:
    with _mailboxes_lock:
        box = _mailboxes.get(loop)
        if box is None:
            box = _mailboxes[loop] = _Mailbox(loop)
        return box


class RequestStream:
    """Events of one request, in order, ending with a FinishedEvent.

    Created inside a running event loop (or by submit_async for one) it is an async iterator;
    otherwise a blocking one. `push` is safe to call from any thread.
    """

    def __init__(self, request_id: str):
        self.request_id = request_id
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = _consumer_loop.get()
        # asyncio.Queue binds to a loop on first use, so one made in submit_async's thread is fine.
        self._queue: asyncio.Queue | queue.SimpleQueue = asyncio.Queue() if loop else queue.SimpleQueue()
        self._mailbox = _mailbox(loop) if loop else None  # None: a blocking stream
        self._done = threading.Event()
        self.result: Result | None = None

    def push(self, event: Event) -> None:
        if isinstance(event, FinishedEvent):
            self.result = event.result
        if self._mailbox is None:
            self._queue.put(event)
        else:
            self._mailbox.post(self._queue, event)
        if isinstance(event, FinishedEvent):
            self._done.set()

    def __iter__(self):
        if self._mailbox is not None:
            raise ExecutorError("this stream was opened in an event loop: use 'async for'")
        while True:
            event = self._queue.get()
            yield event
            if isinstance(event, FinishedEvent):
                return

    async def __aiter__(self):
        if self._mailbox is None:
            raise ExecutorError("this stream was opened outside an event loop: use 'for'")
        while True:
            event = await self._queue.get()
            yield event
            if isinstance(event, FinishedEvent):
                return

    def wait(self, timeout: float | None = None) -> Result:
        """Block until the request finishes (any thread)."""
        if not self._done.wait(timeout):
            raise TimeoutError(f"request {self.request_id} did not finish in {timeout} s")
        return self.result


class Executor(ABC):
    """A runtime that serves generation requests concurrently."""

    model_name: str
    # Where an in-process executor computes, for start-up lines and GetServerInfo: e.g.
    # 'cpu, bfloat16' (what --dtype auto chose) or 'cpu, bfloat16, int8wo (<= 4 rows)'; '' otherwise.
    runtime: str = ""

    @abstractmethod
    def submit(self, request: Request) -> RequestStream:
        """Validate and enqueue; raises InvalidRequestError before anything is queued."""

    @abstractmethod
    def abort(self, request_id: str) -> bool:
        """Stop a request; it finishes with finish_reason 'abort'. False if it is not running."""

    @abstractmethod
    def load(self) -> tuple[int, int]:
        """(running, waiting): requests in the batch now and requests queued for it."""

    def close(self) -> None:
        """Release the model and threads; pending requests finish with 'abort'."""

    async def submit_async(self, request: Request) -> RequestStream:
        """submit() on a worker thread, for callers on an event loop: tokenizing and compiling a
        grammar (up to seconds for a new schema) then hold up none of the loop's other requests.
        The stream is this loop's async iterator. Raises what submit raises; cancelled while
        submitting, the request is aborted once it is queued."""
        loop = asyncio.get_running_loop()

        def submit() -> RequestStream:
            _consumer_loop.set(loop)  # in to_thread's copy of the context: this call only
            return self.submit(request)

        task = asyncio.ensure_future(asyncio.to_thread(submit))
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            task.add_done_callback(lambda t: t.cancelled() or t.exception() or self.abort(request.request_id))
            raise

    def generate(self, request: Request) -> Result:
        """Submit and block until the result (from a thread that is not running an event loop)."""
        return self.submit(request).wait()

    async def generate_async(self, request: Request) -> Result:
        async for event in self.submit(request):
            if isinstance(event, FinishedEvent):
                return event.result
        raise ExecutorError("stream ended without a result")  # pragma: no cover

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
