"""The one transformer core shared by LLaDA and Dream.

Every strategy (vanilla, window, prefix/dual cache) runs this forward. They differ only in
*which* positions they feed as queries, where the keys/values come from, and which cache rows
they write. That choice is an ``Attend`` object handed to ``DiffusionLM.forward``.

Shapes: B batch, T query tokens, S key tokens, H heads, G kv heads, D head dim, C model width.
Positions are always absolute canvas positions; the K/V cache is indexed by absolute position.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass(frozen=True)
class ModelArgs:
    family: str  # "llada" | "dream"
    d_model: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    mlp_hidden: int
    vocab_size: int
    rope_theta: float
    norm_eps: float
    max_positions: int
    qkv_bias: bool
    tie_embeddings: bool
    shift_logits: bool  # Dream: logits at p predict token p+1 (AR init)
    rope_fp32: bool  # LLaDA applies RoPE in fp32; Dream casts cos/sin to the activation dtype
    mask_id: int
    eos_id: int | None
    pad_id: int | None
    input_emb_scale: float = 1.0
    logit_scale: float = 1.0

    def linear_params_per_token(self) -> int:
        """Multiply-accumulates per token in all linear layers (blocks + LM head)."""
        c, d = self.d_model, self.head_dim
        attn = c * self.n_heads * d * 2 + c * self.n_kv_heads * d * 2
        mlp = 3 * c * self.mlp_hidden
        return self.n_layers * (attn + mlp) + c * self.vocab_size


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32:  # fused kernel; same math as below when no cast is involved
            return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class RopeTable:
    """cos/sin rows for absolute positions 0..n-1, grown on demand, gathered by position."""

    def __init__(self, head_dim: int, theta: float):
        self.head_dim, self.theta = head_dim, theta
        self.cos = self.sin = None

    def lookup(self, pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n = int(pos.max()) + 1
        if self.cos is None or self.cos.shape[0] < n or self.cos.device != pos.device:
            size = max(n, 256 if self.cos is None else 2 * self.cos.shape[0])
            d = self.head_dim
            inv_freq = 1.0 / (self.theta ** (torch.arange(0, d, 2, device=pos.device, dtype=torch.float) / d))
            seq = torch.arange(size, device=pos.device, dtype=torch.float)
            freqs = torch.outer(seq, inv_freq)
            emb = torch.cat((freqs, freqs), dim=-1)  # (n, D)
            self.cos, self.sin = emb.cos(), emb.sin()
        return self.cos[pos].unsqueeze(1), self.sin[pos].unsqueeze(1)  # (B, 1, T, D)


def apply_rope(t: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, fp32: bool) -> torch.Tensor:
    if fp32:
        tf = t.float()
        return (tf * cos + rotate_half(tf) * sin).to(t.dtype)
    cos, sin = cos.to(t.dtype), sin.to(t.dtype)
    return t * cos + rotate_half(t) * sin


class KVCache:
    """Per-layer post-RoPE keys/values, (B, G, N+1, D), row = absolute position.

    Row N is a scratch row: padded query slots of ragged batches write there and it is never
    attended. Allocated once per generation call.
    """

    def __init__(self, args: ModelArgs, batch: int, length: int, device, dtype):
        shape = (batch, args.n_kv_heads, length + 1, args.head_dim)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(args.n_layers)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(args.n_layers)]
        self.length = length

    @property
    def scratch(self) -> int:
        return self.length


class Attend:
    """Where keys come from and what is written: the only thing a strategy varies.

    - ``rows``: (b,) cache rows of the batch being computed (None = all rows in order).
    - ``write``: where the new K/V go: None = nowhere; int p = the span [p, p+T) in every row;
      LongTensor (b, T) = those absolute positions (padding slots point at the scratch row).
    - ``keys``: None = attend to the queries themselves (full bidirectional attention over the
      given tokens); ``int L`` = cache rows [0, L); LongTensor (b, S) = gathered cache rows.
    - ``key_valid``: (b, S) bool, False for padding keys (None = all valid).
    """

    def __init__(self, cache: KVCache | None = None, rows=None, write=None, keys=None, key_valid=None):
        self.cache, self.rows, self.write, self.keys, self.key_valid = cache, rows, write, keys, key_valid
        self.all_rows = rows is None

    def __call__(self, layer: int, q, k, v, n_rep: int) -> torch.Tensor:
        cache = self.cache
        if self.write is not None:
            kc, vc = cache.k[layer], cache.v[layer]
            if isinstance(self.write, int):  # contiguous span, same start in every row
                sl = slice(self.write, self.write + k.shape[2])
                if self.all_rows:
                    kc[:, :, sl], vc[:, :, sl] = k, v
                else:
                    kc[self.rows, :, sl], vc[self.rows, :, sl] = k, v
            else:
                rows = self.rows if self.rows is not None else torch.arange(k.shape[0], device=k.device)
                r = rows[:, None].expand_as(self.write)
                kc[r, :, self.write] = k.transpose(1, 2)  # (b, T, G, D)
                vc[r, :, self.write] = v.transpose(1, 2)
        if self.keys is not None:
            kc, vc = cache.k[layer], cache.v[layer]
            if not self.all_rows:
                kc, vc = kc[self.rows], vc[self.rows]
            if isinstance(self.keys, int):
                k, v = kc[:, :, : self.keys], vc[:, :, : self.keys]
            elif self.keys.shape[0] == 1:  # one row: a plain index_select copies far less than gather
                k, v = kc.index_select(2, self.keys[0]), vc.index_select(2, self.keys[0])
            else:
                idx = self.keys[:, None, :, None].expand(-1, kc.shape[1], -1, kc.shape[3])
                k, v = kc.gather(2, idx), vc.gather(2, idx)  # (b, G, S, D)
        if n_rep > 1:
            k = k.repeat_interleave(n_rep, dim=1)
            v = v.repeat_interleave(n_rep, dim=1)
        mask = None
        if self.key_valid is not None:
            mask = self.key_valid[:, None, None, :]  # (b, 1, 1, S)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def _linear(mod: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    # F.linear directly: skips nn.Module call overhead, ~7 calls per layer per step
    return F.linear(x, mod.weight, mod.bias)


class Block(nn.Module):
    """Pre-norm bidirectional attention + SwiGLU. Subclasses only name the submodules."""

    # canonical role -> checkpoint attribute path, set by each family
    NAMES: dict[str, str] = {}

    def __init__(self, args: ModelArgs, layer: int):
        super().__init__()
        self.layer = layer
        self.args = args
        self.n_rep = args.n_heads // args.n_kv_heads

    def bind(self):
        self._m = {role: self.get_submodule(path) for role, path in self.NAMES.items()}

    def forward(self, h, cos, sin, attend: Attend) -> torch.Tensor:
        m, a = self._m, self.args
        b, t, _ = h.shape
        x = m["attn_norm"](h)
        q = _linear(m["q"], x).view(b, t, a.n_heads, a.head_dim).transpose(1, 2)  # (B, H, T, D)
        k = _linear(m["k"], x).view(b, t, a.n_kv_heads, a.head_dim).transpose(1, 2)  # (B, G, T, D)
        v = _linear(m["v"], x).view(b, t, a.n_kv_heads, a.head_dim).transpose(1, 2)
        q = apply_rope(q, cos, sin, a.rope_fp32)
        k = apply_rope(k, cos, sin, a.rope_fp32)
        att = attend(self.layer, q, k, v, self.n_rep)  # (B, H, T, D)
        h = h + _linear(m["o"], att.transpose(1, 2).reshape(b, t, a.n_heads * a.head_dim))
        x = m["mlp_norm"](h)
        return h + _linear(m["down"], F.silu(_linear(m["gate"], x)) * _linear(m["up"], x))


class DiffusionLM(nn.Module):
    """Base for both families: embed -> blocks -> norm -> LM head."""

    args: ModelArgs

    def bind(self, embed, blocks, norm, head):
        # plain references (not re-registered): the checkpoint names own the parameters
        self.__dict__["_parts"] = (embed, blocks, norm, head)
        for blk in blocks:
            blk.bind()
        self.rope = RopeTable(self.args.head_dim, self.args.rope_theta)

    @property
    def device(self):
        return self._parts[0].weight.device

    @property
    def dtype(self):
        return self._parts[0].weight.dtype

    def forward(self, ids, pos, attend: Attend | None = None, logits_index=None) -> torch.Tensor:
        """ids, pos: (B, T). Returns logits (B, T, V), or (B, L, V) at query slots ``logits_index`` (B, L).

        Logits are the raw per-position outputs (no Dream shift here; see ``shift_logits``).
        """
        embed, blocks, norm, head = self._parts
        h = embed(ids)
        if self.args.input_emb_scale != 1.0:
            h = h * self.args.input_emb_scale
        cos, sin = self.rope.lookup(pos)
        attend = attend or Attend()
        for blk in blocks:
            h = blk(h, cos, sin, attend)
        if logits_index is not None:
            h = h.gather(1, logits_index[:, :, None].expand(-1, -1, h.shape[-1]))
        logits = head(norm(h)) if head is not None else F.linear(norm(h), embed.weight)
        if self.args.logit_scale != 1.0:
            logits = logits * self.args.logit_scale
        return logits

    def flops(self, n_query: int, n_keys: int, n_logits: int | None = None) -> int:
        """FLOPs of one forward with n_query tokens attending n_keys keys (2 per MAC)."""
        a = self.args
        c = a.d_model
        lin = n_query * (a.linear_params_per_token() - c * a.vocab_size)
        head = (n_query if n_logits is None else n_logits) * c * a.vocab_size
        attn = a.n_layers * n_query * n_keys * a.n_heads * a.head_dim * 2  # QK^T and PV
        return 2 * (lin + head + attn)


def head_dim_of(d_model: int, n_heads: int) -> int:
    if d_model % n_heads:
        raise ValueError(f"d_model {d_model} is not divisible by n_heads {n_heads}")
    return d_model // n_heads


__all__ = ["ModelArgs", "DiffusionLM", "Block", "Attend", "KVCache", "RMSNorm", "math"]
