"""One decode step of a Llama-family causal LM over a SlotKVCache, reading the HF model's weights.

transformers' caches assume one position for the whole batch; here every row has its own
(its slot's length), so the step is our own forward. It does what transformers' LlamaForCausalLM
does for one new token with SDPA attention, op for op (RMSNorm in float32, RoPE from the same
inv_freq, GQA via SDPA), so in float32 a row alone gets the reference logits to the bit; the HF
model stays the reference in tests. Prefill still runs through the HF model (its masks for
chunks and shared prefixes), and its KV is copied into the slots.

In bfloat16 (and float16) the step is free of that constraint and runs fewer, faster ops (bounds
in tests/test_bf16_tolerance.py): q, k and v as one matmul, gate and up as one, F.rms_norm, RoPE
on q and k together, GQA by packing a KV head's queries; on CPU the matmuls are oneDNN's over
weights reordered once, and attention runs decode_attention.cpp where it builds (`attention`).
Weight-only quantization (bf16 activations; torchao's names) stores every
decoder linear in fewer bytes, where a small batch is bound by reading them, and runs its bf16 copy
above MAX_ROWS[quantization] rows, where compute binds instead (the copy is kept only when a step
can have that many rows: `weights` says so); the lm_head stays bf16:
  - "int8wo": symmetric per-output-channel int8 (torch._weight_int8pack_mm);
  - "int4wo": asymmetric int4 in groups of INT4_GROUP_SIZE along the input (torch's CPU int4 kernel),
    GGUF Q4_1's layout: on the bundled SmolLM2, whose linears are Q4_1 in the file, it gives back the
    file's weights up to bf16 rounding of each block's scale and offset.
Bounds in tests/test_weight_only_tolerance.py. These weights are copies, so
a step built before the model's weights change in place does not see the change.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import decode_attention
from .dtypes import check_quantization
from .kv_cache import SlotKVCache

# A quantized step multiplies the quantized weights up to this many rows and the bf16 copy above.
# Measured 2026-11-30 (whole step, 1 thread, SmolLM2-135M, ~150-token context): int8 3-21% faster
# than bf16 at 1-4 rows, even at 8, slower at 16 (73 vs 55 ms, load 3-4); int4 9.0 vs 13.4 ms at 1
# row, 14.5 vs 18.4 at 4, 24.2 vs 24.3 at 8, 33.4 vs 30.8 at 12 (load ~2).
MAX_ROWS = {"int8wo": 4, "int4wo": 8}
INT4_GROUP_SIZE = 32  # GGUF Q4_1's block

SUPPORTED = ("llama",)  # same block as SmolLM2: RMSNorm, RoPE, GQA, SiLU-gated MLP


class UnsupportedModelError(ValueError):
    """The model is not a Llama-family decoder this step can run."""


class LlamaDecodeStep:
    """Callable: (tokens [B] long, cache) -> logits [B, vocab] float32; rows are slots 0..B-1.

    Writes each row's new key/value at column cache.lengths[i] and advances the lengths.
    quantization: "none", "int8wo" or "int4wo". max_rows: the most rows a step will run (None: any);
    a quantized step keeps its bf16 copy for steps above MAX_ROWS[quantization] rows only when max_rows
    exceeds it. `weights` describes the decoder weights a step multiplies, e.g. "int8wo (<= 4 rows)";
    "" for unquantized.
    `attention` names the attention kernel: "corea-cpu" (decode_attention.py: bf16 on a CPU that
    builds it) or "sdpa".
    Raises UnsupportedModelError at construction for another
    architecture or RoPE type, ValueError for a quantization dtypes.check_quantization refuses.
    """

    def __init__(self, model, quantization: str = "none", max_rows: int | None = None):
        config = model.config
        rope = getattr(config, "rope_parameters", None) or {"rope_type": "default"}
        if config.model_type not in SUPPORTED or rope.get("rope_type", "default") != "default":
            raise UnsupportedModelError(
                f"the decode step runs {', '.join(SUPPORTED)} models with default RoPE, not "
                f"{config.model_type!r} ({rope.get('rope_type')!r} RoPE)")
        if getattr(config, "hidden_act", "silu") != "silu":
            raise UnsupportedModelError(f"the decode step runs SiLU MLPs, not {config.hidden_act!r}")
        decoder = model.model
        self.dtype = decoder.embed_tokens.weight.dtype
        self.quantization = check_quantization(quantization, str(self.dtype).removeprefix("torch."),
                                               str(decoder.embed_tokens.weight.device))
        # float32 is the reference: op for op as transformers, F.linear (its kernel), unfused.
        self.reference = self.dtype == torch.float32 and quantization == "none"
        limit = MAX_ROWS.get(quantization, 0)
        dense_too = max_rows is None or max_rows > limit
        self.weights = "" if quantization == "none" else \
            f"{quantization} (<= {limit} rows)" if dense_too else quantization
        # bf16 on CPU: oneDNN matmuls over weights reordered once run about twice as fast as
        # F.linear's bf16 path here.
        self.packed = self.dtype == torch.bfloat16 and decoder.embed_tokens.weight.device.type == "cpu" \
            and _packed_linear_available()

        def linear(*modules):
            if self.reference:
                return _Linear(modules[0].weight, modules[0].bias)
            return _fused(modules, self.packed, quantization, dense_too)

        self.layers = []
        for layer in decoder.layers:
            attn, mlp = layer.self_attn, layer.mlp
            if self.reference:
                projections = (linear(attn.q_proj), linear(attn.k_proj), linear(attn.v_proj),
                               linear(mlp.gate_proj), linear(mlp.up_proj))
            else:
                projections = (linear(attn.q_proj, attn.k_proj, attn.v_proj), linear(mlp.gate_proj, mlp.up_proj))
            self.layers.append((
                layer.input_layernorm.weight, layer.input_layernorm.variance_epsilon, linear(attn.o_proj),
                layer.post_attention_layernorm.weight, layer.post_attention_layernorm.variance_epsilon,
                linear(mlp.down_proj), *projections))
        attn = decoder.layers[0].self_attn
        self.head_dim, self.scaling = attn.head_dim, attn.scaling
        self.groups = attn.num_key_value_groups
        self.heads = config.num_attention_heads
        self.kv_heads = config.num_key_value_heads
        self.hidden_size = config.hidden_size
        # decode_attention.cpp reads each row's live columns straight from the cache: about 4x
        # faster than SDPA over the padded slices at 8 rows (benchmarks/results/README.md).
        self.attention = "sdpa"
        if self.dtype == torch.bfloat16 and decoder.embed_tokens.weight.device.type == "cpu" \
                and decode_attention.unavailable_reason(self.groups, self.head_dim) is None:
            self.attention = "corea-cpu"
        self.embed = decoder.embed_tokens.weight
        self.norm = (decoder.norm.weight, decoder.norm.variance_epsilon)
        # The lm_head stays bf16 when quantized: int8 did not make the step faster (measured:
        # within noise at batch 1-4), and the logits, which the probe reads, stay closer to fp32.
        self.lm_head = linear(model.lm_head) if self.reference else _fused((model.lm_head,), self.packed, "none")
        self.inv_freq = decoder.rotary_emb.inv_freq
        self.rope_scaling = decoder.rotary_emb.attention_scaling
        self._cos = self._sin = None

    def new_cache(self, max_slots: int, max_len: int) -> SlotKVCache:
        return SlotKVCache(len(self.layers), self.kv_heads, self.head_dim, max_slots, max_len,
                           self.dtype, self.embed.device)

    def _rope(self, positions: torch.Tensor, capacity: int):
        # A table over every column the cache has: each entry is one product, so it equals what
        # transformers computes per step from position_ids.
        if self._cos is None or self._cos.shape[0] < capacity:
            freqs = torch.arange(capacity, device=self.inv_freq.device).float()[:, None] * self.inv_freq.float()
            emb = torch.cat((freqs, freqs), dim=-1)
            self._cos = (emb.cos() * self.rope_scaling).to(self.dtype)
            self._sin = (emb.sin() * self.rope_scaling).to(self.dtype)
            # rotate_half(x) * sin == roll(x, half) * signed_sin, exactly (a negation is exact)
            half = self.head_dim // 2
            self._signed_sin = torch.cat((-self._sin[:, :half], self._sin[:, half:]), dim=-1)
        return self._cos[positions], self._sin[positions], self._signed_sin[positions]

    def __call__(self, tokens: torch.Tensor, cache: SlotKVCache) -> torch.Tensor:
        batch = tokens.shape[0]
        lengths = cache.lengths[:batch]
        width = max(lengths) + 1
        cache.reserve(batch, width)
        positions = torch.tensor(lengths, device=tokens.device)
        rows = torch.arange(batch, device=tokens.device)
        rope = self._rope(positions, cache.capacity)
        # Rows of different lengths attend over the longest; a row alone (or rows of one length)
        # needs no mask, which keeps its numerics those of transformers' unpadded step.
        mask = None
        if min(lengths) != width - 1 and self.attention == "sdpa":
            mask = (torch.arange(width, device=tokens.device)[None, :] <= positions[:, None])[:, None, None, :]
        run = self._reference_layers if self.reference else self._fast_layers
        hidden = run(tokens, cache, rows, positions, width, rope, mask)
        for i in range(batch):
            cache.lengths[i] += 1
        return self.lm_head(hidden).reshape(batch, -1).float()

    def _reference_layers(self, tokens, cache, rows, positions, width, rope, mask):
        batch = tokens.shape[0]
        cos, sin = rope[0][:, None, None, :], rope[1][:, None, None, :]  # [B, 1, 1, head_dim]
        hidden = F.embedding(tokens[:, None], self.embed)  # [B, 1, hidden]
        for index, (ln1, eps1, o_proj, ln2, eps2, down, q_proj, k_proj, v_proj, gate, up) in enumerate(self.layers):
            residual = hidden
            hidden = _rms_norm(hidden, ln1, eps1)
            q = q_proj(hidden).view(batch, 1, -1, self.head_dim).transpose(1, 2)
            k = k_proj(hidden).view(batch, 1, -1, self.head_dim).transpose(1, 2)
            v = v_proj(hidden).view(batch, 1, -1, self.head_dim).transpose(1, 2)
            q = (q * cos) + (_rotate_half(q) * sin)
            k = (k * cos) + (_rotate_half(k) * sin)
            keys, values = cache.keys[index], cache.values[index]
            keys[rows, :, positions] = k[:, :, 0]
            values[rows, :, positions] = v[:, :, 0]
            keys, values = keys[:batch, :, :width], values[:batch, :, :width]
            if mask is None:  # transformers' kernel choice for an unpadded step
                out = F.scaled_dot_product_attention(q, keys, values, attn_mask=None, dropout_p=0.0,
                                                     scale=self.scaling, is_causal=False, enable_gqa=True)
            else:
                out = self._attend(q.reshape(batch, self.kv_heads, self.groups, self.head_dim), keys, values, mask)
            out = out.reshape(batch, -1, 1, self.head_dim).transpose(1, 2).contiguous().reshape(batch, 1, -1).contiguous()
            hidden = residual + o_proj(out)
            residual = hidden
            hidden = _rms_norm(hidden, ln2, eps2)
            hidden = residual + down(F.silu(gate(hidden)) * up(hidden))
        return _rms_norm(hidden, *self.norm)

    def _fast_layers(self, tokens, cache, rows, positions, width, rope, mask):
        batch, heads, kv_heads, dim = tokens.shape[0], self.heads, self.kv_heads, self.head_dim
        cos, signed_sin = rope[0][:, None, :], rope[2][:, None, :]  # [B, 1, head_dim]
        shape = (self.hidden_size,)
        hidden = F.embedding(tokens, self.embed)  # [B, hidden]
        for index, (ln1, eps1, o_proj, ln2, eps2, down, qkv_proj, gate_up) in enumerate(self.layers):
            qkv = qkv_proj(F.rms_norm(hidden, shape, ln1, eps1)).view(batch, heads + 2 * kv_heads, dim)
            qk = qkv[:, :heads + kv_heads]
            qk = torch.addcmul(qk * cos, qk.roll(dim // 2, -1), signed_sin)  # RoPE of q and k at once
            keys, values = cache.keys[index], cache.values[index]
            keys[rows, :, positions] = qk[:, heads:]
            values[rows, :, positions] = qkv[:, heads + kv_heads:]
            out = self._attend(qk[:, :heads].view(batch, kv_heads, self.groups, dim),
                               keys[:batch, :, :width], values[:batch, :, :width], mask, positions)
            hidden = hidden + o_proj(out.reshape(batch, -1))
            gate, up = gate_up(F.rms_norm(hidden, shape, ln2, eps2)).chunk(2, dim=-1)
            hidden = hidden + down(F.silu(gate) * up)
        return F.rms_norm(hidden, shape, *self.norm)

    def _attend(self, queries, keys, values, mask, positions=None):
        # A KV head's query heads as its queries: GQA without repeating KV (5x faster in bf16).
        # queries [B, kv_heads, groups, head_dim]; keys, values [B, kv_heads, width, head_dim]
        # (the kernel reads row b's columns 0..positions[b] and ignores mask and the padding)
        if self.attention == "corea-cpu":
            return decode_attention.decode_attention(queries, keys, values, positions, self.scaling).view(queries.shape)
        return F.scaled_dot_product_attention(queries, keys, values, attn_mask=mask, dropout_p=0.0,
                                              scale=self.scaling, is_causal=False)


class _Linear:
    """x [..., in] -> [..., out] through F.linear (any device and dtype)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None):
        self.weight, self.bias = weight, bias

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)


