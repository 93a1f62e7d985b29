"""``wdiff watch``: a Textual app that animates each denoising step (live run or recorded trace).

``run_watch(source, row=0, speed=20)`` runs the app; sources are in ``tui.sources``.
"""

from __future__ import annotations


def run_watch(source, row: int = 0, speed: int = 20, play: bool = True, compare_strategy: str | None = None) -> None:
    """Run the app on ``source`` (a ``LiveSource`` or ``ReplaySource``) until the user quits."""
    from .app import WatchApp

    WatchApp(source, row=row, speed=speed, play=play, compare_strategy=compare_strategy).run()


__all__ = ["run_watch"]
