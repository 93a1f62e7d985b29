"""The canvas: every position of prompt + generation, wrapped to the width, one style per cell state.

Rendered with the line API from a layout cached per (cursor, width), so a step costs one pass
over the canvas and Textual repaints only the lines that changed. Styles are the component
classes ``cell--<state>`` (colours in ``app.tcss``).
"""

from __future__ import annotations

from typing import Callable

from rich.cells import cell_len
from rich.segment import Segment
from rich.text import Text
from textual.strip import Strip
from textual.widget import Widget

from ..state import ACTIVE, BUFFER, FAR_FIELD, MASKED, STATES, RunState

MASK_GLYPH = {ACTIVE: "░", BUFFER: "░", MASKED: "░", FAR_FIELD: "·"}
MAX_CELL = 10  # longest token text shown, in cells
_PICTURES = {"\n": "⏎", "\t": "⇥", "\r": "␍", "\x7f": "␡"}


def cell_text(text: str, limit: int = MAX_CELL) -> str:
    """A token's text as one printable cell: control characters as symbols, long pieces cut with …"""
    out = []
    for ch in text:
        if ch in _PICTURES:
            out.append(_PICTURES[ch])
        elif ord(ch) < 32:
            out.append(chr(0x2400 + ord(ch)))  # the Unicode "control pictures" block
        elif ch.isprintable() or ch == " ":
            out.append(ch)
        else:
            out.append("�")
    s = "".join(out) or "∅"
    if cell_len(s) > limit:
        while cell_len(s) > limit - 1:
            s = s[:-1]
        s += "…"
    return s


class TokenCanvas(Widget):
    """The canvas of one run's watched row at the run's cursor."""

    COMPONENT_CLASSES = {f"cell--{s}" for s in STATES}
    DEFAULT_CSS = "TokenCanvas { height: auto; }"

    def __init__(self, run: RunState, token_text: Callable[[int], str], **kw):
        super().__init__(**kw)
        self.run = run
        self.token_text = token_text
        self._texts: dict[int, str] = {}
        self._layout_key = None
        self._layout: list[list[tuple[str, str]]] = []

    def text_of(self, token_id: int) -> str:
        t = self._texts.get(token_id)
        if t is None:
            t = self._texts[token_id] = cell_text(self.token_text(token_id))
        return t

    def cells(self) -> list[tuple[str, str]]:
        """(display text, state) of every position at the run's cursor."""
        run = self.run
        if run.start is None:
            return []
        out = []
        for tok, st in zip(run.view, run.states()):
            out.append((MASK_GLYPH[st] if st in MASK_GLYPH else self.text_of(tok), st))
        return out

    def lines(self, width: int) -> list[list[tuple[str, str]]]:
        run = self.run
        key = (run.cursor, run.received, run.start is not None, run.end is not None, width)
        if key == self._layout_key:
            return self._layout
        lines: list[list[tuple[str, str]]] = [[]]
        used = 0
        for text, st in self.cells():
            w = cell_len(text)
            if used + w > width and lines[-1]:
                lines.append([])
                used = 0
            lines[-1].append((text, st))
            used += w
        self._layout_key, self._layout = key, lines
        return lines

    def get_content_height(self, container, viewport, width: int) -> int:
        return max(1, len(self.lines(max(1, width))))

    def update_view(self) -> None:
        """Redraw after the run's cursor moved (a relayout only when the line count changed)."""
        before = len(self._layout)
        after = len(self.lines(max(1, self.size.width)))
        self.refresh(layout=after != before)

    def render_line(self, y: int) -> Strip:
        width = self.size.width
        base = self.rich_style
        lines = self.lines(max(1, width))
        if y >= len(lines):
            return Strip.blank(width, base)
        segs = [Segment(text, base + self.get_component_rich_style(f"cell--{st}")) for text, st in lines[y]]
        return Strip(segs).adjust_cell_length(width, base)


LEGEND = [("prompt", "prompt"), ("decoded", "decoded · cached"), ("recomputed", "decoded · recomputed"),
          ("committed", "committed now"), ("active", "░ active"), ("buffer", "░ buffer"),
          ("far_field", "· far field"), ("masked", "░ masked")]


class Legend(Widget):
    """What each cell style means (same component classes as the canvas), wrapped by whole items."""

    COMPONENT_CLASSES = {f"cell--{s}" for s in STATES}
    DEFAULT_CSS = "Legend { height: auto; }"

    def _lines(self, width: int) -> list[list[tuple[str, str]]]:
        lines: list[list[tuple[str, str]]] = [[]]
        used = 0
        for state, label in LEGEND:
            w = cell_len(label) + 2
            if lines[-1] and used + 1 + w > width:
                lines.append([])
                used = 0
            used += w + (1 if lines[-1] else 0)
            lines[-1].append((state, label))
        return lines

    def get_content_height(self, container, viewport, width: int) -> int:
        return len(self._lines(max(1, width)))

    def render(self) -> Text:
        t = Text(no_wrap=True, overflow="crop")
        for n, line in enumerate(self._lines(max(1, self.size.width))):
            if n:
                t.append("\n")
            for i, (state, label) in enumerate(line):
                if i:
                    t.append(" ")
                t.append(f" {label} ", self.get_component_rich_style(f"cell--{state}"))
        return t
