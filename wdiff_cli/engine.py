"""Generation API: settings -> strategy run -> stream of plain events -> result.

    from wdiff_cli import load, generate
    m = load("tiny")
    r = generate(m, "ROMEO:", gen_length=64)
    print(r.texts[0])

``stream(...)`` yields ``RunStart``, one ``StepEvent`` per step, then ``RunEnd``; every consumer
(CLI printer, trace file, ``wdiff watch``, ``wdiff bench``) reads that stream.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Iterator

import torch

from .errors import GenerationError
from .loading import Loaded
from .strategies import STRATEGIES, build
from .strategies.base import Canvas, Sampling
from .trace import RunEnd, RunStart, StepEvent


@dataclass(frozen=True)
class Settings:
    """Every knob of a generation call. ``None`` means the strategy's or preset's default."""

    strategy: str = "window"
    gen_length: int = 128
    steps: int | None = None  # default: gen_length (one token per step)
    block_length: int | None = None
    # sampling
    temperature: float = 0.0
    remasking: str = "low_confidence"
    cfg_scale: float = 0.0
    alg: str = "entropy"
    alg_temp: float = 0.0
    top_p: float | None = None
    top_k: int | None = None
    eps: float = 1e-3
    seed: int = 0
    # window
    preset: str | None = None  # default: the family's paper preset
    window: int | None = None
    buffer: int | None = None
    refresh: int | None = None
    refresh_scope: str | None = None
    refresh_commit: str | None = None
    active_shape: str | None = None
    slide: bool | None = None
    early_stop: bool | None = None
    tokens_per_step: int | None = None
    threshold: float | None = None

    def sampling(self) -> Sampling:
        return Sampling(**{f.name: getattr(self, f.name) for f in fields(Sampling)})


@dataclass
class Result:
    texts: list[str]
    token_ids: list[list[int]]
    prompt_token_ids: list[list[int]]
    model: str
    strategy: str
    settings: dict
    steps: int
    forward_passes: int
    tokens_computed: int
    flops: int
    vanilla_flops_estimate: int
    seconds: float
    stop_reason: str
    events: list = field(default_factory=list)

    @classmethod
    def from_run(cls, loaded: Loaded, start: RunStart, end: RunEnd, events=()) -> "Result":
        return cls(texts=[decode(loaded, g) for g in end.token_ids], token_ids=end.token_ids,
                   prompt_token_ids=start.prompt_token_ids, model=loaded.name, strategy=start.strategy,
                   settings=start.settings, steps=end.steps, forward_passes=end.forward_passes,
                   tokens_computed=end.tokens_computed, flops=end.flops,
                   vanilla_flops_estimate=end.vanilla_flops_estimate, seconds=end.seconds,
                   stop_reason=end.stop_reason, events=list(events))

    def row_json(self, b: int = 0) -> dict:
        """The ``--format json`` object of prompt ``b``."""
        return dict(
            text=self.texts[b], token_ids=self.token_ids[b], prompt_token_ids=self.prompt_token_ids[b],
            model=self.model, strategy=self.strategy, settings=self.settings, steps=self.steps,
            forward_passes=self.forward_passes, tokens_computed=self.tokens_computed, flops=self.flops,
            vanilla_flops_estimate=self.vanilla_flops_estimate, seconds=round(self.seconds, 6),
            stop_reason=self.stop_reason,
        )


def encode(loaded: Loaded, prompt: str, chat: bool | None = None) -> list[int]:
    if not prompt or not prompt.strip():
        raise GenerationError("empty prompt: give the text to continue")
    tok = loaded.tokenizer
    use_chat = loaded.chat_default if chat is None else chat
    if use_chat and getattr(tok, "chat_template", None):
        text = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                       tokenize=False)
        return tok(text, add_special_tokens=False)["input_ids"]
    return tok(prompt, add_special_tokens=True)["input_ids"]


def decode(loaded: Loaded, ids: list[int]) -> str:
    """Generated ids -> text, cut at the first end-of-text (as the official evals do)."""
    eos = loaded.eos_id
    if eos is not None and eos in ids:
        ids = ids[: ids.index(eos)]
    return loaded.tokenizer.decode(ids, skip_special_tokens=True)


def resolve_settings(loaded: Loaded, s: Settings) -> tuple[Settings, object]:
    """Fill defaults and build the strategy config; raises GenerationError on bad values."""
    if s.strategy not in STRATEGIES:
        raise GenerationError(f"unknown strategy {s.strategy!r} (use {', '.join(STRATEGIES)})")
    for name in ("gen_length", "steps", "block_length", "window", "refresh", "tokens_per_step", "top_k"):
        v = getattr(s, name)
        if v is not None and v <= 0:
            raise GenerationError(f"--{name.replace('_', '-')} must be positive (got {v})")
    if s.buffer is not None and s.buffer < 0:
        raise GenerationError(f"--buffer must be >= 0 (got {s.buffer})")
    if s.temperature < 0:
        raise GenerationError(f"--temperature must be >= 0 (got {s.temperature})")
    if s.top_p is not None and not 0 < s.top_p <= 1:
        raise GenerationError(f"--top-p must be in (0, 1] (got {s.top_p})")
    if s.steps is None:
        s = replace(s, steps=s.gen_length)
    if s.steps > s.gen_length:
        raise GenerationError(f"--steps {s.steps} exceeds --gen-length {s.gen_length}; use --steps <= {s.gen_length}")
    try:
        s, cfg = build(loaded.model.args.family, s)
    except ValueError as e:
        raise GenerationError(str(e)) from None
    return s, cfg


def stream(loaded: Loaded, prompts: list[str] | list[list[int]], settings: Settings = Settings(),
           chat: bool | None = None, level: str = "full") -> Iterator:
    """Run one generation over a batch of prompts; yields RunStart, StepEvent..., RunEnd."""
    model = loaded.model
    a = model.args
    s, cfg = resolve_settings(loaded, settings)
    ids = [p if isinstance(p, list) else encode(loaded, p, chat) for p in prompts]
    if not ids:
        raise GenerationError("no prompts given")
    longest = max(len(p) for p in ids) + s.gen_length
    if longest > a.max_positions:
        raise GenerationError(f"prompt ({max(len(p) for p in ids)} tokens) + --gen-length {s.gen_length} = {longest} "
                              f"exceeds the model's {a.max_positions} positions; shorten one of them")
    fill = a.eos_id if a.eos_id is not None else (a.pad_id if a.pad_id is not None else 0)
    canvas = Canvas(ids, s.gen_length, a.mask_id, fill, model.device)
    run = STRATEGIES[s.strategy].run
    yield RunStart(model=loaded.name, family=a.family, strategy=s.strategy, settings=asdict(s),
                   prompt_token_ids=ids, gen_length=s.gen_length, mask_id=a.mask_id, eos_id=a.eos_id)
    t0 = time.perf_counter()
    totals = dict(steps=0, forward_passes=0, tokens_computed=0, flops=0, vanilla_flops_estimate=0)
    with torch.inference_mode():
        try:
            for ev in run(model, canvas, s.sampling(), cfg, level=level):
                totals["steps"] += 1
                totals["forward_passes"] += ev.forward_passes
                totals["tokens_computed"] += ev.tokens_computed
                totals["flops"] += ev.flops
                totals["vanilla_flops_estimate"] += ev.vanilla_flops
                yield ev
        except ValueError as e:
            raise GenerationError(str(e)) from None
    if model.device.type == "cuda":
        torch.cuda.synchronize()
    gen = canvas.generated()
    stop = "eos" if s.early_stop and any(a.eos_id in g for g in gen) else "complete"
    if any(a.mask_id in g for g in gen):
        stop = "masks_left"
    seconds = time.perf_counter() - t0
    vocab = {}
    if loaded.tokenizer is not None:
        seen = sorted({t for row in ids + gen for t in row})
        vocab = {str(t): loaded.tokenizer.decode([t]) for t in seen}
    yield RunEnd(seconds=seconds, stop_reason=stop, token_ids=gen, vocab=vocab, **totals)


def generate(loaded: Loaded, prompts: str | list[str] | list[list[int]], chat: bool | None = None,
             keep_events: bool = False, level: str | None = None, **settings) -> Result:
    """Generate for one prompt or a batch; ``settings`` are ``Settings`` fields."""
    if isinstance(prompts, str) or (prompts and isinstance(prompts[0], int)):
        prompts = [prompts]
    s = Settings(**settings)
    start = end = None
    events = []
    for ev in stream(loaded, prompts, s, chat=chat, level=level or ("full" if keep_events else "counts")):
        if isinstance(ev, RunStart):
            start = ev
        elif isinstance(ev, RunEnd):
            end = ev
        elif keep_events:
            events.append(ev)
    return Result.from_run(loaded, start, end, events)


__all__ = ["Settings", "Result", "GenerationError", "stream", "generate", "encode", "decode", "StepEvent"]
