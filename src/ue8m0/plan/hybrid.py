"""DeepSeek-V4's compressed attention: KV-cache bytes and attention FLOPs per sequence.

Every layer keeps a sliding window of the last ``window`` keys (one shared K=V head of
``head_dim``). A layer with compression ratio ``r > 0`` also attends to compressed entries, one per
``r`` tokens. What each layer stores and reads, for a sequence of ``T`` tokens (continuous
``T / r``, no rounding):

- ``kv_source`` layers store ``T / r`` compressed entries of ``head_dim`` (V4: every layer with
  ``r > 0``; V4.1: only the listed ``kv_source_layer_ids``, the others share their source's).
- ``index_source`` layers store ``T / r`` indexer keys of ``index_head_dim`` (V4: the CSA layers,
  ``r = 4``; V4.1: ``index_source_layer_ids``) and scan ``min(T / r, index_scan)`` of them per query
  (``index_scan`` unlimited in V4; V4.1's candidate blocks after its candidate layer).
- A query attends to ``min(T, window) + min(T / r, topk)`` entries (``topk`` = ``index_topk``
  where an indexer selects, unlimited for V4's HCA layers, which read every compressed entry).

Element bytes: ``bf16`` 2; ``fp8`` (DeepSeek's cache: non-RoPE dims FP8 with one FP32 scale per
128, RoPE dims BF16) ``(d − rope) + 4·ceil((d − rope)/128) + 2·rope`` per main entry and
``d + 4·ceil(d/128)`` per indexer key.

FLOPs per query token: ``4 · n_q · head_dim`` per attended entry (scores and context over the
shared K=V entry) plus ``2 · index_heads · index_head_dim`` per scanned indexer key.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


def _capped_sum(t: float, scale: float, cap: float | None) -> float:
    """``Σ_{p=1..t} min(p / scale, cap)`` in the continuous approximation (no floor)."""
    full = t * (t + 1) / (2 * scale)
    if cap is None or t <= cap * scale:
        return full
    knee = cap * scale
    return knee * (knee + 1) / (2 * scale) + (t - knee) * cap


@dataclass(frozen=True)
class HybridAttention:
    """Per-layer schedule of DeepSeek-V4 attention (see the module docstring)."""

    ratios: tuple[int, ...]
    kv_source: tuple[bool, ...]
    index_source: tuple[bool, ...]
    topk: tuple[int | None, ...]
    index_scan: tuple[int | None, ...]
    window: int
    head_dim: int
    rope_dim: int
    index_head_dim: int
    index_heads: int
    q_heads: int

    def _entry_bytes(self, kv_format: str, index: bool) -> float:
        d = self.index_head_dim if index else self.head_dim
        if kv_format == "bf16":
            return 2.0 * d
        if kv_format == "fp8":
            if index:
                return d + 4 * math.ceil(d / 128)
            nope = d - self.rope_dim
            return nope + 4 * math.ceil(nope / 128) + 2 * self.rope_dim
        raise ValueError(kv_format)

    def stored_bytes(self, context: float, kv_format: str) -> float:
        """KV-cache bytes one sequence of ``context`` tokens holds."""
        main, index = self._entry_bytes(kv_format, False), self._entry_bytes(kv_format, True)
        total = len(self.ratios) * min(context, self.window) * main
        for r, kv, ix in zip(self.ratios, self.kv_source, self.index_source, strict=True):
            if r:
                total += context / r * (main * kv + index * ix)
        return total

    def bytes_per_token(self, kv_format: str) -> float:
        """Long-context slope: stored bytes per extra token (the window excluded)."""
        return self.stored_bytes(2.0 * self.window + 1, kv_format) - self.stored_bytes(
            2.0 * self.window, kv_format
        )

    def read_bytes(self, context: float, kv_format: str) -> float:
        """KV bytes one decode step reads for one sequence at ``context`` tokens."""
        main, index = self._entry_bytes(kv_format, False), self._entry_bytes(kv_format, True)
        total = 0.0
        for r, ix, k, scan in zip(
            self.ratios, self.index_source, self.topk, self.index_scan, strict=True
        ):
            total += min(context, self.window) * main
            if r:
                entries = context / r
                total += (entries if k is None else min(entries, k)) * main
                if ix:
                    total += (entries if scan is None else min(entries, scan)) * index
        return total

    def _flops_per_entry(self) -> tuple[int, int]:
        return 4 * self.q_heads * self.head_dim, 2 * self.index_heads * self.index_head_dim

    def decode_flops(self, context: float) -> float:
        """Attention FLOPs of one query token at ``context`` tokens."""
        attend, scan_cost = self._flops_per_entry()
        total = 0.0
        for r, ix, k, scan in zip(
            self.ratios, self.index_source, self.topk, self.index_scan, strict=True
        ):
            n = min(context, self.window)
            if r:
                entries = context / r
                n += entries if k is None else min(entries, k)
                if ix:
                    total += scan_cost * (entries if scan is None else min(entries, scan))
            total += attend * n
        return total

    def prefill_flops(self, tokens: int) -> float:
        """Attention FLOPs of a prompt of ``tokens`` tokens: the decode FLOPs summed over its
        positions (continuous approximation)."""
        attend, scan_cost = self._flops_per_entry()
        total = 0.0
        for r, ix, k, scan in zip(
            self.ratios, self.index_source, self.topk, self.index_scan, strict=True
        ):
            n = _capped_sum(tokens, 1.0, float(self.window))
            if r:
                n += _capped_sum(tokens, r, None if k is None else float(k))
                if ix:
                    total += scan_cost * _capped_sum(
                        tokens, r, None if scan is None else float(scan)
                    )
            total += attend * n
        return total