class _PackedLinear(_Linear):
    """A bf16 matmul through oneDNN over a weight reordered once (for batch 1; other batch sizes
    run on the same layout)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None):
        super().__init__(torch.ops.mkldnn._reorder_linear_weight(weight, 1), bias)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, "none", [], "")


class _WeightOnlyLinear:
    """Weight-only quantized: x [B, in] bf16 -> [B, out] bf16.

    Up to `max_rows` rows multiply the quantized weight (fewer bytes than bf16: a small batch is
    bound by reading them); more rows use `dense`, the bf16 linear, where compute binds instead
    (None where no step has more rows)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, quantization: str, dense):
        self.max_rows, self.bias, self.dense = MAX_ROWS[quantization], bias, dense
        if quantization == "int8wo":
            qweight, scales = quantize_int8(weight)
            self.matmul = lambda x: torch._weight_int8pack_mm(x, qweight, scales)
        else:
            packed, scales_and_zeros = quantize_int4(weight)
            self.matmul = lambda x: torch._weight_int4pack_mm_for_cpu(x, packed, INT4_GROUP_SIZE, scales_and_zeros)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.dense is not None and x.shape[0] > self.max_rows:
            return self.dense(x)
        out = self.matmul(x)
        return out if self.bias is None else out + self.bias


