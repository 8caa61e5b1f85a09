"""One decode step of a Llama-family causal LM over a SlotKVCache, reading the HF model's weights.

transformers' caches assume one position for the whole batch; here every row has its own
(its slot's length), so the step is our own forward. It does what transformers' LlamaForCausalLM
does for one new token with SDPA attention, op for op (RMSNorm in float32, RoPE from the same
inv_freq, GQA via SDPA), so in float32 a row alone gets the reference logits to the bit; the HF
model stays the reference in tests. Prefill still runs through the HF model (its masks for
chunks and shared prefixes), and its KV is copied into the slots. In bfloat16 on CPU the step
takes faster kernels instead (oneDNN matmuls over weights reordered once, GQA by packing the
queries); those weights are copies, so a step built before the model's weights change in place
does not see the change.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .kv_cache import SlotKVCache

SUPPORTED = ("llama",)  # same block as SmolLM2: RMSNorm, RoPE, GQA, SiLU-gated MLP


class UnsupportedModelError(ValueError):
    """The model is not a Llama-family decoder this step can run."""


class LlamaDecodeStep:
    """Callable: (tokens [B] long, cache) -> logits [B, vocab] float32; rows are slots 0..B-1.

    Writes each row's new key/value at column cache.lengths[i] and advances the lengths.
    Raises UnsupportedModelError at construction for another architecture or RoPE type.
    """

    def __init__(self, model):
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
        # bf16 on CPU: oneDNN matmuls over weights reordered once run about twice as fast as
        # F.linear's bf16 path here; fp32 keeps F.linear, the reference's own kernel.
        self.packed = self.dtype == torch.bfloat16 and decoder.embed_tokens.weight.device.type == "cpu" \
            and _packed_linear_available()
        linear = _pack if self.packed else (lambda module: (F.linear, module.weight, module.bias))
        self.layers = []
        for layer in decoder.layers:
            attn, mlp = layer.self_attn, layer.mlp
            self.layers.append((
                layer.input_layernorm.weight, layer.input_layernorm.variance_epsilon,
                linear(attn.q_proj), linear(attn.k_proj), linear(attn.v_proj), linear(attn.o_proj),
                layer.post_attention_layernorm.weight, layer.post_attention_layernorm.variance_epsilon,
                linear(mlp.gate_proj), linear(mlp.up_proj), linear(mlp.down_proj),
            ))
        attn = decoder.layers[0].self_attn
        self.head_dim, self.scaling = attn.head_dim, attn.scaling
        self.groups = attn.num_key_value_groups
        self.heads = config.num_attention_heads
        self.kv_heads = config.num_key_value_heads
        self.embed = decoder.embed_tokens.weight
        self.norm = (decoder.norm.weight, decoder.norm.variance_epsilon)
        self.lm_head = linear(model.lm_head)
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
        # [B, 1, 1, head_dim]: broadcast over heads and the one query position
        return self._cos[positions][:, None, None, :], self._sin[positions][:, None, None, :]

    def __call__(self, tokens: torch.Tensor, cache: SlotKVCache) -> torch.Tensor:
        batch = tokens.shape[0]
        lengths = cache.lengths[:batch]
        width = max(lengths) + 1
        cache.reserve(batch, width)
        positions = torch.tensor(lengths, device=tokens.device)
        rows = torch.arange(batch, device=tokens.device)
        cos, sin = self._rope(positions, cache.capacity)
        # Rows of different lengths attend over the longest; a row alone (or rows of one length)
        # needs no mask, which keeps its numerics those of transformers' unpadded step.
        mask = None
        if min(lengths) != width - 1:
            mask = (torch.arange(width, device=tokens.device)[None, :] <= positions[:, None])[:, None, None, :]
        hidden = F.embedding(tokens[:, None], self.embed)  # [B, 1, hidden]
        for index, (ln1, eps1, q_proj, k_proj, v_proj, o_proj, ln2, eps2, gate, up, down) in enumerate(self.layers):
            residual = hidden
            hidden = _rms_norm(hidden, ln1, eps1)
            q = _apply(q_proj, hidden).view(batch, 1, -1, self.head_dim).transpose(1, 2)
            k = _apply(k_proj, hidden).view(batch, 1, -1, self.head_dim).transpose(1, 2)
            v = _apply(v_proj, hidden).view(batch, 1, -1, self.head_dim).transpose(1, 2)
            q = (q * cos) + (_rotate_half(q) * sin)
            k = (k * cos) + (_rotate_half(k) * sin)
            keys, values = cache.keys[index], cache.values[index]
            keys[rows, :, positions] = k[:, :, 0]
            values[rows, :, positions] = v[:, :, 0]
            keys, values = keys[:batch, :, :width], values[:batch, :, :width]
            if mask is None and not self.packed:  # transformers' kernel choice for an unpadded step
                out = F.scaled_dot_product_attention(q, keys, values, attn_mask=None, dropout_p=0.0,
                                                     scale=self.scaling, is_causal=False, enable_gqa=True)
            else:  # a KV head's query heads as its queries: GQA without repeating KV (5x faster in bf16)
                packed = q.reshape(batch, self.kv_heads, self.groups, self.head_dim)
                out = F.scaled_dot_product_attention(packed, keys, values, attn_mask=mask, dropout_p=0.0,
                                                     scale=self.scaling, is_causal=False)
                out = out.reshape(batch, -1, 1, self.head_dim)
            out = out.transpose(1, 2).contiguous().reshape(batch, 1, -1).contiguous()
            hidden = residual + _apply(o_proj, out)
            residual = hidden
            hidden = _rms_norm(hidden, ln2, eps2)
            hidden = residual + _apply(down, F.silu(_apply(gate, hidden)) * _apply(up, hidden))
        hidden = _rms_norm(hidden, *self.norm)
        for i in range(batch):
            cache.lengths[i] += 1
        return _apply(self.lm_head, hidden)[:, -1, :].float()


def _apply(linear, x: torch.Tensor) -> torch.Tensor:
    fn, weight, bias = linear
    return fn(x, weight, bias)


def _packed_linear_available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def _packed(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


def _pack(module):
    """(fn, weight, bias) of a bf16 nn.Linear as a oneDNN matmul over a weight reordered once
    (for batch 1; other batch sizes run on the same layout)."""
    return _packed, torch.ops.mkldnn._reorder_linear_weight(module.weight.detach(), 1), module.bias


def _rms_norm(hidden: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    dtype = hidden.dtype
    hidden = hidden.to(torch.float32)
    variance = hidden.pow(2).mean(-1, keepdim=True)
    hidden = hidden * torch.rsqrt(variance + eps)
    return weight * hidden.to(dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)
