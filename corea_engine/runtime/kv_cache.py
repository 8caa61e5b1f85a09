"""Slot KV cache: row i of the running batch keeps its keys and values in slot i.

Each slot holds one sequence's positions 0..length-1 with no padding, so a row's next token
goes at column `length` (which is also its RoPE position). Admitting a sequence writes only its
own slot; retiring one moves the last row's live part into the freed slot (swap-remove), so the
rest of the batch is never copied. Storage grows by doubling (rows and columns) and is reused;
once no slot is live, storage wider than _KEEP_COLUMNS is freed, so one long request does not pin
slots x its length for the executor's lifetime.
"""

from __future__ import annotations

import torch

_COLUMN_BLOCK = 128  # columns are reserved in multiples of this
_KEEP_COLUMNS = 1024  # an idle cache keeps storage up to this width (typical requests reuse it)


class SlotKVCache:
    """keys, values: [layers, slots, kv_heads, capacity, head_dim]; `lengths[i]` live columns of slot i."""

    def __init__(self, layers: int, kv_heads: int, head_dim: int, max_slots: int, max_len: int,
                 dtype: torch.dtype, device: torch.device):
        self.shape = (layers, kv_heads, head_dim)
        self.max_slots, self.max_len = max_slots, max_len
        self.dtype, self.device = dtype, device
        self.keys = self.values = None
        self.lengths: list[int] = []

    @property
    def slots(self) -> int:
        return 0 if self.keys is None else self.keys.shape[1]

    @property
    def capacity(self) -> int:
        return 0 if self.keys is None else self.keys.shape[3]

    def reserve(self, rows: int, length: int) -> None:
        """Make room for `rows` slots of `length` columns (doubling; live contents are kept).

        Raises ValueError past max_slots or max_len."""
        if rows > self.max_slots or length > self.max_len:
            raise ValueError(f"KV cache of {self.max_slots} x {self.max_len} cannot hold {rows} x {length}")
        if rows <= self.slots and length <= self.capacity:
            return
        slots = min(self.max_slots, max(rows, 2 * self.slots))
        columns = self.capacity if length <= self.capacity else min(
            self.max_len, max(-(-length // _COLUMN_BLOCK) * _COLUMN_BLOCK, 2 * self.capacity))
        layers, kv_heads, head_dim = self.shape
        shape = (layers, slots, kv_heads, columns, head_dim)
        keys = torch.zeros(shape, dtype=self.dtype, device=self.device)
        values = torch.zeros(shape, dtype=self.dtype, device=self.device)
        if self.keys is not None and self.lengths:
            live, width = len(self.lengths), max(self.lengths)
            keys[:, :live, :, :width] = self.keys[:, :live, :, :width]
            values[:, :live, :, :width] = self.values[:, :live, :, :width]
        self.keys, self.values = keys, values

    def admit(self, layer_kv: list[tuple[torch.Tensor, torch.Tensor]], row: int, columns: torch.Tensor) -> int:
        """Append a prefilled sequence as the next slot; returns its slot.

        layer_kv: per layer (keys, values) [batch, kv_heads, width, head_dim] of a prefill;
        row: this sequence's row in it; columns: the sequence's real (unpadded) columns, in order."""
        slot, n = len(self.lengths), int(columns.numel())
        self.reserve(slot + 1, n)
        for layer, (k, v) in enumerate(layer_kv):
            self.keys[layer, slot, :, :n] = k[row].index_select(1, columns)
            self.values[layer, slot, :, :n] = v[row].index_select(1, columns)
        self.lengths.append(n)
        return slot

    def retire(self, slot: int) -> None:
        """Free `slot`; the last slot moves into it (the caller moves its row the same way)."""
        last = len(self.lengths) - 1
        if slot != last:
            n = self.lengths[last]
            self.keys[:, slot, :, :n] = self.keys[:, last, :, :n]
            self.values[:, slot, :, :n] = self.values[:, last, :, :n]
            self.lengths[slot] = n
        self.lengths.pop()
        self._release_if_idle()

    def clear(self) -> None:
        """Retire every slot (storage up to _KEEP_COLUMNS wide is kept)."""
        self.lengths = []
        self._release_if_idle()

    def _release_if_idle(self) -> None:
        if not self.lengths and self.capacity > _KEEP_COLUMNS:
            self.keys = self.values = None
