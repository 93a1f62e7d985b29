"""Typer option aliases shared by ``generate``, ``watch`` and ``bench`` (declared once)."""

from __future__ import annotations

import functools
import inspect
import typing
from typing import Annotated, Optional

import typer

GEN = "Generation"
WIN = "Window-Diffusion (defaults: the family's paper preset)"
SAMP = "Sampling"
RUN = "Model and device"

Model = Annotated[str, typer.Option("--model", "-m", envvar="WDIFF_MODEL", rich_help_panel=RUN,
                                    help="Built-in name (tiny, tiny-dream), hub alias (llada, llada-base, llada-1.5, dream, dream-base) or checkpoint directory.")]
Device = Annotated[str, typer.Option(help="auto | cpu | cuda | mps (auto: cuda, then mps, then cpu).", rich_help_panel=RUN)]
Dtype = Annotated[str, typer.Option(help="auto | float32 | bfloat16 | float16 (auto: fp32 on CPU, bf16 on CUDA).", rich_help_panel=RUN)]
Chat = Annotated[Optional[bool], typer.Option("--chat/--no-chat", help="Apply the chat template (default: on for instruct checkpoints).", rich_help_panel=RUN)]
Strategy = Annotated[str, typer.Option("--strategy", "-s", help="window | vanilla | prefix-cache | dual-cache.", rich_help_panel=GEN)]
GenLength = Annotated[int, typer.Option(help="Tokens to generate.", rich_help_panel=GEN)]
Steps = Annotated[Optional[int], typer.Option(help="Denoising steps (default: gen-length, one token per step).", rich_help_panel=GEN)]
BlockLength = Annotated[Optional[int], typer.Option(help="Semi-autoregressive block length (default: gen-length; 32 for the caches).", rich_help_panel=GEN)]
Threshold = Annotated[Optional[float], typer.Option(help="Confidence-threshold parallel decoding: commit every candidate at or above it (at least one per step).", rich_help_panel=GEN)]
TokensPerStep = Annotated[Optional[int], typer.Option(help="Fixed number of tokens committed per step (window).", rich_help_panel=GEN)]
Temperature = Annotated[float, typer.Option(help="0 = greedy.", rich_help_panel=SAMP)]
Remasking = Annotated[str, typer.Option(help="LLaDA: low_confidence | random.", rich_help_panel=SAMP)]
CfgScale = Annotated[float, typer.Option(help="LLaDA classifier-free guidance scale (vanilla only).", rich_help_panel=SAMP)]
Alg = Annotated[str, typer.Option(help="Dream: entropy | maskgit_plus | topk_margin | origin.", rich_help_panel=SAMP)]
AlgTemp = Annotated[float, typer.Option(help="Dream: sample positions from softmax(confidence / alg-temp).", rich_help_panel=SAMP)]
TopP = Annotated[Optional[float], typer.Option(help="Dream: nucleus filter.", rich_help_panel=SAMP)]
TopK = Annotated[Optional[int], typer.Option(help="Dream: top-k filter.", rich_help_panel=SAMP)]
Eps = Annotated[float, typer.Option(help="Dream: final timestep.", rich_help_panel=SAMP)]
Seed = Annotated[int, typer.Option(help="Random seed (sampling at temperature > 0).", rich_help_panel=SAMP)]
Preset = Annotated[Optional[str], typer.Option(help="llada-paper | dream-paper (default: the model family's).", rich_help_panel=WIN)]
Window = Annotated[Optional[int], typer.Option(help="Active tokens recomputed every step [16].", rich_help_panel=WIN)]
Buffer = Annotated[Optional[int], typer.Option(help="Cached masked tokens beyond the active ones [llada 48, dream 111].", rich_help_panel=WIN)]
Refresh = Annotated[Optional[int], typer.Option(help="Phase length: one refresh step then cached steps [32].", rich_help_panel=WIN)]
RefreshScope = Annotated[Optional[str], typer.Option(help="full | window: does a refresh compute the far field? [llada full, dream window].", rich_help_panel=WIN)]
RefreshCommit = Annotated[Optional[str], typer.Option(help="schedule | leftmost: what a refresh step commits [llada schedule, dream leftmost].", rich_help_panel=WIN)]
ActiveShape = Annotated[Optional[str], typer.Option(help="sparse | span: active set shape [llada sparse, dream span].", rich_help_panel=WIN)]
Slide = Annotated[Optional[bool], typer.Option("--slide/--no-slide", help="Span: the active end follows the front within a phase [on].", rich_help_panel=WIN)]
EarlyStop = Annotated[Optional[bool], typer.Option("--early-stop/--no-early-stop", help="Stop at the first end-of-text and fill the rest with it [off].", rich_help_panel=WIN)]


# every ``engine.Settings`` field as a CLI option: (name, annotation, default)
GENERATION_OPTIONS = [
    ("strategy", Strategy, "window"), ("gen_length", GenLength, 128), ("steps", Steps, None),
    ("block_length", BlockLength, None), ("threshold", Threshold, None), ("tokens_per_step", TokensPerStep, None),
    ("preset", Preset, None), ("window", Window, None), ("buffer", Buffer, None), ("refresh", Refresh, None),
    ("refresh_scope", RefreshScope, None), ("refresh_commit", RefreshCommit, None),
    ("active_shape", ActiveShape, None), ("slide", Slide, None), ("early_stop", EarlyStop, None),
    ("temperature", Temperature, 0.0), ("remasking", Remasking, "low_confidence"), ("cfg_scale", CfgScale, 0.0),
    ("alg", Alg, "entropy"), ("alg_temp", AlgTemp, 0.0), ("top_p", TopP, None), ("top_k", TopK, None),
    ("eps", Eps, 1e-3), ("seed", Seed, 0),
]


def with_generation_options(fn):
    """Add every generation option to a typer command; the command receives them as ``settings``.

    The options are declared once here, so ``generate`` and ``watch`` cannot drift apart.
    """
    sig = inspect.signature(fn)
    hints = typing.get_type_hints(fn, include_extras=True)  # resolve `from __future__` string annotations
    own = [p.replace(annotation=hints.get(p.name, p.annotation)) for p in sig.parameters.values()
           if p.name != "settings"]
    extra = [inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, annotation=a, default=d)
             for n, a, d in GENERATION_OPTIONS]

    @functools.wraps(fn)
    def wrapper(*args, **kw):
        settings = {n: kw.pop(n) for n, _, _ in GENERATION_OPTIONS}
        return fn(*args, settings=settings, **kw)

    wrapper.__signature__ = sig.replace(parameters=own + extra)
    wrapper.__annotations__ = {**{k: v for k, v in hints.items() if k != "settings"},
                               **{n: a for n, a, _ in GENERATION_OPTIONS}}
    del wrapper.__wrapped__  # typer must read the new signature, not the wrapped one
    return wrapper
