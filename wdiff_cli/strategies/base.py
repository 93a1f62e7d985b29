"""Shared pieces of every strategy: the canvas, the sampling settings, and the step loop helpers.

A strategy is a generator ``run(model, canvas, sampling, config, trace) -> Iterator[StepEvent]``.
It mutates ``canvas.x`` in place and yields one plain-data event per denoising step.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from ..models.core import Attend, DiffusionLM
from ..trace import StepEvent, expand, spans
from . import unmask


@dataclass(frozen=True)
class Sampling:
    """Family sampling rules (what the official vanilla samplers take)."""

    temperature: float = 0.0
    remasking: str = "low_confidence"  # LLaDA: low_confidence | random
    cfg_scale: float = 0.0  # LLaDA classifier-free guidance (vanilla only)
    alg: str = "entropy"  # Dream: origin | maskgit_plus | topk_margin | entropy
    alg_temp: float = 0.0
    top_p: float | None = None
    top_k: int | None = None
    eps: float = 1e-3
    seed: int = 0


class Canvas:
    """Batch of rows ``prompt + [MASK] * gen_length``, right-padded to a common width.

    Positions are absolute per row (the prompt starts at 0 in every row), so a row computes
    exactly what it would compute alone. Slots past a row's end hold ``fill_id`` and are never
    attended.
    """

    def __init__(self, prompts: list[list[int]], gen_length: int, mask_id: int, fill_id: int, device):
        self.prompt_lens = [len(p) for p in prompts]
        self.gen_length = gen_length
        self.mask_id = mask_id
        self.fill_id = fill_id
        self.B = len(prompts)
        self.row_lens = [n + gen_length for n in self.prompt_lens]
        self.T = max(self.row_lens)
        x = torch.full((self.B, self.T), fill_id, dtype=torch.long)
        for b, p in enumerate(prompts):
            x[b, : len(p)] = torch.tensor(p, dtype=torch.long)
            x[b, len(p): len(p) + gen_length] = mask_id
        self.x = x.to(device)
        self.device = device
        self.pos = torch.arange(self.T, device=device)[None, :].expand(self.B, -1)
        lens = torch.tensor(self.row_lens, device=device)
        self.valid = self.pos < lens[:, None]  # (B, T)
        self.ragged = len(set(self.row_lens)) > 1
        self.gen_start = torch.tensor(self.prompt_lens, device=device)

    def masked(self) -> torch.Tensor:
        return self.x == self.mask_id

    def generated(self) -> list[list[int]]:
        return [self.x[b, n: n + self.gen_length].tolist() for b, n in enumerate(self.prompt_lens)]


@dataclass
class StepRecorder:
    """Accumulates the cost of one step's forwards and builds its event.

    ``level``: "full" records position sets per row; "counts" only counts and commits.
    """

    model: DiffusionLM
    canvas: Canvas
    level: str = "full"
    step: int = 0
    phase: int = 0
    kind: str = "full"
    forwards: int = 0
    tokens: int = 0
    flops: int = 0
    t0: float = field(default_factory=time.perf_counter)
    rows: list = field(default_factory=list)

    def __post_init__(self):
        self.rows = [dict(row=b) for b in range(self.canvas.B)]

    def forward(self, ids, pos, attend: Attend | None = None, logits_index=None,
                n_query=None, n_keys=None, n_logits=None, rows=None):
        """Run the model and book its cost. n_* are per computed row (lists) when ragged."""
        out = self.model(ids, pos, attend, logits_index)
        self.forwards += 1
        b = ids.shape[0]
        nq = n_query if n_query is not None else [ids.shape[1]] * b
        nk = n_keys if n_keys is not None else nq
        nl = n_logits if n_logits is not None else (
            [logits_index.shape[1]] * b if logits_index is not None else nq)
        for q, k, lg in zip(nq, nk, nl):
            self.tokens += q
            self.flops += self.model.flops(q, k, lg)
        return out

    def positions(self, row: int, computed=None, attended=None):
        """Record the query and key position sets (absolute) of ``row`` for the trace."""
        if self.level != "full":
            return
        r = self.rows[row]
        if computed is not None:
            r["computed"] = spans(computed)
        if attended is not None:
            r["attended"] = spans(attended)

    def commit(self, positions: torch.Tensor, chosen: torch.Tensor, x0: torch.Tensor, conf: torch.Tensor,
               rows: torch.Tensor | None = None):
        """Write committed tokens. positions/chosen/x0/conf are (b, N); ``rows`` maps b -> canvas row."""
        b_idx, n_idx = chosen.nonzero(as_tuple=True)
        if rows is not None:
            b_idx = rows[b_idx]
        p = positions[chosen]
        toks = x0[chosen]
        self.canvas.x[b_idx, p] = toks
        for b, pp, t, c in zip(b_idx.tolist(), p.tolist(), toks.tolist(), conf[chosen].double().tolist()):
            self.rows[b].setdefault("committed", []).append([pp, t, round(c, 6)])

    def event(self, vanilla_flops: int) -> StepEvent:
        if self.canvas.device.type == "cuda":
            torch.cuda.synchronize()
        masked = self.canvas.masked()
        left = masked.sum(-1).tolist()
        for b, r in enumerate(self.rows):
            r.setdefault("committed", [])
            r["masks_left"] = left[b]
            if self.level == "full" and "computed" in r:
                lo, hi = self.canvas.prompt_lens[b], self.canvas.row_lens[b]
                att = set(expand(r.get("attended", r["computed"])))
                comp = set(expand(r["computed"]))
                mpos = masked[b, lo:hi].nonzero().flatten().add(lo).tolist()
                r["buffer"] = spans([p for p in mpos if p in att and p not in comp])
                r["far_field"] = spans([p for p in mpos if p not in att])
        return StepEvent(
            step=self.step, phase=self.phase, kind=self.kind,
            seconds=time.perf_counter() - self.t0, forward_passes=self.forwards,
            tokens_computed=self.tokens, flops=self.flops, vanilla_flops=vanilla_flops,
            rows=self.rows,
        )


def vanilla_step_flops(model: DiffusionLM, canvas: Canvas) -> int:
    """What one full-recompute step costs for this batch: every position, logits for the generation."""
    return sum(model.flops(n, n, canvas.gen_length) for n in canvas.row_lens)


def make_generator(device, seed: int) -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed(seed)
    return g


def score(model: DiffusionLM, logits, sampling: Sampling, generator):
    """Family scoring: logits (B, N, V) -> (x0 (B, N), confidence (B, N))."""
    if model.args.family == "llada":
        return unmask.llada_score(logits, sampling.temperature, sampling.remasking, generator)
    return unmask.dream_score(logits, sampling.alg, sampling.temperature, sampling.top_p,
                              sampling.top_k, generator)
