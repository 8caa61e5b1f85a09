"""The confidence probe: when the runtime reads the model's confidence, and what it reads.

A `ConfidenceProbe` is built from a contract Format and a tokenizer, once (cached per tokenizer):

  prefix     the text after which the next token is the confidence symbol ("... \"confidence\": 0.")
  token_ids  the scale's symbols as token ids of this tokenizer, in scale order [K]
  values     what each symbol is worth [K]
  stop_after finish on the step the symbol is sampled (answer-first, stop_at_confidence): what
             follows is forced by the grammar and appended as `suffix` without decoding it

Executors know nothing else about answers: they compile the contract's grammar (`resolve` gives
grammar and probe for a Request) and, on a step whose row is armed (its text ends with the
prefix; sequence.py arms it), read one of two ways, giving the same numbers:

* from logits [n, V] (+ the grammar bitmask): `read_logits`, corea_kernels.confidence_stats over
  the rows, one host transfer per scale group;
* from an engine's log-probabilities of the scale tokens (SGLang's token_ids_logprob):
  `ConfidenceProbe.record_from_logprobs`.

Both give a record [expected, mass, entropy, *probs] (probs: the scale's share of the full masked
softmax, not normalised) — also what the SGLang logit processor (sglang_plugin.py) writes — and
`ConfidenceProbe.reading` turns a record and the sampled token into a ConfidenceReading.
"""

from __future__ import annotations

import functools
import math
import threading
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ..contract import Format
from .executor import ConfidenceReading, Constraint, Request

Record = list[float]  # [expected, mass, entropy, *probs]


@dataclass(frozen=True)
class ConfidenceProbe:
    """Where and what to read: see the module docstring. Hashable (groups rows by scale)."""

    prefix: str
    token_ids: tuple[int, ...]
    symbols: tuple[str, ...]
    values: tuple[float, ...]
    stop_after: bool = False
    suffix: str = ""

    @classmethod
    def for_format(cls, fmt: Format, tokenizer, *, stop_after: bool = True) -> "ConfidenceProbe":
        """The probe of `fmt` for `tokenizer` (cached per tokenizer); stop_after only for an answer-first
        format. ContractError when a scale symbol is not a single token of this tokenizer."""
        return _probes(tokenizer)(fmt, stop_after and not fmt.confidence_first)

    @property
    def scale_key(self) -> tuple:
        """Rows with equal keys are read by one kernel call."""
        return self.token_ids, self.values

    def value_of(self, token_id: int, token_text: str) -> float | None:
        """The value of the sampled symbol; None when the token is not on the scale. A token that
        starts with a symbol ("9}" in some vocabularies) counts as that symbol."""
        if token_id in self.token_ids:
            return self.values[self.token_ids.index(token_id)]
        symbol = token_text[:1]
        return self.values[self.symbols.index(symbol)] if symbol and symbol in self.symbols else None

    def record_from_logprobs(self, logprobs: Mapping[int, float]) -> Record:
        """The record from log-probabilities by token id at the confidence position (an engine's
        token_ids_logprob under the grammar mask). ValueError names missing scale token ids."""
        missing = [t for t in self.token_ids if t not in logprobs]
        if missing:
            raise ValueError(f"no log-probability for scale token ids {missing}")
        stats = stats_from_logprobs([logprobs[t] for t in self.token_ids], self.values)
        return [float(stats.expected[0]), float(stats.mass[0]), float(stats.entropy[0]), *stats.probs[0].tolist()]

    @staticmethod
    def reading(record: Sequence[float], sampled: float, position: int) -> ConfidenceReading:
        """A ConfidenceReading from a record; probs are normalised over the scale."""
        expected, mass, entropy, *probs = (float(x) for x in record)
        return ConfidenceReading(sampled=sampled, expected=expected, probs=tuple(p / max(mass, 1e-30) for p in probs),
                                 mass=mass, entropy=entropy, position=position)


