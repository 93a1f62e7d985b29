"""Side panel: this step (kind, tokens and FLOPs vs vanilla, time), step-time sparkline, totals, commits."""

from __future__ import annotations

from typing import Callable

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Sparkline, Static

from ..state import RunState
from .token_canvas import cell_text


def fmt_seconds(s: float) -> str:
    if s < 1e-3:
        return f"{s * 1e6:.0f} µs"
    if s < 1:
        return f"{s * 1e3:.1f} ms"
    return f"{s:.2f} s"


class StatsPanel(Vertical):
    COMPONENT_CLASSES = {"stats--label", "stats--value", "stats--refresh", "stats--cached", "stats--dim"}

    def compose(self) -> ComposeResult:
        yield Static(id="step-stats")
        yield Static("step time", id="spark-label")
        yield Sparkline([0.0], id="spark")
        yield Static(id="run-stats")

    def _set(self, selector: str, t: Text) -> None:
        """Update a text block; relayout only when its line count changed (keeps a step's redraw small)."""
        lines = t.plain.count("\n") + 1
        key = f"_lines{selector}"
        self.query_one(selector, Static).update(t, layout=getattr(self, key, None) != lines)
        setattr(self, key, lines)

    def _s(self, name: str):
        return self.get_component_rich_style(f"stats--{name}")

    def _row(self, t: Text, label: str, value: str) -> None:
        t.append(f"{label:<6} ", self._s("label"))
        t.append(f"{value}\n", self._s("value"))

    def show(self, run: RunState, token_text: Callable[[int], str], other: RunState | None = None) -> None:
        """Fill the panel for ``run`` at its cursor; ``other`` is the compare run, if any."""
        t = Text(no_wrap=True, overflow="ellipsis")
        ev = run.current()
        n = run.expected_steps
        if run.start is None:
            t.append("loading…" if run.error is None else "no run", self._s("dim"))
        else:
            self._row(t, "step", f"{run.cursor}/{n}" + (f" · phase {ev.phase}" if ev else ""))
            if ev is None:
                t.append(" start ", self._s("cached"))
                t.append("\n")
            else:
                badge = {"full": "vanilla", "refresh": "REFRESH", "cached": "cached", "mixed": "mixed"}.get(ev.kind, ev.kind)
                t.append(f" {badge} ", self._s("cached" if ev.kind == "cached" else "refresh"))
                t.append(f" {ev.forward_passes} fwd\n", self._s("dim"))
                van = run.vanilla_tokens()
                self._row(t, "tokens", f"{ev.tokens_computed}/{van}" + (f" {100 * ev.tokens_computed / van:.0f}%" if van else ""))
                if ev.vanilla_flops:
                    self._row(t, "FLOPs", f"{ev.flops / ev.vanilla_flops:.2f}× vanilla")
                self._row(t, "time", fmt_seconds(ev.seconds))
        t.rstrip()
        self._set("#step-stats", t)
        self.query_one("#spark", Sparkline).data = [s.seconds for s in run.steps[: run.cursor]]

        t = Text()
        if run.start is not None:
            self._row(t, "total", fmt_seconds(run.seconds_so_far()))
            ratio = run.flop_ratio_so_far()
            if ratio is not None:
                self._row(t, "FLOPs", f"{ratio:.2f}× vanilla")
            sv = run.current_view()
            if sv is not None and sv.masks_left is not None:
                self._row(t, "masks", f"{sv.masks_left} left")
            if other is not None and other.start is not None:
                k = min(run.cursor, other.received)
                t.append(f"{other.start.strategy} ", self._s("label"))
                t.append(f"{fmt_seconds(other.seconds_so_far(k))} at step {k}\n", self._s("value"))
            if run.end is not None and run.cursor == run.received:
                self._row(t, "end", run.end.stop_reason)
            if sv is not None:
                t.append(f"committed {len(sv.committed)}\n", self._s("label"))
                for pos, tok, conf in sv.committed[:12]:
                    t.append(f" @{pos:<4}", self._s("dim"))
                    t.append(f"{cell_text(token_text(tok), 8):<9}", self._s("value"))
                    t.append(f"{conf:.3f}\n", self._s("dim"))
                if len(sv.committed) > 12:
                    t.append(f" +{len(sv.committed) - 12} more\n", self._s("dim"))
        t.rstrip()
        self._set("#run-stats", t)
