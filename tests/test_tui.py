"""``wdiff watch``: the Textual app on a recorded trace (Pilot), live mode on a tiny checkpoint, CLI wiring."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tui.app import SPEEDS, WatchApp
from tui.sources import LiveSource, ReplaySource, SharedModel
from tui.state import RunState
from tui.widgets import TokenCanvas, cell_text
from wdiff_cli.trace import RunEnd, StepEvent, read_trace

DATA = Path(__file__).parent / "data"
TRACE = DATA / "tiny_trace.jsonl"  # llada-pub, "A bird", gen 64, window 16 / buffer 24 / refresh 8
SHARED = Path(__file__).resolve().parents[2] / "shared"
LLADA_PUB = SHARED / "parity" / "checkpoints" / "llada-pub"
needs_shared = pytest.mark.skipif(not LLADA_PUB.exists(), reason=f"tiny checkpoint not found at {LLADA_PUB} (../shared beside the repo)")

SIZE = (80, 24)


def replay_app(**kw) -> WatchApp:
    kw.setdefault("play", False)
    return WatchApp(ReplaySource(TRACE), **kw)


async def wait_until(pilot, cond, timeout: float = 30.0) -> None:
    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > timeout:
            raise AssertionError("timed out waiting for the app")
        await pilot.pause(0.05)


# ---- replay: stepping and cell states


async def test_step_forward_and_back_cell_states():
    app = replay_app()
    async with app.run_test(size=SIZE) as pilot:
        assert app.cursor == 0
        assert app.cell_state(0) == ("prompt", "<|startoftext|>")
        assert app.cell_state(2) == ("prompt", " bird")
        assert app.cell_state(3) == ("masked", None)

        await pilot.press("right")  # after step 0: a refresh computes every position
        assert app.cursor == 1
        assert app.cell_state(39) == ("committed", "\ufffd")
        assert app.cell_state(3) == ("active", None)
        assert app.cell_state(60) == ("active", None)

        await pilot.press("right")  # after step 1: cached; 39 decoded at step 0 is recomputed once
        assert app.cell_state(16)[0] == "committed"
        assert app.cell_state(39)[0] == "recomputed"
        assert app.cell_state(18) == ("active", None)
        assert app.cell_state(19) == ("buffer", None)
        assert app.cell_state(43) == ("buffer", None)
        assert app.cell_state(44) == ("far_field", None)

        await pilot.press("right", "right")  # after step 3
        assert app.cursor == 4
        assert app.cell_state(13) == ("committed", "on")
        assert app.cell_state(15)[0] == "recomputed"
        assert app.cell_state(39)[0] == "decoded"  # cached: not computed this step
        assert app.cell_state(16)[0] == "recomputed"

        await pilot.press("left", "left")  # back to after step 1
        assert app.cursor == 2
        assert app.cell_state(13) == ("active", None)
        assert app.cell_state(15) == ("active", None)
        assert app.cell_state(16)[0] == "committed"

        await pilot.press("home")
        assert app.cursor == 0 and app.cell_state(39) == ("masked", None)
        await pilot.press("left")  # clamped
        assert app.cursor == 0

        await pilot.press("end")
        run = app.runs["main"]
        assert app.cursor == run.received == 64
        assert run.view[run.prompt_len:] == run.end.token_ids[0]
        states = run.states()
        assert "active" not in states and "masked" not in states


async def test_stats_panel_and_timeline_render():
    app = replay_app()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("right", "right")
        text = str(app.query_one("#step-stats").render())
        assert "2/64" in text and "cached" in text and "FLOPs" in text
        run_text = str(app.query_one("#run-stats").render())
        assert "committed 1" in run_text and "@16" in run_text
        assert app.query_one("#spark").data == [s.seconds for s in app.runs["main"].steps[:2]]
        await pilot.resize_terminal(120, 30)
        await pilot.pause()
        canvas = app.query_one(TokenCanvas)
        assert len(canvas.lines(canvas.size.width)) >= 1
        assert all(sum(len(t) for t, _ in line) <= canvas.size.width for line in canvas.lines(canvas.size.width))


# ---- play / pause / speed / save / quit


async def test_play_pause_and_speed():
    app = replay_app(speed=5)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("space")
        assert app.playing
        await wait_until(pilot, lambda: app.cursor >= 2, timeout=10)
        await pilot.press("space")
        assert not app.playing
        paused_at = app.cursor
        await pilot.pause(0.4)
        assert app.cursor == paused_at < 64
        await pilot.press("plus", "plus")
        assert SPEEDS[app.speed_i] == 20
        await pilot.press("minus")
        assert SPEEDS[app.speed_i] == 10
        # at 100 steps/s playing reaches the end well within the >= 50 steps/s budget, then stops
        app.speed_i = SPEEDS.index(100)
        t0 = time.monotonic()
        await pilot.press("space")
        await wait_until(pilot, lambda: app.cursor == 64, timeout=10)
        elapsed = time.monotonic() - t0
        assert elapsed < (64 - paused_at) / 50 + 1.5, elapsed
        await wait_until(pilot, lambda: not app.playing, timeout=5)
        app.speed_i = 0  # 1 step/s
        await pilot.press("space")  # at the end, play starts over
        assert app.playing and app.cursor < 10


async def test_save_writes_the_trace(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    app = replay_app()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("s")
        await pilot.pause()
    saved = list(tmp_path.glob("wdiff-trace-*.jsonl"))
    assert len(saved) == 1 and app.saved == [tmp_path / saved[0].name]
    original = [e.to_dict() for e in read_trace(TRACE)]
    assert [e.to_dict() for e in read_trace(saved[0])] == original


async def test_quit_and_compare_needs_live():
    app = replay_app()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("c")  # replay: a warning, no second pane
        assert "compare" not in app.runs
        await pilot.press("q")
        await pilot.pause()
    assert app.return_code == 0 or app.return_code is None
    assert not app.is_running


# ---- the state model


def test_run_state_seek_roundtrip_and_early_stop_fill():
    events = list(read_trace(TRACE))
    run = RunState()
    for ev in events:
        run.add(ev)
    start_view = list(run.view)
    run.seek(64)
    end_view = list(run.view)
    assert end_view[run.prompt_len:] == events[-1].token_ids[0]
    for k in (63, 10, 0, 64, 31):
        run.seek(k)
    run.seek(0)
    assert run.view == start_view
    run.seek(64)
    assert run.view == end_view

    # an early-stop fill (the row's `filled` record) shows, and reverts
    s = events[0]
    s.settings = dict(s.settings, early_stop=True)
    r2 = RunState()
    r2.add(s)
    eos = s.eos_id
    end = s_len = len(s.prompt_token_ids[0]) + s.gen_length
    step = StepEvent(step=0, phase=0, kind="refresh", seconds=0.0, forward_passes=1, tokens_computed=1, flops=1,
                     vanilla_flops=1, rows=[{"row": 0, "committed": [[10, eos, 0.9]], "masks_left": 0,
                                            "filled": [11, end, eos]}])
    r2.add(step)
    r2.seek(1)
    assert all(t == eos for t in r2.view[10:])
    r2.seek(0)
    assert all(t == s.mask_id for t in r2.view[r2.prompt_len:])


def test_cell_text_escapes():
    assert cell_text("a\nb") == "a⏎b"
    assert cell_text("\x08") == "␈"
    assert cell_text("") == "∅"
    assert cell_text("x" * 30) == "x" * 9 + "…"


def test_replay_source_rejects_bad_files(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"type": "step"}\n')
    with pytest.raises(ValueError):
        ReplaySource(bad)
    bad.write_text("not json\n")
    with pytest.raises(ValueError):
        ReplaySource(bad)


# ---- live mode


@needs_shared
async def test_live_mode_runs_steps_back_and_compare():
    src = LiveSource(SharedModel(str(LLADA_PUB), device="cpu"), ["A bird"], dict(strategy="window", gen_length=24))
    app = WatchApp(src, speed=500)
    async with app.run_test(size=SIZE) as pilot:
        run = app.runs["main"]
        await wait_until(pilot, lambda: run.done, timeout=40)
        assert run.error is None
        await wait_until(pilot, lambda: app.cursor == run.received)
        assert run.view[run.prompt_len:] == run.end.token_ids[0]
        await pilot.press("left")  # backward works in live mode too
        assert app.cursor == run.received - 1
        assert sum(st == "committed" for st in run.states()) == len(run.steps[-2].rows[0]["committed"])
        text = app.cell_state(run.prompt_len + 1)[1]
        assert text is None or isinstance(text, str)

        await pilot.press("c")  # vanilla on the same prompt, side by side
        cmp = app.runs["compare"]
        await wait_until(pilot, lambda: cmp.done, timeout=40)
        assert cmp.error is None and cmp.start.strategy == "vanilla"
        assert len(app.query(".pane")) == 2
        await pilot.press("end")
        assert cmp.view[cmp.prompt_len:] == cmp.end.token_ids[0]
        await pilot.press("c")
        assert not app.query_one("#pane-compare").display


async def test_model_error_is_shown_not_raised():
    src = LiveSource(SharedModel("no-such-model-dir", device="cpu"), ["A bird"], dict(gen_length=8))
    app = WatchApp(src)
    async with app.run_test(size=SIZE) as pilot:
        run = app.runs["main"]
        await wait_until(pilot, lambda: run.error is not None, timeout=20)
        assert "unknown model" in run.error
        assert "error: unknown model" in str(app.query_one(".pane-error").render())
        assert app.is_running
        await pilot.press("right", "space", "s")  # nothing to step or save; no crash
        assert app.cursor == 0


# ---- CLI wiring and import hygiene


def test_core_does_not_import_textual():
    code = ("import sys, wdiff_cli, wdiff_cli.cli, wdiff_cli.engine; "
            "assert 'textual' not in sys.modules, 'textual imported'; "
            "assert 'tui' not in sys.modules, 'tui imported'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_watch_cli_user_errors(tmp_path):
    from wdiff_cli.cli import app

    runner = CliRunner()
    res = runner.invoke(app, ["watch", "--trace", str(tmp_path / "missing.jsonl")])
    assert res.exit_code == 2 and "no such file" in res.stderr
    res = runner.invoke(app, ["watch"])
    assert res.exit_code == 2 and "no prompt" in res.stderr
    res = runner.invoke(app, ["watch", "--trace", str(TRACE), "--row", "3"])
    assert res.exit_code == 2 and "--row 3" in res.stderr
    res = runner.invoke(app, ["watch", "--help"])
    assert res.exit_code == 0 and "--trace" in res.stdout and "--gen-length" in res.stdout


@needs_shared
async def test_generate_trace_matches_app_at_every_step(tmp_path):
    from wdiff_cli.cli import app as cli

    path = tmp_path / "t.jsonl"
    res = CliRunner().invoke(cli, ["generate", "-m", str(LLADA_PUB), "A bird sings", "--gen-length", "24",
                                   "--device", "cpu", "--trace", str(path), "--no-progress"])
    assert res.exit_code == 0, res.output
    events = list(read_trace(path))
    steps = [e for e in events if isinstance(e, StepEvent)]
    vocab = {int(k): v for k, v in events[-1].vocab.items()}
    assert isinstance(events[-1], RunEnd) and steps
    app = WatchApp(ReplaySource(path), play=False)
    async with app.run_test(size=SIZE) as pilot:
        n = len(events[0].prompt_token_ids[0]) + events[0].gen_length
        for k, ev in enumerate(steps, 1):
            await pilot.press("right")
            assert app.cursor == k
            row = ev.rows[0]
            committed = {pos: tok for pos, tok, _ in row["committed"]}
            states = [app.cell_state(p) for p in range(n)]
            assert {p for p, (st, _) in enumerate(states) if st == "committed"} == set(committed)
            for pos, tok in committed.items():
                assert states[pos] == ("committed", vocab[tok])
            assert sum(t is None for _, t in states) == row["masks_left"]
