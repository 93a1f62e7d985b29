"""The timeline bar: where the cursor is in the run, which steps were received, which refreshed."""

from __future__ import annotations

from rich.segment import Segment
from textual.strip import Strip
from textual.widget import Widget

from ..state import RunState


class Timeline(Widget):
    """One line: ━ played, ─ received, ╌ not yet received, ┃ a refresh (full) step, ● the cursor."""

    COMPONENT_CLASSES = {"timeline--played", "timeline--future", "timeline--pending", "timeline--refresh",
                         "timeline--cursor"}
    DEFAULT_CSS = "Timeline { height: 1; }"

    def __init__(self, run: RunState, **kw):
        super().__init__(**kw)
        self.run = run

    def render_line(self, y: int) -> Strip:
        width = self.size.width
        base = self.rich_style
        run = self.run
        n = run.expected_steps
        if y > 0 or n == 0 or width < 2:
            return Strip.blank(width, base)
        refresh_cols = {s * width // n for s in run.refresh_steps}
        cur_col = min(width - 1, run.cursor * width // n)
        style = self.get_component_rich_style
        segs = []
        for c in range(width):
            step = c * n // width  # the first step drawn in this column
            if c == cur_col:
                ch, cls = "●", "timeline--cursor"
            elif c in refresh_cols:
                ch, cls = "┃", "timeline--refresh"
            elif step < run.cursor:
                ch, cls = "━", "timeline--played"
            elif step < run.received:
                ch, cls = "─", "timeline--future"
            else:
                ch, cls = "╌", "timeline--pending"
            segs.append(Segment(ch, base + style(cls)))
        return Strip(segs, width)