_by_tokenizer: "weakref.WeakKeyDictionary[object, object]" = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def _probes(tokenizer):
    """A cached probe factory for one tokenizer (the scale's token ids are encoded once)."""
    with _lock:
        make = _by_tokenizer.get(tokenizer)
        if make is None:
            @functools.lru_cache(maxsize=64)
            def make(fmt: Format, stop_after: bool) -> ConfidenceProbe:
                scale = fmt.scale
                return ConfidenceProbe(prefix=fmt.confidence_prefix, token_ids=tuple(scale.token_ids(tokenizer)),
                                       symbols=scale.symbols, values=scale.values, stop_after=stop_after,
                                       suffix=fmt.confidence_suffix if stop_after else "")
            _by_tokenizer[tokenizer] = make
        return make


def resolve(request: Request, tokenizer) -> tuple[Constraint | None, ConfidenceProbe | None]:
    """(the grammar, the probe) a request asks of the runtime: a contract becomes its EBNF grammar and
    its probe; a caller's constraint stays as given, with no probe. The one place a contract is
    turned into what executors consume."""
    if request.contract is None:
        return request.grammar, None
    return request.grammar, ConfidenceProbe.for_format(request.format, tokenizer, stop_after=request.ends_on_confidence)


def read_logits(logits, scales: Sequence[tuple | None], bitmask=None) -> list[Record | None]:
    """The record of each row of `logits` [n, V] (float) read with scales[i] (a probe's scale_key:
    (token ids, values)), None for a row not read. bitmask: [n, ceil(V/32)] int32 (xgrammar's) or
    None (masked logits already -inf). corea_kernels.confidence_stats reads the rows of one scale in
    one call, and their results reach the host in one transfer."""
    import torch

    from corea_kernels import confidence_stats

    groups: dict[tuple, list[int]] = {}
    for i, scale in enumerate(scales):
        if scale is not None:
            groups.setdefault(scale, []).append(i)
    records: list[Record | None] = [None] * len(scales)
    device = logits.device
    for (token_ids, values), rows in groups.items():
        index = torch.tensor(rows, device=device)
        every = len(rows) == logits.shape[0]
        mask = None
        if bitmask is not None:  # row i of the bitmask is row i of the logits (it may have spare rows)
            mask = (bitmask if every and len(bitmask) == len(rows) else
                    bitmask.index_select(0, index.to(bitmask.device))).to(device)
        stats = confidence_stats(logits if every else logits.index_select(0, index),
                                 _tensor(token_ids, torch.long, device), _tensor(values, torch.float32, device), mask)
        table = torch.cat([stats.expected[:, None], stats.mass[:, None], stats.entropy[:, None], stats.probs], 1)
        for i, record in zip(rows, table.tolist()):
            records[i] = record
    return records


def stats_from_logprobs(logprobs: Sequence[float], values: Sequence[float]):
    """corea_kernels.ConfidenceStats [1 row] from the K log-probabilities of the scale's tokens.

    The kernel wants a logits row, so it gets a compact one of K + 1 entries: the K
    log-probabilities, then log(1 - sum p_k) standing for the rest of the vocabulary (-inf when the
    scale holds all the mass). Its log-normaliser is log(1) = 0, so probs are exactly the K
    probabilities given and mass, expected value and entropy come out as from the full [V] row."""
    import torch

    from corea_kernels import confidence_stats

    row = torch.tensor(list(logprobs), dtype=torch.float64)  # -inf, or an engine's float min: exp() gives 0
    rest = 1.0 - float(torch.exp(row).sum())
    rest_logit = math.log(rest) if rest > 1e-12 else float("-inf")
    compact = torch.cat([row, torch.tensor([rest_logit], dtype=torch.float64)]).float().unsqueeze(0)
    return confidence_stats(compact, torch.arange(len(row)), torch.tensor(values, dtype=torch.float32))


@functools.lru_cache(maxsize=64)
def _tensor(values: tuple, dtype, device):
    import torch

    return torch.tensor(values, dtype=dtype, device=device)


__all__ = ["ConfidenceProbe", "Record", "read_logits", "resolve", "stats_from_logprobs"]
