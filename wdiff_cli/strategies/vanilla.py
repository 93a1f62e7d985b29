"""Vanilla decoding: the whole canvas is recomputed at every step.

LLaDA follows ML-GSAI/LLaDA ``generate`` (semi-autoregressive blocks, uniform schedule,
low_confidence/random remasking, CFG) with Fast-dLLM's float64 confidence and optional
threshold parallel decoding. Dream follows ``DreamGenerationMixin._sample`` (linear timesteps
1 -> eps, ``int(M * (1 - s/t))`` tokens per step, origin/maskgit_plus/topk_margin/entropy).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch

from ..models.core import Attend, DiffusionLM
from ..trace import StepEvent
from . import unmask
from .base import Canvas, Sampling, StepRecorder, make_generator, score, vanilla_step_flops


@dataclass(frozen=True)
class VanillaConfig:
    steps: int
    block_length: int | None = None  # None: the whole generation is one block
    threshold: float | None = None  # Fast-dLLM parallel decoding: commit every mask with conf >= threshold


def block_plan(gen_length: int, steps: int, block_length: int | None) -> tuple[int, int, int]:
    """-> (block_length, blocks, steps per block); raises ValueError saying what would fit."""
    bl = block_length or gen_length
    if bl <= 0 or gen_length % bl:
        raise ValueError(f"--block-length {bl} must divide --gen-length {gen_length}")
    blocks = gen_length // bl
    if steps % blocks:
        raise ValueError(f"--steps {steps} must be a multiple of the {blocks} blocks "
                         f"(gen-length {gen_length} / block-length {bl}); try --steps {blocks * max(1, steps // blocks)}")
    return bl, blocks, steps // blocks


def block_counts(model: DiffusionLM, sampling: Sampling, n_masks: torch.Tensor, j: int, spb: int,
                 timesteps, llada_sched) -> torch.Tensor:
    """Tokens due at step j of a block, per row."""
    if model.args.family == "llada":
        return torch.tensor([s[j] if j < len(s) else int(n) for s, n in zip(llada_sched, n_masks.tolist())],
                            device=n_masks.device)
    return torch.tensor([unmask.dream_count(int(n), j, spb, timesteps) for n in n_masks.tolist()],
                        device=n_masks.device)


def select_in_block(model, logits, sampling: Sampling, gen, in_block, j: int, spb: int, timesteps, llada_sched,
                    threshold):
    """Score a block's logits (B, bl, V) and choose what to commit: the schedule's top-k or the threshold."""
    x0, conf = score(model, logits, sampling, gen)
    conf = conf.masked_fill(~in_block, float("-inf"))
    k = None if threshold is not None else block_counts(model, sampling, in_block.sum(-1), j, spb, timesteps,
                                                        llada_sched)
    return x0, conf, unmask.select(conf, k, threshold)


def run(model: DiffusionLM, canvas: Canvas, sampling: Sampling, cfg: VanillaConfig,
        level: str = "full") -> Iterator[StepEvent]:
    a = model.args
    shift = int(a.shift_logits)
    bl, n_blocks, spb = block_plan(canvas.gen_length, cfg.steps, cfg.block_length)
    gen = make_generator(canvas.device, sampling.seed)
    x, B = canvas.x, canvas.B
    key_valid = canvas.valid if canvas.ragged else None
    vflops = vanilla_step_flops(model, canvas)
    offsets = torch.arange(bl, device=canvas.device)
    step = 0
    for blk in range(n_blocks):
        block_pos = canvas.gen_start[:, None] + blk * bl + offsets  # (B, bl) absolute
        n0 = (x.gather(1, block_pos) == a.mask_id).sum(-1)
        llada_sched = [unmask.uniform_schedule(int(n), spb) for n in n0]
        timesteps = unmask.dream_timesteps(spb, sampling.eps, canvas.device)
        j = 0
        while True:
            in_block = x.gather(1, block_pos) == a.mask_id  # (B, bl)
            if not bool(in_block.any()) or (cfg.threshold is None and j >= spb and a.family == "dream"):
                break
            rec = StepRecorder(model, canvas, level, step=step, phase=blk, kind="full")
            logits = _logits(rec, model, canvas, sampling, block_pos - shift, key_valid)
            if a.family == "dream" and sampling.alg == "origin" and cfg.threshold is None:
                x0, conf = score(model, logits, sampling, gen)
                t, s = timesteps[j], timesteps[j + 1]
                p_transfer = 1 - s / t if j < spb - 1 else 1
                chosen = in_block & (torch.rand(in_block.shape, device=x.device, generator=gen) < p_transfer)
            else:
                x0, conf, chosen = select_in_block(model, logits, sampling, gen, in_block, j, spb, timesteps,
                                                   llada_sched, cfg.threshold)
            rec.commit(block_pos, chosen, x0, conf)
            for b in range(B):
                rec.positions(b, computed=range(canvas.row_lens[b]))
            yield rec.event(vflops)
            step += 1
            j += 1


def _logits(rec: StepRecorder, model: DiffusionLM, canvas: Canvas, sampling: Sampling, index, key_valid):
    """Full-canvas forward, logits at query slots ``index`` (B, N); LLaDA CFG doubles the batch."""
    x, pos = canvas.x, canvas.pos
    n_q = canvas.row_lens
    if sampling.cfg_scale > 0 and model.args.family == "llada":
        un_x = x.clone()
        un_x[pos < canvas.gen_start[:, None]] = model.args.mask_id
        kv = torch.cat([key_valid, key_valid]) if key_valid is not None else None
        both = rec.forward(torch.cat([x, un_x]), torch.cat([pos, pos]), Attend(key_valid=kv),
                           torch.cat([index, index]), n_query=n_q + n_q)
        cond, un = both.chunk(2)
        return un + (sampling.cfg_scale + 1) * (cond - un)
    return rec.forward(x, pos, Attend(key_valid=key_valid), index, n_query=n_q)
