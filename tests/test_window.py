"""Window-Diffusion engine: the exactness guard, batch = single, invariants, rejections, early stop."""

from __future__ import annotations

import pytest
import torch

from wdiff_cli.engine import GenerationError, generate
from wdiff_cli.models.core import Attend, KVCache
from wdiff_cli.trace import expand

from .conftest import NEEDS_SHARED

pytestmark = NEEDS_SHARED
PROMPTS = ["A bird in the hand", "Why is the sky blue?", "print("]


def test_model_cached_subset_equals_full_forward(llada, dream):
    """Prefill the cache with the full canvas, recompute a sparse subset against it: same logits."""
    for loaded in (llada, dream):
        m = loaded.model
        ids = torch.randint(0, 500, (1, 40))
        pos = torch.arange(40)[None]
        cache = KVCache(m.args, 1, 40, "cpu", torch.float32)
        with torch.inference_mode():
            full = m(ids, pos, Attend(cache, write=0))
            sub = torch.tensor([[3, 7, 8, 20, 39]])
            part = m(ids[:, sub[0]], sub, Attend(cache, write=sub, keys=40))
            gathered = m(ids[:, sub[0]], sub, Attend(cache, write=sub, keys=torch.arange(40)[None]))
        assert (part - full[:, sub[0]]).abs().max() < 1e-5
        assert (gathered - full[:, sub[0]]).abs().max() < 1e-5


@pytest.mark.parametrize("family", ["llada", "dream"])
@pytest.mark.parametrize("gen_length,steps,block", [(32, 32, None), (32, 16, None), (32, 32, 8)])
def test_exactness_guard_window_full_coverage_equals_vanilla(llada, dream, family, gen_length, steps, block):
    """Window covering the whole generation + refresh every step == vanilla, token for token."""
    loaded = llada if family == "llada" else dream
    # Dream's paper preset commits the leftmost mask at a refresh; the guard uses the schedule commit
    extra = dict(refresh_commit="schedule") if family == "dream" else {}
    for prompt in PROMPTS:
        v = generate(loaded, prompt, strategy="vanilla", gen_length=gen_length, steps=steps, block_length=block)
        w = generate(loaded, prompt, strategy="window", gen_length=gen_length, steps=steps, block_length=block,
                     window=gen_length, buffer=0, refresh=1, **extra)
        assert w.token_ids == v.token_ids
        assert w.forward_passes == v.forward_passes


@pytest.mark.parametrize("strategy", ["vanilla", "window", "prefix-cache", "dual-cache"])
@pytest.mark.parametrize("family", ["llada", "dream"])
def test_batch_equals_single(llada, dream, strategy, family):
    loaded = llada if family == "llada" else dream
    kw = dict(strategy=strategy, gen_length=32)
    batch = generate(loaded, PROMPTS, **kw)
    for i, p in enumerate(PROMPTS):
        assert batch.token_ids[i] == generate(loaded, p, **kw).token_ids[0], (strategy, family, i)


@pytest.mark.parametrize("family", ["llada", "dream"])
def test_batch_equals_single_with_threshold_and_early_stop(llada, dream, family):
    loaded = llada if family == "llada" else dream
    kw = dict(strategy="window", gen_length=48, threshold=0.3, early_stop=True, window=8, buffer=8, refresh=4)
    batch = generate(loaded, PROMPTS, **kw)
    for i, p in enumerate(PROMPTS):
        assert batch.token_ids[i] == generate(loaded, p, **kw).token_ids[0]


@pytest.mark.parametrize("family", ["llada", "dream"])
def test_invariants_on_the_trace(llada, dream, family):
    """Active tokens lie inside the window; commits never exceed the active masks; absolute positions."""
    loaded = llada if family == "llada" else dream
    r = generate(loaded, PROMPTS, strategy="window", gen_length=64, window=6, buffer=10, refresh=8,
                 keep_events=True)
    assert r.steps == 64 and all(loaded.mask_id not in row for row in r.token_ids)
    prev_masks = None
    for ev in r.events:
        for row in ev.rows:
            computed, attended = set(expand(row["computed"])), set(expand(row["attended"]))
            assert computed <= attended
            lo = len(r.prompt_token_ids[row["row"]])
            for pos, tok, conf in row["committed"]:
                assert lo <= pos < lo + 64  # absolute canvas positions in the generation
            if ev.kind == "cached":
                committed = {p for p, _, _ in row["committed"]}
                shift = 1 if family == "dream" else 0
                assert {p - shift for p in committed} <= computed
                assert len(committed) <= 6 + 7  # active masks at most window + decoded-in-phase
                assert set(expand(row["far_field"])).isdisjoint(attended)


def test_rejects_settings_that_break_invariants(llada):
    with pytest.raises(GenerationError, match="--buffer >= 62 or --refresh <= 25"):
        generate(llada, "A", strategy="window", gen_length=64, steps=32, window=16, buffer=48, refresh=32)
    with pytest.raises(GenerationError, match="exceed the 2 active tokens"):
        generate(llada, "A", strategy="window", gen_length=64, steps=16, window=2, buffer=48, refresh=2)
    with pytest.raises(GenerationError, match="--window must be positive"):
        generate(llada, "A", strategy="window", gen_length=32, window=0)
    with pytest.raises(GenerationError, match="vanilla only"):
        generate(llada, "A", strategy="window", gen_length=32, cfg_scale=1.0)


def test_explicit_flags_override_only_themselves(llada):
    r = generate(llada, "A", strategy="window", gen_length=32, window=8, buffer=24, refresh=4)
    s = r.settings
    assert (s["preset"], s["window"], s["buffer"], s["refresh"]) == ("llada-paper", 8, 24, 4)
    assert (s["refresh_scope"], s["refresh_commit"], s["active_shape"], s["block_length"]) == ("full", "schedule", "sparse", 32)


def test_dream_paper_preset_runs_and_prunes(dream):
    r = generate(dream, "A bird in the hand", strategy="window", gen_length=256, window=16, buffer=40,
                 keep_events=True)
    assert r.settings["refresh_commit"] == "leftmost" and r.settings["refresh_scope"] == "window"
    assert all(dream.mask_id not in row for row in r.token_ids)
    assert r.flops < 0.5 * r.vanilla_flops_estimate
    assert any(ev.rows[0]["far_field"] for ev in r.events)


def test_early_stop_fills_with_eos(dream, llada):
    for loaded in (dream, llada):
        r = generate(loaded, PROMPTS, strategy="window", gen_length=64, early_stop=True)
        for row in r.token_ids:
            if loaded.eos_id in row:
                q = row.index(loaded.eos_id)
                assert all(t == loaded.eos_id for t in row[q:])
            assert loaded.mask_id not in row


def test_window_with_threshold_parallel_decoding(llada):
    r = generate(llada, "A bird in the hand", strategy="window", gen_length=64, threshold=0.05,
                 window=16, buffer=48, refresh=8)
    v = generate(llada, "A bird in the hand", strategy="vanilla", gen_length=64)
    assert llada.mask_id not in r.token_ids[0]
    assert r.steps < v.steps


def test_accounting(llada):
    v = generate(llada, "A bird in the hand", strategy="vanilla", gen_length=64)
    w = generate(llada, "A bird in the hand", strategy="window", gen_length=64, window=4, buffer=15, refresh=16)
    assert v.tokens_computed == 64 * (8 + 64)
    assert w.tokens_computed < v.tokens_computed / 2
    assert w.vanilla_flops_estimate == v.vanilla_flops_estimate
    assert 0 < w.flops < v.flops <= v.vanilla_flops_estimate
