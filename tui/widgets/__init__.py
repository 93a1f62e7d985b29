"""Widgets of ``wdiff watch``: the token canvas and legend, the stats panel, the timeline."""

from .stats_panel import StatsPanel
from .timeline import Timeline
from .token_canvas import Legend, TokenCanvas, cell_text

__all__ = ["TokenCanvas", "Legend", "StatsPanel", "Timeline", "cell_text"]
