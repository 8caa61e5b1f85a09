"""The confidence kernel hosted inside SGLang's sampler, as a custom logit processor.

SGLang applies custom logit processors to the device logits after the grammar mask, right
before sampling (sglang.srt.layers.sampler.apply_custom_logit_processor). This processor leaves
the logits untouched and, for every row that asks for it (custom_params carry the scale token
ids and values), runs corea_kernels.confidence_stats on that row: the Triton kernel on CUDA,
the torch reference elsewhere. Masked tokens are already -inf there, so no bitmask is passed;
the result is the torch executor's masked distribution.

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

from .sglang_protocol import DEVICE_CONFIDENCE_KEY, PARAM_SCALE_IDS, PARAM_SCALE_VALUES


class ConfidenceRecorder(CustomLogitProcessor):
    """Records the confidence distribution of each opted-in row; returns the logits unchanged."""

    def __call__(self, logits: torch.Tensor, custom_param_list=None) -> torch.Tensor:
        from corea_kernels import confidence_stats

        if not custom_param_list:
            return logits
        groups: dict[tuple, list[int]] = {}
        for row, params in enumerate(custom_param_list):
            if params and PARAM_SCALE_IDS in params:
                key = (tuple(params[PARAM_SCALE_IDS]), tuple(params[PARAM_SCALE_VALUES]))
                groups.setdefault(key, []).append(row)
        for (ids, values), rows in groups.items():
            index = torch.tensor(rows, device=logits.device)
            stats = confidence_stats(
                logits.index_select(0, index),
                torch.tensor(ids, device=logits.device),
                torch.tensor(values, dtype=torch.float32, device=logits.device),
            )
            records = torch.cat(
                [stats.expected[:, None], stats.mass[:, None], stats.entropy[:, None], stats.probs], dim=1
            ).tolist()  # one host copy per step for all opted-in rows
            for row, record in zip(rows, records):
                record_on(custom_param_list[row].get("__req__"), record)
        return logits


def record_on(req, record: list[float]) -> None:
    """Append one per-token record to an SGLang Req's customized_info (None: nowhere to put it)."""
    if req is None:
        return
    if req.customized_info is None:
        req.customized_info = {}
    req.customized_info.setdefault(DEVICE_CONFIDENCE_KEY, []).append(record)
