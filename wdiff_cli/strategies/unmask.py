"""Scoring and selection: which masked positions get committed this step, with what token.

LLaDA (ML-GSAI/LLaDA, Fast-dLLM ``get_transfer_index``): Gumbel-max in float64, confidence =
softmax(logits in float64)[x0] or uniform random. Dream (``generation_utils.sample_tokens``):
temperature / top-p / top-k on the logits, then max-prob, top1-top2 margin or negative entropy.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def gumbel_argmax(logits: torch.Tensor, temperature: float, generator) -> torch.Tensor:
    if temperature == 0:
        return logits.argmax(-1)
    logits = logits.to(torch.float64)
    noise = torch.rand(logits.shape, dtype=torch.float64, device=logits.device, generator=generator)
    return (logits.exp() / (-torch.log(noise)) ** temperature).argmax(-1)


def llada_score(logits, temperature: float, remasking: str, generator):
    """logits (B, N, V) -> (x0 (B, N), confidence (B, N) float64)."""
    x0 = gumbel_argmax(logits, temperature, generator)
    if remasking == "low_confidence":
        p = F.softmax(logits.to(torch.float64), dim=-1)
        conf = p.gather(-1, x0.unsqueeze(-1)).squeeze(-1)
    elif remasking == "random":
        conf = torch.rand(x0.shape, dtype=torch.float64, device=x0.device, generator=generator)
    else:
        raise ValueError(f"unknown remasking {remasking!r} (use low_confidence or random)")
    return x0, conf


def _top_p(logits, top_p):
    sorted_logits, sorted_idx = torch.sort(logits, descending=True)
    remove = torch.cumsum(F.softmax(sorted_logits, dim=-1), dim=-1) > top_p
    remove[..., 1:] = remove[..., :-1].clone()  # keep the first token over the threshold
    remove[..., 0] = False
    mask = torch.zeros_like(logits, dtype=torch.bool).scatter_(-1, sorted_idx, remove)
    return logits.masked_fill(mask, torch.finfo(logits.dtype).min)


def _top_k(logits, top_k):
    kth = torch.topk(logits, min(top_k, logits.shape[-1]))[0][..., -1, None]
    return logits.masked_fill(logits < kth, torch.finfo(logits.dtype).min)


def dream_score(logits, alg: str, temperature: float, top_p, top_k, generator):
    """logits (B, N, V) -> (x0 (B, N), confidence (B, N)), as Dream's ``sample_tokens``."""
    if temperature > 0:
        logits = logits / temperature
    if top_p is not None and top_p < 1:
        logits = _top_p(logits, top_p)
    if top_k is not None:
        logits = _top_k(logits, top_k)
    probs = torch.softmax(logits, dim=-1)
    if temperature > 0:
        flat = probs.reshape(-1, probs.shape[-1])
        x0 = torch.multinomial(flat, 1, generator=generator).view(probs.shape[:-1])
        conf = probs.gather(-1, x0.unsqueeze(-1)).squeeze(-1)
    else:
        conf, x0 = probs.max(dim=-1)
    if alg == "topk_margin":
        top2 = probs.topk(2, dim=-1).values
        conf = top2[..., 0] - top2[..., 1]
    elif alg == "entropy":
        conf = torch.sum(probs * torch.log(probs + 1e-10), dim=-1)
    elif alg not in ("maskgit_plus", "origin"):
        raise ValueError(f"unknown alg {alg!r} (use origin, maskgit_plus, topk_margin or entropy)")
    return x0, conf


def uniform_schedule(n_masks: int, steps: int) -> list[int]:
    """LLaDA's linear schedule: n_masks spread over steps, the remainder on the first steps."""
    base, rem = divmod(n_masks, steps)
    return [base + (1 if i < rem else 0) for i in range(steps)]


def dream_timesteps(steps: int, eps: float, device) -> torch.Tensor:
    return torch.linspace(1, eps, steps + 1, device=device)


def dream_count(n_masks: int, i: int, steps: int, timesteps: torch.Tensor) -> int:
    """Dream's per-step count ``int(M * (1 - s/t))``, in float32 tensors as the reference does."""
    if i >= steps - 1:
        return n_masks
    t, s = timesteps[i], timesteps[i + 1]
    m = torch.tensor(float(n_masks), dtype=timesteps.dtype, device=timesteps.device)
    return int(m * (1 - s / t))


def select(conf: torch.Tensor, k: torch.Tensor | None, threshold: float | None) -> torch.Tensor:
    """conf (B, N) with -inf on non-candidates -> bool (B, N) positions to commit.

    ``k`` (B,) commits the top-k of each row; ``threshold`` commits every candidate at or above it,
    and always at least the best one (Fast-dLLM's parallel decoding rule).
    """
    cand = conf > float("-inf")
    n_cand = cand.sum(-1)
    if threshold is not None:
        best = conf.argmax(-1, keepdim=True)
        chosen = cand & (conf >= threshold)
        chosen.scatter_(1, best, True)
        return chosen & (n_cand > 0)[:, None]
    k = torch.minimum(k, n_cand)
    kmax = int(k.max()) if k.numel() else 0
    chosen = torch.zeros_like(cand)
    if kmax == 0:
        return chosen
    if conf.shape[0] == 1:
        idx = torch.topk(conf[0], kmax).indices
        chosen[0, idx] = True
        return chosen
    top = torch.topk(conf, kmax, dim=-1).indices  # (B, kmax)
    keep = torch.arange(kmax, device=conf.device)[None, :] < k[:, None]
    rows = torch.arange(conf.shape[0], device=conf.device)[:, None].expand_as(top)
    chosen[rows[keep], top[keep]] = True
    return chosen
