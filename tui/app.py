"""``wdiff watch``: a Textual app that animates each denoising step of a run.

State is the list of received events plus one cursor shared by every pane; each pane's
``RunState`` moves its canvas to the cursor by applying or reverting per-step diffs. Live runs
drain their ``LiveSource`` in a thread worker that posts one message per event and stops at the
next step once cancelled (quitting cancels it).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from textual import work
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.message import Message
from textual.widgets import Footer, Header, Static
from textual.worker import get_current_worker

from wdiff_cli.trace import RunEnd, RunStart, TraceWriter

from .sources import EventSource
from .state import RunState
from .widgets import Legend, StatsPanel, Timeline, TokenCanvas

SPEEDS = (1, 2, 5, 10, 20, 50, 100, 200, 500)  # steps per second
FPS = 30


class SourceEvent(Message):
    """One event from a source's worker."""

    def __init__(self, key: str, event) -> None:
        super().__init__()
        self.key = key
        self.event = event


class SourceFailed(Message):
    """A source's worker stopped with an error (ModelLoadError, GenerationError, ...)."""

    def __init__(self, key: str, error: str) -> None:
        super().__init__()
        self.key = key
        self.error = error


def error_line(e: BaseException) -> str:
    """One line for the user: the message of our own error types, else the type and message."""
    from wdiff_cli.loading import ModelLoadError

    known: tuple = (ModelLoadError,)
    engine = sys.modules.get("wdiff_cli.engine")  # imported only if generation started (it imports torch)
    if engine is not None:
        known += (engine.GenerationError,)
    msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
    if isinstance(e, known) and msg:
        return msg
    return f"{type(e).__name__}: {msg}" if msg else type(e).__name__


class Pane(Vertical):
    """One run: a title line, its canvas (scrolls when taller than the pane)."""

    def __init__(self, key: str, run: RunState, source: EventSource, **kw):
        super().__init__(id=f"pane-{key}", classes="pane", **kw)
        self.key = key
        self.run = run
        self.source = source
        self._title = self.title_text()

    def compose(self) -> ComposeResult:
        yield Static(self.title_text(), classes="pane-title")
        with VerticalScroll(classes="pane-body"):
            yield Static("", classes="pane-error")
            yield TokenCanvas(self.run, self.source.token_text)

    def title_text(self) -> str:
        run = self.run
        if run.error is not None and run.start is None:
            return f"{self.source.label}  failed"
        if run.start is None:
            return f"{self.source.label}  loading model…"
        s = run.start
        rows = f" · row {run.row}/{len(s.prompt_token_ids)}" if len(s.prompt_token_ids) > 1 else ""
        state = "" if run.end is not None else "  failed" if run.error is not None else "  running…"
        return f"{s.strategy} · {Path(s.model).name}{rows} · {run.prompt_len}+{s.gen_length} tokens{state}"

    def update_view(self) -> None:
        title = self.title_text()
        if title != self._title:
            self._title = title
            self.query_one(".pane-title", Static).update(title, layout=False)
        if self.run.error is not None and not self.has_class("-failed"):
            self.add_class("-failed")
            self.query_one(".pane-error", Static).update(f"error: {self.run.error}")
        self.query_one(TokenCanvas).update_view()