def quantize_int8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(int8 [out, in], scales [out] in weight's dtype) with weight ~= int8 * scales[:, None].

    Symmetric per output channel: a row's largest magnitude maps to 127. The scale is rounded to
    the weight's dtype before dividing, so the kernel's scale is the one the rounding used."""
    absmax = weight.detach().float().abs().amax(dim=1).clamp(min=1e-12)
    scales = (absmax / 127).to(weight.dtype)
    qweight = (weight.detach().float() / scales.float()[:, None]).round().clamp(-127, 127).to(torch.int8)
    return qweight.contiguous(), scales


def int4_blocks(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(q [out, in] int32 in 0..15, scales, mins [out, in / INT4_GROUP_SIZE] float32) with
    weight ~= q * scale + min per group of INT4_GROUP_SIZE inputs: each group's minimum maps to
    0 and its maximum to 15, as GGUF Q4_1 quantizes, so a Q4_1 weight's own blocks come back.
    Raises ValueError when `in` is not a multiple of INT4_GROUP_SIZE."""
    out, inputs = weight.shape
    if inputs % INT4_GROUP_SIZE:
        raise ValueError(f"int4wo needs input sizes that are multiples of {INT4_GROUP_SIZE}, not {inputs}")
    groups = weight.detach().float().reshape(out, inputs // INT4_GROUP_SIZE, INT4_GROUP_SIZE)
    mins = groups.amin(-1)
    scales = (groups.amax(-1) - mins) / 15
    step = torch.where(scales > 0, scales, torch.ones_like(scales))  # a constant group is all 0s
    q = ((groups - mins[..., None]) / step[..., None]).round().clamp(0, 15).to(torch.int32)
    return q.reshape(out, inputs), scales, mins


def quantize_int4(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(packed int4 weight, scales_and_zeros [in / INT4_GROUP_SIZE, out, 2] in weight's dtype) for
    torch._weight_int4pack_mm_for_cpu, which computes weight = (q - 8) * scale + zero per group.
    Raises ValueError for a shape the kernel cannot pack (outputs not a multiple of 16, inputs not
    a multiple of INT4_GROUP_SIZE): a clear start-up error, not torch's RuntimeError."""
    if weight.shape[0] % 16:
        raise ValueError(f"int4wo needs output sizes that are multiples of 16, not {weight.shape[0]}")
    q, scales, mins = int4_blocks(weight)
    zeros = mins + 8 * scales
    scales_and_zeros = torch.stack([scales, zeros], -1).transpose(0, 1).contiguous().to(weight.dtype)
    return torch._convert_weight_to_int4pack_for_cpu(q, 1), scales_and_zeros


def _fused(modules, packed: bool, quantization: str, dense_too: bool = True):
    """One linear computing every module's output, concatenated along the last dim in order.
    dense_too: a quantized linear keeps the bf16 linear for steps above MAX_ROWS rows."""
    weight = torch.cat([m.weight.detach() for m in modules]) if len(modules) > 1 else modules[0].weight.detach()
    biases = [m.bias for m in modules]
    bias = None
    if any(b is not None for b in biases):
        bias = torch.cat([b.detach() if b is not None else weight.new_zeros(m.weight.shape[0])
                          for b, m in zip(biases, modules)])
    linear = _PackedLinear if packed else _Linear
    if quantization == "none":
        return linear(weight, bias)
    return _WeightOnlyLinear(weight, bias, quantization, linear(weight, bias) if dense_too else None)


def _packed_linear_available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def _rms_norm(hidden: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    dtype = hidden.dtype
    hidden = hidden.to(torch.float32)
    variance = hidden.pow(2).mean(-1, keepdim=True)
    hidden = hidden * torch.rsqrt(variance + eps)
    return weight * hidden.to(dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)
