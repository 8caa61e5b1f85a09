"""The in-sampler confidence recorder: SGLang's serialisation and SGLang's apply_custom_logit_processor."""

from __future__ import annotations

import subprocess
import sys
import weakref

import torch

from sglang_helpers import (
    RequestRecordSink,
    FORMATS_UNDER_TEST,
    apply_custom_logit_processor,
    grammar_bitmasks,
    real_runs,
    request_for,
    sglang_batch,
    teacher_forced_logits,
)

from corea_engine.runtime.sglang_protocol import DEVICE_CONFIDENCE_KEY, PARAM_SCALE_IDS, PARAM_SCALE_VALUES
from corea_kernels import confidence_stats_reference, unpack_bitmask


def test_round_trips_sglang_serialisation():
    from sglang.srt.sampling.custom_logit_processor import CustomLogitProcessor

    from corea_engine.runtime.sglang_plugin import ConfidenceRecorder

    text = ConfidenceRecorder.to_str()
    assert isinstance(CustomLogitProcessor.from_str(text), ConfidenceRecorder)
    # The scheduler is another process: the class must resolve there from the string alone.
    code = (
        "import sys; from sglang.srt.sampling.custom_logit_processor import CustomLogitProcessor as C; "
        "p = C.from_str(sys.stdin.read()); print(type(p).__module__, type(p).__name__)"
    )
    out = subprocess.run([sys.executable, "-c", code], input=text, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["corea_engine.runtime.sglang_plugin", "ConfidenceRecorder"]


def test_records_the_reference_confidence_through_apply_custom_logit_processor(slm_executor):
    from corea_engine.runtime.sglang_plugin import ConfidenceRecorder

    # Rows at the confidence position of two real runs (json, tags), plus one row of a request
    # without the processor; SGLang hands the processor grammar-masked logits (-inf = masked).
    raw_rows, masks, sinks, params = [], [], [], []
    for name in ("json", "tags"):
        result = real_runs(slm_executor)[name]
        fmt = FORMATS_UNDER_TEST[name]
        p = result.confidence.position
        logits = teacher_forced_logits(slm_executor, request_for(name), result.token_ids)
        raw_rows.append(logits[p])
        masks.append(grammar_bitmasks(slm_executor, fmt, result.token_ids)[p])
        sink = RequestRecordSink()
        sinks.append(sink)
        params.append({
            PARAM_SCALE_IDS: fmt.scale.token_ids(slm_executor.tokenizer),
            PARAM_SCALE_VALUES: list(fmt.scale.values),
            "__req__": weakref.proxy(sink),
        })
    raw_rows.append(raw_rows[0] * 0.5)
    masks.append(masks[0])
    params.append(None)
    raw = torch.stack(raw_rows)
    bitmask = torch.stack(masks)
    masked = raw.masked_fill(~unpack_bitmask(bitmask, raw.shape[1]), float("-inf"))
    logits = masked.clone()
    processor_str = ConfidenceRecorder.to_str()

    apply_custom_logit_processor()(logits, sglang_batch(logits, params, processor_str, rows=[0, 1]))
    apply_custom_logit_processor()(logits, sglang_batch(logits, params, processor_str, rows=[0, 1]))  # next step

    assert torch.equal(logits, masked)  # an observer: sampling is untouched
    scale_ids = torch.tensor(params[0][PARAM_SCALE_IDS])
    values = torch.tensor(params[0][PARAM_SCALE_VALUES])
    # The reference: what the torch executor computes, raw logits with the bitmask in the kernel.
    want = confidence_stats_reference(raw[:2], scale_ids, values, bitmask[:2])
    for row, sink in enumerate(sinks):
        records = sink.customized_info[DEVICE_CONFIDENCE_KEY]
        assert len(records) == 2 and records[0] == records[1]  # one record per sampling step
        expected, mass, entropy, *probs = records[0]
        assert abs(expected - float(want.expected[row])) < 1e-6
        assert abs(mass - float(want.mass[row])) < 1e-6
        assert abs(entropy - float(want.entropy[row])) < 1e-5
        torch.testing.assert_close(torch.tensor(probs), want.probs[row], atol=1e-6, rtol=1e-5)
        assert mass > 0.99  # at the confidence position the grammar leaves only the scale


def test_rows_without_params_or_request_are_left_alone():
    from corea_engine.runtime.sglang_plugin import ConfidenceRecorder

    logits = torch.randn(2, 50)
    before = logits.clone()
    processor_str = ConfidenceRecorder.to_str()
    params = [None, {PARAM_SCALE_IDS: [3, 4], PARAM_SCALE_VALUES: [0.0, 1.0]}]  # no __req__: nowhere to record
    apply_custom_logit_processor()(logits, sglang_batch(logits, params, processor_str, rows=[0, 1]))
    assert torch.equal(logits, before)
