"""Fast-dLLM block-wise K/V caches (NVlabs/Fast-dLLM ``generate_with_prefix_cache`` / ``_dual_cache``).

Per semi-autoregressive block: the first step runs the whole canvas and writes every K/V row;
the following steps recompute only
- ``prefix-cache``: the block and everything after it (the prefix comes from the cache);
- ``dual-cache``: the block alone (prefix and suffix come from the cache).
Both support Fast-dLLM's confidence-threshold parallel decoding (``threshold``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch

from ..models.core import Attend, DiffusionLM, KVCache
from ..trace import StepEvent
from . import unmask
from .base import Canvas, Sampling, StepRecorder, make_generator, vanilla_step_flops
from .vanilla import block_plan, select_in_block


@dataclass(frozen=True)
class CacheConfig:
    steps: int
    block_length: int | None = 32
    threshold: float | None = None
    dual: bool = False


def run(model: DiffusionLM, canvas: Canvas, sampling: Sampling, cfg: CacheConfig,
        level: str = "full") -> Iterator[StepEvent]:
    a = model.args
    if sampling.cfg_scale > 0:
        raise ValueError("--cfg-scale is supported with --strategy vanilla only")
    shift = int(a.shift_logits)
    bl, n_blocks, spb = block_plan(canvas.gen_length, cfg.steps, cfg.block_length)
    gen = make_generator(canvas.device, sampling.seed)
    x, B, T = canvas.x, canvas.B, canvas.T
    dev = canvas.device
    cache = KVCache(a, B, T, dev, model.dtype)
    key_valid = canvas.valid if canvas.ragged else None
    vflops = vanilla_step_flops(model, canvas)
    offsets = torch.arange(bl, device=dev)
    lens = canvas.row_lens
    step = 0
    for blk in range(n_blocks):
        starts = [p + blk * bl for p in canvas.prompt_lens]
        block_pos = torch.tensor(starts, device=dev)[:, None] + offsets  # (B, bl)
        n0 = (x.gather(1, block_pos) == a.mask_id).sum(-1)
        llada_sched = [unmask.uniform_schedule(int(n), spb) for n in n0]
        timesteps = unmask.dream_timesteps(spb, sampling.eps, dev)
        j = 0
        while True:
            in_block = x.gather(1, block_pos) == a.mask_id
            if not bool(in_block.any()) or (cfg.threshold is None and j >= spb and a.family == "dream"):
                break
            if j == 0:  # block start: full canvas, refresh every cache row
                rec = StepRecorder(model, canvas, level, step=step, phase=blk, kind="refresh")
                logits = rec.forward(x, canvas.pos, Attend(cache, write=0, key_valid=key_valid),
                                     block_pos - shift, n_query=lens)
                for b in range(B):
                    rec.positions(b, computed=range(lens[b]), attended=range(lens[b]))
            else:
                rec = StepRecorder(model, canvas, level, step=step, phase=blk, kind="cached")
                # queries: [start - shift, block end) (dual) or [start - shift, row end) (prefix)
                q_lo = [s - shift for s in starts]
                q_hi = [s + bl for s in starts] if cfg.dual else lens
                width = max(h - l for l, h in zip(q_lo, q_hi))
                qpos = torch.tensor(q_lo, device=dev)[:, None] + torch.arange(width, device=dev)
                qvalid = qpos < torch.tensor(q_hi, device=dev)[:, None]
                qpos = torch.where(qvalid, qpos, torch.zeros_like(qpos))
                uniform = len(set(q_lo)) == 1 and bool(qvalid.all())
                write = q_lo[0] if uniform else qpos.masked_fill(~qvalid, cache.scratch)
                att = Attend(cache, write=write, keys=T, key_valid=key_valid)
                ids = x.gather(1, qpos)
                logits = rec.forward(ids, qpos, att, (block_pos - shift) - torch.tensor(q_lo, device=dev)[:, None],
                                     n_query=[h - l for l, h in zip(q_lo, q_hi)], n_keys=lens)
                for b in range(B):
                    rec.positions(b, computed=range(q_lo[b], q_hi[b]), attended=range(lens[b]))
            x0, conf, chosen = select_in_block(model, logits, sampling, gen, in_block, j, spb, timesteps,
                                               llada_sched, cfg.threshold)
            rec.commit(block_pos, chosen, x0, conf)
            yield rec.event(vflops)
            step += 1
            j += 1
