"""The confidence kernel hosted inside SGLang's sampler, as a custom logit processor.

SGLang applies custom logit processors to the device logits after the grammar mask, right
before sampling (sglang.srt.layers.sampler.apply_custom_logit_processor). This processor leaves
the logits untouched and, for every row that asks for it (custom_params carry the scale token
ids and values of its ConfidenceProbe), reads that row with probe.read_logits as the torch
executor does (corea_kernels.confidence_stats: the Triton kernel on CUDA, the torch reference
elsewhere). Masked tokens are already -inf there, so no bitmask is passed; the result is the
torch executor's masked distribution.

Each call appends one record [expected, mass, entropy, *probs] to the request's
``customized_info[DEVICE_CONFIDENCE_KEY]`` (SGLang hands the processor a weak proxy of its Req as
custom_params['__req__']); SGLang's output streamer slices such per-token lists alongside the
output ids and the tokenizer manager puts them in meta_info under the same key. The executor
reads the record at the confidence position. This assumes one processor call per output token
(no speculative decoding) and is not exercised on a running engine in CI.

SGLang ships the processor to the scheduler as dill-pickled class (to_str / from_str); the class
is pickled by reference, so corea_engine must be importable where the scheduler runs.
"""

from __future__ import annotations

import torch
from sglang.srt.sampling.custom_logit_processor import CustomLogitProcessor

from .probe import read_logits
from .sglang_protocol import DEVICE_CONFIDENCE_KEY, PARAM_SCALE_IDS, PARAM_SCALE_VALUES


class ConfidenceRecorder(CustomLogitProcessor):
    """Records the confidence distribution of each opted-in row; returns the logits unchanged."""

    def __call__(self, logits: torch.Tensor, custom_param_list=None) -> torch.Tensor:
        if not custom_param_list:
            return logits
        scales = [(tuple(p[PARAM_SCALE_IDS]), tuple(p[PARAM_SCALE_VALUES])) if p and PARAM_SCALE_IDS in p else None
                  for p in custom_param_list]
        if any(scales):  # the probe's reading, as the torch executor makes it (one host copy per scale)
            for params, record in zip(custom_param_list, read_logits(logits, scales)):
                if record is not None:
                    record_on(params.get("__req__"), record)
        return logits


def record_on(req, record: list[float]) -> None:
    """Append one per-token record to an SGLang Req's customized_info (None: nowhere to put it)."""
    if req is None:
        return
    if req.customized_info is None:
        req.customized_info = {}
    req.customized_info.setdefault(DEVICE_CONFIDENCE_KEY, []).append(record)
