"""Where ``wdiff watch`` gets its events: a live generation or a recorded trace (Textual-free).

Both sources give the same interface:

- ``events(cancelled)`` yields RunStart, StepEvent..., RunEnd; a live source checks
  ``cancelled()`` before every step and closes the engine's generator when it returns True;
- ``token_text(id)`` gives a token's text (the tokenizer when live, the trace's ``vocab`` in replay);
- ``live`` says whether events take time to arrive (run them in a worker thread).

torch and the model are imported inside ``LiveSource.events`` so that a replay never loads them.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Protocol

from wdiff_cli.trace import RunEnd, RunStart, read_trace


def int_keys(vocab: dict) -> dict[int, str]:
    """The trace's ``vocab`` (JSON object keys are strings) -> {token id: text}."""
    return {int(k): v for k, v in vocab.items()}


class EventSource(Protocol):
    live: bool
    label: str

    def events(self, cancelled: Callable[[], bool] = lambda: False) -> Iterator: ...

    def token_text(self, token_id: int) -> str: ...


class ReplaySource:
    """A ``wdiff-trace/1`` file, read at construction (raises ValueError or OSError on bad input)."""

    live = False

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.label = self.path.name
        self._events = list(read_trace(self.path))
        if not self._events or not isinstance(self._events[0], RunStart):
            raise ValueError(f"{self.path}: not a wdiff trace (the first line must be a run_start event)")
        self.start: RunStart = self._events[0]
        end = self._events[-1]
        self.vocab: dict[int, str] = int_keys(end.vocab) if isinstance(end, RunEnd) else {}

    def events(self, cancelled: Callable[[], bool] = lambda: False) -> Iterator:
        yield from self._events

    def token_text(self, token_id: int) -> str:
        return self.vocab.get(token_id, f"<{token_id}>")


@dataclass
class SharedModel:
    """A model loaded once for every live source that uses it; ``lock`` serialises their steps."""

    name: str
    device: str = "auto"
    dtype: str = "auto"
    loaded: object = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def get(self):
        with self.lock:
            if self.loaded is None:
                from wdiff_cli.loading import load

                self.loaded = load(self.name, device=self.device, dtype=self.dtype)
            return self.loaded


class LiveSource:
    """Runs ``engine.stream`` on one prompt batch; ``settings`` are ``engine.Settings`` fields."""

    live = True

    def __init__(self, model: SharedModel, prompts: list[str], settings: dict, chat: bool | None = None):
        self.model = model
        self.prompts = prompts
        self.settings = dict(settings)
        self.chat = chat
        self.label = f"{self.settings.get('strategy', 'window')} · {Path(model.name).name or model.name}"
        self._texts: dict[int, str] = {}

    def with_strategy(self, strategy: str) -> "LiveSource":
        """The same prompt and model under another strategy (for the compare view)."""
        s = dict(self.settings, strategy=strategy)
        if strategy != "window":
            for k in ("preset", "window", "buffer", "refresh", "refresh_scope", "refresh_commit", "active_shape",
                      "slide", "early_stop", "tokens_per_step"):
                s[k] = None
        return LiveSource(self.model, self.prompts, s, self.chat)

    def events(self, cancelled: Callable[[], bool] = lambda: False) -> Iterator:
        loaded = self.model.get()
        if cancelled():
            return
        from wdiff_cli.engine import Settings, stream

        it = stream(loaded, self.prompts, Settings(**self.settings), chat=self.chat, level="full")
        try:
            while True:
                if cancelled():
                    return
                with self.model.lock:
                    try:
                        ev = next(it)
                    except StopIteration:
                        return
                if isinstance(ev, RunEnd):
                    self._texts.update(int_keys(ev.vocab))
                yield ev
        finally:
            it.close()

    def token_text(self, token_id: int) -> str:
        t = self._texts.get(token_id)
        if t is None:
            tok = getattr(self.model.loaded, "tokenizer", None)
            t = tok.decode([token_id]) if tok is not None else f"<{token_id}>"
            self._texts[token_id] = t
        return t


__all__ = ["EventSource", "ReplaySource", "LiveSource", "SharedModel"]
