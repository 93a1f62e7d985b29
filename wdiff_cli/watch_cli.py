"""``wdiff watch``: registered on the main app; imports Textual only when the command runs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from . import options as o


def register(app) -> None:
    from .cli import UserError, read_prompts, user_errors

    @app.command()
    @user_errors
    @o.with_generation_options
    def watch(
        prompt: Annotated[Optional[str], typer.Argument(help="Prompt text (live mode).")] = None,
        trace: Annotated[Optional[Path], typer.Option("--trace", "-t", help="Replay a trace written by `wdiff generate --trace` (no model is loaded).")] = None,
        prompt_file: Annotated[Optional[Path], typer.Option(help="One prompt per line, or JSONL with a \"prompt\" field: runs them as one batch (see --row).")] = None,
        row: Annotated[int, typer.Option(help="Which batch row to show.")] = 0,
        speed: Annotated[int, typer.Option(help="Playback speed in steps per second (+/- change it).")] = 20,
        paused: Annotated[bool, typer.Option("--paused", help="Start paused (space plays).")] = False,
        model: o.Model = "tiny",
        chat: o.Chat = None,
        device: o.Device = "auto",
        dtype: o.Dtype = "auto",
        settings: dict = None,
    ):
        """Watch a run denoise step by step: a live generation, or a recorded trace with --trace.

        Keys: space play/pause, ←/→ one step, +/- speed, home/end, s save the trace, c compare with
        vanilla (live), q quit.
        """
        if row < 0:
            raise UserError(f"--row must be >= 0 (got {row})")
        if speed <= 0:
            raise UserError(f"--speed must be positive (got {speed})")
        if trace is not None:
            if prompt is not None or prompt_file is not None:
                raise UserError("give a prompt or --trace FILE, not both")
            from tui.sources import ReplaySource

            if not trace.is_file():
                raise UserError(f"--trace {trace}: no such file")
            try:
                source = ReplaySource(trace)
            except (OSError, ValueError) as e:
                raise UserError(str(e)) from None
            if row >= len(source.start.prompt_token_ids):
                raise UserError(f"--row {row}: the trace has {len(source.start.prompt_token_ids)} row(s)")
        else:
            if prompt is None and prompt_file is None:
                raise UserError("no prompt: pass text, '-' to read stdin, --prompt-file FILE, or --trace FILE to replay")
            if prompt == "-" and prompt_file is None:
                raise UserError("watch needs the terminal: pass the prompt as text or --prompt-file, not '-'")
            prompts = read_prompts(prompt, prompt_file)
            if row >= len(prompts):
                raise UserError(f"--row {row}: there are {len(prompts)} prompt(s)")
            from tui.sources import LiveSource, SharedModel

            source = LiveSource(SharedModel(model, device=device, dtype=dtype), prompts, settings, chat=chat)
        from tui import run_watch

        run_watch(source, row=row, speed=speed, play=not paused)
