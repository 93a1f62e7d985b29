"""Window-Diffusion: windowed token pruning with phase-level K/V caching (arXiv 2601.20332).

Undecoded positions are split three ways at every step:
- active: the first ``window`` masks after the decoding front, plus tokens decoded since the last
  refresh (post-decode transient); recomputed every step, the only commit candidates;
- buffer: the next ``buffer`` masks; their K/V come from the cache written at the last refresh;
- far-field: every mask beyond; pruned from attention (and from refreshes with scope "window").

Steps run in phases of ``refresh`` steps. A refresh step recomputes the window (or the whole
canvas) and rewrites the cache rows of every position it computed; the other steps compute only
the active tokens, writing their own rows and attending to the cached window.

Two flavours of the official code (vhicrgit/Window-Diffusion) are presets of the same loop:
- ``llada-paper``: full-canvas refresh, global top-k commit at refresh, sparse active set;
- ``dream-paper``: prefix-only refresh, leftmost commit at refresh, contiguous active span
  that slides, Dream's per-step schedule (1 token per cached step with early stop).
The official bugs (batch 1, hard-coded ids/shapes, stale cache rows, over-commits) are not
reproduced: invariants are checked and a row whose active set leaves its window refreshes early.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Iterator

import torch

from ..models.core import Attend, DiffusionLM, KVCache
from ..trace import StepEvent
from . import unmask
from .base import Canvas, Sampling, StepRecorder, make_generator, score, vanilla_step_flops


@dataclass(frozen=True)
class WindowConfig:
    steps: int
    window: int = 16  # active masks recomputed every step
    buffer: int = 48  # cached masks kept beyond the active ones (outer window = window + buffer)
    refresh: int = 32  # phase length: 1 refresh step + (refresh - 1) cached steps
    refresh_scope: str = "full"  # full: refresh recomputes the whole canvas; window: only the window
    refresh_commit: str = "schedule"  # schedule: top-k by confidence; leftmost: the first mask (Dream)
    active_shape: str = "sparse"  # sparse: masks + decoded-in-phase; span: contiguous [front, e)
    slide: bool = True  # span: the active end follows the front during a phase
    early_stop: bool = False  # stop at the first end-of-text, fill the rest with it
    block_length: int | None = None  # semi-AR blocks (None: the generation is one block)
    tokens_per_step: int | None = None  # fixed count schedule instead of the family's
    threshold: float | None = None  # confidence-threshold parallel decoding


PRESETS: dict[str, dict] = {
    # vhicrgit/Window-Diffusion llada/model/modeling_llada.py::generate, README/eval values
    # (window_tokens W=64 -> buffer 48, active_tokens A=16, refresh_cycle R=32, steps = gen length)
    "llada-paper": dict(window=16, buffer=48, refresh=32, refresh_scope="full", refresh_commit="schedule",
                        active_shape="sparse", slide=True, early_stop=False),
    # dream/model/generation_utils.py::nearest_sample_fast_v2_cache with i_win_size=16,
    # o_win_size=128 (which keeps 127 masks: buffer 111), refresh_cycle=32, slide_window=True
    "dream-paper": dict(window=16, buffer=111, refresh=32, refresh_scope="window", refresh_commit="leftmost",
                        active_shape="span", slide=True, early_stop=False),
}
FAMILY_PRESET = {"llada": "llada-paper", "dream": "dream-paper"}


def preset_config(name: str, steps: int, **overrides) -> WindowConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r} (use {', '.join(PRESETS)})")
    return replace(WindowConfig(steps=steps, **PRESETS[name]), **overrides)


def validate(cfg: WindowConfig, gen_length: int, family: str) -> None:
    """Reject settings that would break the invariants; the message says what would work."""
    for name in ("window", "refresh", "steps"):
        if getattr(cfg, name) <= 0:
            raise ValueError(f"--{name} must be positive (got {getattr(cfg, name)})")
    if cfg.buffer < 0:
        raise ValueError(f"--buffer must be >= 0 (got {cfg.buffer})")
    if cfg.refresh_scope not in ("full", "window"):
        raise ValueError(f"--refresh-scope must be full or window (got {cfg.refresh_scope!r})")
    if cfg.refresh_commit not in ("schedule", "leftmost"):
        raise ValueError(f"refresh commit must be schedule or leftmost (got {cfg.refresh_commit!r})")
    if cfg.active_shape not in ("sparse", "span"):
        raise ValueError(f"active shape must be sparse or span (got {cfg.active_shape!r})")
    if cfg.tokens_per_step is not None and cfg.threshold is not None:
        raise ValueError("--tokens-per-step and --threshold are alternatives; give one")
    if cfg.threshold is not None and not 0 < cfg.threshold <= 1:
        raise ValueError(f"--threshold must be in (0, 1] (got {cfg.threshold})")
    bl = cfg.block_length or gen_length
    if gen_length % bl or (cfg.steps % (gen_length // bl)):
        raise ValueError(f"--block-length {bl} must divide --gen-length {gen_length} and --steps {cfg.steps} "
                         f"must be a multiple of the {gen_length // bl if gen_length % bl == 0 else '?'} blocks")
    if cfg.threshold is not None:
        return  # per-step counts are data-dependent; the runtime guard refreshes early instead
    spb = cfg.steps // (gen_length // bl)
    if cfg.tokens_per_step is not None:
        k_max = cfg.tokens_per_step
    elif family == "llada":
        k_max = -(-bl // spb)
    else:
        # Dream's schedule averages gen/steps per step (occasional catch-ups: the runtime guard)
        k_max = 1 if cfg.early_stop else -(-gen_length // cfg.steps)
    if k_max > cfg.window:
        raise ValueError(f"{k_max} tokens per step exceed the {cfg.window} active tokens: "
                         f"use --window >= {k_max} or --steps >= {-(-gen_length // cfg.window)}")
    need = cfg.window + (cfg.refresh - 1) * k_max + (1 if cfg.active_shape == "span" else 0)
    outer = cfg.window + cfg.buffer
    if cfg.refresh > 1 and need > outer:
        fit_r = max(1, (outer - cfg.window - (1 if cfg.active_shape == "span" else 0)) // k_max + 1)
        raise ValueError(f"with {k_max} token(s) per step the active tokens outgrow the window within a phase: "
                         f"use --buffer >= {need - cfg.window} or --refresh <= {fit_r}")


class _RowPlan:
    """Per-row window state, fixed at the row's last refresh."""

    __slots__ = ("keys", "key_span", "offset", "decoded", "fresh", "front", "end", "reach_eos")

    def __init__(self, T: int, device):
        self.keys: torch.Tensor | None = None  # sorted absolute key positions
        self.key_span: int | None = None  # keys == [0, key_span) when contiguous
        self.offset = 0  # position inside the phase; 0 = refresh due
        self.decoded = torch.zeros(T, dtype=torch.bool, device=device)  # decoded since refresh
        self.fresh: torch.Tensor | None = None  # committed by the refresh; active for one step
        self.front = 0  # span: first mask at the refresh
        self.end = 0  # span: exclusive end of the active span
        self.reach_eos = False