class WatchApp(App):
    """Animate a run step by step; ``source`` is a LiveSource or a ReplaySource."""

    CSS_PATH = Path(__file__).parent / "app.tcss"
    TITLE = "wdiff watch"
    ENABLE_COMMAND_PALETTE = False
    _STEP = Binding.Group("step", compact=True)
    _SPEED = Binding.Group("speed", compact=True)
    _JUMP = Binding.Group("jump")
    # priority: the scrolling canvas must not swallow the arrow, home and end keys
    BINDINGS = [
        Binding("space", "toggle_play", "play", priority=True),
        Binding("left", "step(-1)", "back", key_display="←", group=_STEP, priority=True),
        Binding("right", "step(1)", "forward", key_display="→", group=_STEP, priority=True),
        Binding("plus,equals_sign", "speed(1)", "faster", key_display="+", group=_SPEED, priority=True),
        Binding("minus", "speed(-1)", "slower", key_display="-", group=_SPEED, priority=True),
        Binding("home", "jump(0)", "start", group=_JUMP, priority=True),
        Binding("end", "jump(-1)", "end", group=_JUMP, priority=True),
        Binding("s", "save", "save"),
        Binding("c", "compare", "compare"),
        Binding("q", "quit", "quit"),
    ]

    def __init__(self, source: EventSource, row: int = 0, speed: int = 20, play: bool = True,
                 compare_strategy: str | None = None):
        super().__init__()
        self.sources: dict[str, EventSource] = {"main": source}
        self.runs: dict[str, RunState] = {"main": RunState(row=row)}
        self.row = row
        self.cursor = 0
        self.playing = play
        self.speed_i = min(range(len(SPEEDS)), key=lambda i: abs(SPEEDS[i] - speed))
        self._acc = 0.0
        self._last_tick = time.monotonic()
        self._compare_strategy = compare_strategy
        self.saved: list[Path] = []

    # ---- layout
    def compose(self) -> ComposeResult:
        yield Header()
        with Horizontal(id="main"):
            with Vertical(id="left"):
                with Horizontal(id="panes"):
                    yield Pane("main", self.runs["main"], self.sources["main"])
                yield Legend()
            yield StatsPanel(id="side")
        yield Timeline(self.runs["main"])
        yield Footer()

    def on_mount(self) -> None:
        self.sub_title = self.sources["main"].label
        self._timer = self.set_interval(1 / FPS, self._tick, pause=not self.playing)
        self._start("main")
        self._redraw()

    def _start(self, key: str) -> None:
        source = self.sources[key]
        if source.live:
            self._drain(key, source)
        else:
            try:
                for ev in source.events():
                    self.runs[key].add(ev)
            except ValueError as e:
                self._failed(key, str(e))

    @work(thread=True, exit_on_error=False, group="runs")
    def _drain(self, key: str, source: EventSource) -> None:
        """Generation off the UI thread: one message per event; stops at the next step once cancelled."""
        worker = get_current_worker()
        try:
            for ev in source.events(lambda: worker.is_cancelled):
                if worker.is_cancelled:
                    return
                self.post_message(SourceEvent(key, ev))
        except Exception as e:  # shown in the app, never a crash
            self.post_message(SourceFailed(key, error_line(e)))

    # ---- events from the workers
    def on_source_event(self, msg: SourceEvent) -> None:
        run = self.runs[msg.key]
        try:
            run.add(msg.event)
        except ValueError as e:
            self._failed(msg.key, str(e))
            return
        if isinstance(msg.event, (RunStart, RunEnd)):
            if isinstance(msg.event, RunEnd) and msg.key == "main":
                self.notify(f"run finished: {msg.event.steps} steps in {msg.event.seconds:.2f} s")
            self._redraw()
        elif msg.key == "main":
            self.query_one(Timeline).refresh()

    def on_source_failed(self, msg: SourceFailed) -> None:
        self._failed(msg.key, msg.error)

    def _failed(self, key: str, error: str) -> None:
        self.runs[key].error = error
        self.notify(error, title="model error" if key == "main" else f"{key} run failed", severity="error",
                    timeout=10)
        self._redraw()

    # ---- the cursor
    @property
    def head(self) -> int:
        return max(r.received for r in self.runs.values())

    def goto(self, k: int) -> None:
        self.cursor = max(0, min(k, self.head))
        for r in self.runs.values():
            r.seek(self.cursor)
        self._redraw()

    def _redraw(self) -> None:
        for key in self.runs:
            pane = self._pane(key)
            if pane is not None:
                pane.update_view()
        main = self.runs["main"]
        other = self.runs.get("compare")
        self.query_one(StatsPanel).show(main, self.sources["main"].token_text, other)
        self.query_one(Timeline).refresh()

    def _pane(self, key: str) -> Pane | None:
        found = self.query(f"#pane-{key}")
        return found.first(Pane) if found else None

    def _tick(self) -> None:
        now = time.monotonic()
        dt, self._last_tick = now - self._last_tick, now
        if self.cursor >= self.head:
            self._acc = 0.0
            if all(r.done for r in self.runs.values()):
                self._set_playing(False)
            return
        self._acc += SPEEDS[self.speed_i] * min(dt, 0.5)
        n = int(self._acc)
        if n:
            self._acc -= n
            self.goto(self.cursor + n)

    def _set_playing(self, on: bool) -> None:
        self.playing = on
        if on:
            self._last_tick = time.monotonic()
            self._timer.resume()
        else:
            self._timer.pause()
            self._acc = 0.0

    # ---- actions
    def action_toggle_play(self) -> None:
        if not self.playing and self.cursor >= self.head and all(r.done for r in self.runs.values()):
            self.goto(0)  # replay from the start
        self._set_playing(not self.playing)
        self.notify("playing" if self.playing else "paused", timeout=1)

    def action_step(self, delta: int) -> None:
        self._set_playing(False)
        self.goto(self.cursor + delta)

    def action_speed(self, delta: int) -> None:
        self.speed_i = max(0, min(len(SPEEDS) - 1, self.speed_i + delta))
        self.notify(f"{SPEEDS[self.speed_i]} steps/s", timeout=1)

    def action_jump(self, where: int) -> None:
        self.goto(self.head if where < 0 else where)

    def action_save(self) -> Path | None:
        run = self.runs["main"]
        if run.start is None:
            self.notify("nothing to save yet", severity="warning")
            return None
        stamp = time.strftime("%Y%m%d-%H%M%S")
        path = Path.cwd() / f"wdiff-trace-{stamp}.jsonl"
        n = 1
        while path.exists():
            path = Path.cwd() / f"wdiff-trace-{stamp}-{n}.jsonl"
            n += 1
        try:
            w = TraceWriter(path)
            for ev in run.events():
                w.write(ev)
            w.close()
        except OSError as e:
            self.notify(f"cannot save the trace: {e}", severity="error")
            return None
        self.saved.append(path)
        partial = "" if run.end is not None else " (partial: the run is still going)"
        self.notify(f"saved {path.name}: {run.received} steps{partial}")
        return path

    def action_compare(self) -> None:
        if "compare" in self.runs:
            pane = self._pane("compare")
            pane.display = not pane.display
            return
        main = self.sources["main"]
        if not main.live or not hasattr(main, "with_strategy"):
            self.notify("compare needs a live run: wdiff watch PROMPT", severity="warning")
            return
        strategy = self._compare_strategy or ("window" if main.settings.get("strategy") == "vanilla" else "vanilla")
        self.sources["compare"] = main.with_strategy(strategy)
        self.runs["compare"] = RunState(row=self.row)
        self.query_one("#panes").mount(Pane("compare", self.runs["compare"], self.sources["compare"]))
        self._start("compare")
        self.notify(f"compare: {strategy} on the same prompt")

    # ---- for tests and scripting
    def cell_state(self, pos: int, key: str = "main") -> tuple[str, str | None]:
        """(state, token text or None when masked) of canvas position ``pos`` at the cursor."""
        st, tok = self.runs[key].cell(pos)
        return st, (None if tok is None else self.sources[key].token_text(tok))
