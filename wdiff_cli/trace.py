"""The per-step trace: plain-data events and their JSONL file format (``wdiff-trace/1``).

A trace file is one JSON object per line:
  1. ``{"type": "run_start", ...}``  model, settings, prompts, mask id
  2. ``{"type": "step", ...}``       one per denoising step
  3. ``{"type": "run_end", ...}``    totals and the generated ids

Position sets are lists of half-open spans ``[start, stop)`` of absolute canvas positions.
The README documents every field. No tensors cross this module.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

FORMAT = "wdiff-trace/1"


def spans(positions: Iterable[int]) -> list[list[int]]:
    """Sorted absolute positions -> [[start, stop), ...]."""
    out: list[list[int]] = []
    for p in sorted(int(p) for p in positions):
        if out and out[-1][1] == p:
            out[-1][1] = p + 1
        elif not out or out[-1][1] < p:
            out.append([p, p + 1])
    return out


def expand(sp: list[list[int]]) -> list[int]:
    return [p for a, b in sp for p in range(a, b)]


@dataclass
class RunStart:
    model: str
    family: str
    strategy: str
    settings: dict
    prompt_token_ids: list[list[int]]
    gen_length: int
    mask_id: int
    eos_id: int | None
    type: str = "run_start"
    format: str = FORMAT

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class StepEvent:
    step: int
    phase: int
    kind: str  # "full" (vanilla) | "refresh" | "cached"
    seconds: float
    forward_passes: int
    tokens_computed: int
    flops: int
    vanilla_flops: int
    rows: list[dict]
    type: str = "step"

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class RunEnd:
    steps: int
    forward_passes: int
    tokens_computed: int
    flops: int
    vanilla_flops_estimate: int
    seconds: float
    stop_reason: str
    token_ids: list[list[int]]
    vocab: dict = field(default_factory=dict)  # str(token id) -> text, every id in prompts and outputs
    type: str = "run_end"

    def to_dict(self) -> dict:
        return asdict(self)


EVENT_TYPES = {"run_start": RunStart, "step": StepEvent, "run_end": RunEnd}


def from_dict(d: dict):
    cls = EVENT_TYPES.get(d.get("type"))
    if cls is None:
        raise ValueError(f"not a wdiff trace event: type={d.get('type')!r}")
    return cls(**d)


class TraceWriter:
    """Writes events to ``path`` atomically: a temp file renamed into place on close."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.tmp = self.path.with_name(self.path.name + ".tmp")
        self.f = open(self.tmp, "w")

    def write(self, event) -> None:
        self.f.write(json.dumps(event.to_dict(), separators=(",", ":")) + "\n")

    def close(self, ok: bool = True) -> None:
        self.f.close()
        if ok:
            os.replace(self.tmp, self.path)
        else:
            self.tmp.unlink(missing_ok=True)


def read_trace(path: str | os.PathLike) -> Iterator:
    """Yield events from a trace file; raises ValueError with the line number on bad input."""
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield from_dict(json.loads(line))
            except (json.JSONDecodeError, TypeError, ValueError) as e:
                raise ValueError(f"{path}:{n}: not a wdiff trace line ({e})") from None