def _nth_mask_pos(masked_row: torch.Tensor, n: int, default: int) -> int:
    """Position of the n-th (0-based) mask in a row, or ``default`` if there are fewer."""
    idx = masked_row.nonzero().flatten()
    return int(idx[n]) if idx.numel() > n else default


def run(model: DiffusionLM, canvas: Canvas, sampling: Sampling, cfg: WindowConfig,
        level: str = "full") -> Iterator[StepEvent]:
    a = model.args
    validate(cfg, canvas.gen_length, a.family)
    if sampling.cfg_scale > 0:
        raise ValueError("--cfg-scale is supported with --strategy vanilla only")
    if a.family == "dream" and sampling.alg == "origin":
        raise ValueError("--alg origin unmasks at random and has no confidence to window on; "
                         "use entropy, maskgit_plus or topk_margin")
    if cfg.early_stop and a.eos_id is None:
        raise ValueError("--early-stop needs an end-of-text id, and this checkpoint defines none")
    shift = int(a.shift_logits)
    B, T, G = canvas.B, canvas.T, canvas.gen_length
    dev = canvas.device
    gen = make_generator(dev, sampling.seed)
    cache = KVCache(a, B, T, dev, model.dtype)
    plans = [_RowPlan(T, dev) for _ in range(B)]
    vflops = vanilla_step_flops(model, canvas)
    bl = cfg.block_length or G
    n_blocks = G // bl
    spb = cfg.steps // n_blocks
    llada_sched = unmask.uniform_schedule(bl, spb)
    timesteps = unmask.dream_timesteps(spb, sampling.eps, dev)
    outer = cfg.window + cfg.buffer
    owed = [0] * B  # tokens the schedule asked for but the active set could not supply
    row_blk = [0] * B  # each row's current semi-AR block
    row_j = [0] * B  # steps the row has spent in that block
    offsets = torch.arange(bl, device=dev)

    step = 0
    max_steps = cfg.steps + G  # the schedule finishes in `steps`; the rest only drains leftovers
    while step < max_steps:
        masked = canvas.masked()
        alive = masked.any(-1).tolist()
        if not any(alive):
            break
        # a row moves to its next block as soon as the current one is decoded (Fast-dLLM)
        for b in range(B):
            while alive[b] and row_blk[b] < n_blocks - 1 and not bool(
                    masked[b, canvas.prompt_lens[b] + row_blk[b] * bl + offsets].any()):
                row_blk[b] += 1
                row_j[b] = 0
        block_lo = canvas.gen_start + torch.tensor(row_blk, device=dev) * bl  # (B,)
        in_block = (canvas.pos >= block_lo[:, None]) & (canvas.pos < block_lo[:, None] + bl) & masked
        k_of = {}
        for b in range(B):
            if alive[b]:
                j = row_j[b]
                if a.family == "llada" or cfg.tokens_per_step or cfg.threshold is not None:
                    base = cfg.tokens_per_step or (llada_sched[j] if j < spb else bl)
                else:
                    base = unmask.dream_count(int(in_block[b].sum()), j, spb, timesteps)
                k_of[b] = base + owed[b]
        # which rows refresh this step
        refresh_rows, cached_rows = [], []
        for b in range(B):
            if not alive[b]:
                continue
            p = plans[b]
            (refresh_rows if p.offset == 0 or p.reach_eos else cached_rows).append(b)
        # a cached row whose active set would leave its window refreshes instead (guard)
        actives = {}
        for b in list(cached_rows):
            act = _active(plans[b], masked[b], cfg, canvas.row_lens[b])
            if not _inside(act, plans[b]):
                cached_rows.remove(b)
                refresh_rows.append(b)
                plans[b].offset = 0
            else:
                actives[b] = act
        refresh_rows.sort()
        kind = "refresh" if refresh_rows and not cached_rows else "cached" if cached_rows and not refresh_rows else "mixed"
        rec = StepRecorder(model, canvas, level, step=step, phase=step // cfg.refresh, kind=kind)

        if refresh_rows:
            committed = _refresh(model, canvas, cache, plans, refresh_rows, masked, in_block, k_of, cfg,
                                 sampling, gen, rec, shift, outer)
            for b in refresh_rows:
                owed[b] = max(0, k_of[b] - committed[b]) if cfg.refresh_commit == "schedule" else 0
        if cached_rows:
            committed = _cached(model, canvas, cache, plans, cached_rows, actives, in_block, k_of, cfg,
                                sampling, gen, rec, shift)
            for b in cached_rows:
                owed[b] = max(0, k_of[b] - committed[b]) if cfg.threshold is None else 0
        for b in refresh_rows + cached_rows:
            plans[b].offset = (plans[b].offset + 1) % cfg.refresh
            row_j[b] += 1
        if cfg.early_stop:
            _early_stop(canvas, plans, refresh_rows + cached_rows, a.eos_id, cfg, rec)
        yield rec.event(vflops)
        step += 1


def _active(p: _RowPlan, masked_row: torch.Tensor, cfg: WindowConfig, row_len: int) -> torch.Tensor:
    """Sorted absolute positions of the row's active tokens for a cached step."""
    if cfg.active_shape == "span":
        if cfg.slide:
            p.end = _nth_mask_pos(masked_row, cfg.window, row_len)
        return torch.arange(p.front, p.end, device=masked_row.device)
    rank = masked_row.long().cumsum(0) - 1
    act = (masked_row & (rank < cfg.window)) | p.decoded
    if p.fresh is not None:
        act = act.clone()
        act[p.fresh] = True
    return act.nonzero().flatten()


def _inside(act: torch.Tensor, p: _RowPlan) -> bool:
    if act.numel() == 0:
        return False
    if p.key_span is not None:
        return int(act[-1]) < p.key_span
    return bool(torch.isin(act, p.keys).all())


def _pad(rows_pos: list[torch.Tensor], fill: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    n = max(int(r.numel()) for r in rows_pos)
    out = torch.full((len(rows_pos), n), fill, dtype=torch.long, device=device)
    valid = torch.zeros((len(rows_pos), n), dtype=torch.bool, device=device)
    for i, r in enumerate(rows_pos):
        out[i, : r.numel()] = r
        valid[i, : r.numel()] = True
    return out, valid


def _forward_rows(model, canvas: Canvas, cache: KVCache, rows: list[int], qpos: list[torch.Tensor],
                  keys, rec: StepRecorder, self_keys: bool):
    """Compute the tokens at absolute positions qpos[i] of canvas row rows[i].

    Writes their K/V into the cache. ``self_keys``: attend among the queries (refresh);
    otherwise ``keys`` is a list of per-row key specs (int span length or position tensor).
    Returns logits (b, n, V) over query slots and the padded positions (b, n) + valid mask.
    """
    dev = canvas.device
    b = len(rows)
    rows_t = torch.tensor(rows, device=dev)
    all_rows = rows == list(range(canvas.B))
    pos, valid = _pad(qpos, 0, dev)
    ids = canvas.x[rows_t[:, None], pos]
    ragged = not bool(valid.all())
    contiguous = b == 1 and int(pos[0, -1]) - int(pos[0, 0]) + 1 == pos.shape[1]
    write = int(pos[0, 0]) if contiguous else pos.masked_fill(~valid, cache.scratch)
    n_q = [int(r.numel()) for r in qpos]
    attend_rows = None if all_rows else rows_t
    if self_keys:
        att = Attend(cache, rows=attend_rows, write=write, key_valid=valid if ragged else None)
        n_k = n_q
    else:
        if all(isinstance(k, int) for k in keys):
            span = max(keys)
            kv = None
            if len(set(keys)) > 1:
                kv = torch.arange(span, device=dev)[None, :] < torch.tensor(keys, device=dev)[:, None]
            att = Attend(cache, rows=attend_rows, write=write, keys=span, key_valid=kv)
            n_k = list(keys)
        else:
            kl = [k if torch.is_tensor(k) else torch.arange(k, device=dev) for k in keys]
            kpos, kvalid = _pad(kl, cache.scratch, dev)
            att = Attend(cache, rows=attend_rows, write=write, keys=kpos,
                         key_valid=kvalid if not bool(kvalid.all()) else None)
            n_k = [int(k.numel()) for k in kl]
    logits = rec.forward(ids, pos, att, n_query=n_q, n_keys=n_k)
    return logits, pos, valid, rows_t


def _targets(pos, valid, shift, canvas: Canvas, rows_t, allowed: torch.Tensor):
    """Slot j predicts absolute position pos[:, j] + shift; keep masked targets in ``allowed``."""
    tgt = (pos + shift).clamp(max=canvas.T - 1)
    ok = valid & (pos + shift < canvas.T)
    ok &= allowed[rows_t[:, None], tgt]
    return tgt, ok


def _refresh(model, canvas, cache, plans, rows, masked, in_block, k_of, cfg, sampling, gen, rec, shift, outer):
    dev = canvas.device
    qpos = []
    for b in rows:
        m = masked[b]
        n_len = canvas.row_lens[b]
        if cfg.refresh_scope == "full":
            q = torch.arange(n_len, device=dev)
        elif cfg.active_shape == "span":
            # contiguous prefix: everything decoded + the first `outer` masks (official Dream L)
            L = int((~m[:n_len]).sum()) + min(int(m.sum()), outer)
            q = torch.arange(min(L, n_len), device=dev)
        else:
            rank = m.long().cumsum(0) - 1
            keep = (~m | (rank < outer)) & canvas.valid[b]
            q = keep.nonzero().flatten()
        qpos.append(q)
        p = plans[b]
        if cfg.active_shape == "span":
            p.front = _nth_mask_pos(m, 0, n_len)
            p.end = _nth_mask_pos(m, cfg.window, n_len)
    logits, pos, valid, rows_t = _forward_rows(model, canvas, cache, rows, qpos, None, rec, self_keys=True)
    qset = torch.zeros((len(rows), canvas.T + 1), dtype=torch.bool, device=dev)
    qset.scatter_(1, pos.masked_fill(~valid, canvas.T), True)
    allowed_rows = in_block[rows_t] & qset[:, : canvas.T]
    if cfg.active_shape == "span":
        for i, b in enumerate(rows):  # the official Dream refresh only scores the inner window
            allowed_rows[i, plans[b].end:] = False
    allowed = torch.zeros_like(in_block)
    allowed[rows_t] = allowed_rows
    tgt, ok = _targets(pos, valid, shift, canvas, rows_t, allowed)
    x0, conf = score(model, logits, sampling, gen)
    conf = conf.masked_fill(~ok, float("-inf"))
    if cfg.refresh_commit == "leftmost":
        first = torch.where(ok, tgt, canvas.T).min(-1).values
        chosen = ok & (tgt == first[:, None])
    else:
        k = torch.tensor([k_of[b] for b in rows], device=dev)
        chosen = unmask.select(conf, None if cfg.threshold is not None else k, cfg.threshold)
    counts = chosen.sum(-1).tolist()
    rec.commit(tgt, chosen, x0, conf, rows=rows_t)
    for i, b in enumerate(rows):  # plan the phase from the updated canvas
        p = plans[b]
        p.decoded.zero_()
        # official LLaDA: tokens committed at the refresh are active in the first cached step only
        p.fresh = tgt[i][chosen[i]]
        if cfg.refresh_scope == "full" and cfg.active_shape == "sparse":
            m = canvas.x[b] == canvas.mask_id
            rank = m.long().cumsum(0) - 1
            p.keys = ((~m | (rank < outer)) & canvas.valid[b]).nonzero().flatten()
        else:
            p.keys = qpos[i]  # only rows this refresh wrote are valid keys
        n = p.keys.numel()
        p.key_span = n if n and int(p.keys[-1]) == n - 1 else None
        rec.positions(b, computed=qpos[i].tolist(), attended=qpos[i].tolist())
    return dict(zip(rows, counts))


def _cached(model, canvas, cache, plans, rows, actives, in_block, k_of, cfg, sampling, gen, rec, shift):
    dev = canvas.device
    qpos = [actives[b] for b in rows]
    keys = [plans[b].key_span if plans[b].key_span is not None else plans[b].keys for b in rows]
    logits, pos, valid, rows_t = _forward_rows(model, canvas, cache, rows, qpos, keys, rec, self_keys=False)
    active = torch.zeros((canvas.B, canvas.T + 1), dtype=torch.bool, device=dev)
    active[rows_t[:, None], pos.masked_fill(~valid, canvas.T)] = True
    allowed = active[:, : canvas.T] & in_block
    tgt, ok = _targets(pos, valid, shift, canvas, rows_t, allowed)
    x0, conf = score(model, logits, sampling, gen)
    conf = conf.masked_fill(~ok, float("-inf"))
    one_per_step = cfg.early_stop and model.args.family == "dream" and cfg.tokens_per_step is None
    k = torch.tensor([1 if one_per_step else k_of[b] for b in rows], device=dev)
    chosen = unmask.select(conf, None if cfg.threshold is not None else k, cfg.threshold)
    counts = chosen.sum(-1).tolist()
    rec.commit(tgt, chosen, x0, conf, rows=rows_t)
    for i, b in enumerate(rows):
        plans[b].decoded[tgt[i][chosen[i]]] = True
        plans[b].fresh = None
        keys_i = keys[i]
        rec.positions(b, computed=qpos[i].tolist(),
                      attended=range(keys_i) if isinstance(keys_i, int) else keys_i.tolist())
    return dict(zip(rows, counts))


def _early_stop(canvas: Canvas, plans, rows, eos_id: int, cfg: WindowConfig, rec: StepRecorder) -> None:
    """Cut each row at its first generated end-of-text and fill the rest with it."""
    x = canvas.x
    for b in rows:
        lo, hi = canvas.prompt_lens[b], canvas.row_lens[b]
        hits = (x[b, lo:hi] == eos_id).nonzero()
        if hits.numel():
            q = lo + int(hits[0])
            if q + 1 < hi and not bool((x[b, q + 1: hi] == eos_id).all()):
                rec.rows[b]["filled"] = [q + 1, hi, eos_id]  # trace: [start, stop) now holds eos_id
            x[b, q + 1: hi] = eos_id
            # official Dream: after an EOS every step is a prefix refresh with a leftmost commit
            plans[b].reach_eos = cfg.refresh_commit == "leftmost"
