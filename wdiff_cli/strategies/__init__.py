"""Strategy registry: name -> module with ``run(model, canvas, sampling, config, level)``.

``build(family, settings)`` resolves presets and defaults into (filled settings, config).
"""

from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace

from . import cache, vanilla, window

STRATEGIES = {
    "vanilla": SimpleNamespace(run=vanilla.run, help="full recompute every step (the official samplers)"),
    "window": SimpleNamespace(run=window.run, help="Window-Diffusion: active window, cached buffer, pruned far field"),
    "prefix-cache": SimpleNamespace(run=cache.run, help="Fast-dLLM block-wise prefix K/V cache"),
    "dual-cache": SimpleNamespace(run=cache.run, help="Fast-dLLM block-wise prefix + suffix K/V cache"),
}
WINDOW_FIELDS = ("window", "buffer", "refresh", "refresh_scope", "refresh_commit", "active_shape", "slide", "early_stop")
CACHE_BLOCK_DEFAULT = 32


def build(family: str, s):
    """-> (settings with every default filled in, strategy config). Raises ValueError."""
    if s.strategy == "vanilla":
        cfg = vanilla.VanillaConfig(steps=s.steps, block_length=s.block_length, threshold=s.threshold)
        vanilla.block_plan(s.gen_length, s.steps, s.block_length)
        return replace(s, block_length=s.block_length or s.gen_length), cfg
    if s.strategy in ("prefix-cache", "dual-cache"):
        bl = s.block_length or (CACHE_BLOCK_DEFAULT if s.gen_length % CACHE_BLOCK_DEFAULT == 0 else s.gen_length)
        vanilla.block_plan(s.gen_length, s.steps, bl)
        cfg = cache.CacheConfig(steps=s.steps, block_length=bl, threshold=s.threshold, dual=s.strategy == "dual-cache")
        return replace(s, block_length=bl), cfg
    preset = s.preset or window.FAMILY_PRESET[family]
    over = {f: getattr(s, f) for f in WINDOW_FIELDS if getattr(s, f) is not None}
    cfg = window.preset_config(preset, s.steps, block_length=s.block_length,
                               tokens_per_step=s.tokens_per_step, threshold=s.threshold, **over)
    window.validate(cfg, s.gen_length, family)
    filled = replace(s, preset=preset, block_length=s.block_length or s.gen_length,
                     **{f: getattr(cfg, f) for f in WINDOW_FIELDS})
    return filled, cfg
