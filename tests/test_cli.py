"""CLI behaviour: stdout/stderr split, JSON fields, the trace file, and one-line errors (exit 2)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from wdiff_cli.cli import app
from wdiff_cli.trace import RunEnd, RunStart, StepEvent, read_trace

from .conftest import NEEDS_SHARED, parity_ckpt, write_random_checkpoint

pytestmark = NEEDS_SHARED
runner = CliRunner()


def wdiff(*args, input=None):
    return runner.invoke(app, [str(a) for a in args], input=input)


def llada_args(*extra):
    return ["generate", "-m", parity_ckpt("llada-pub"), "--gen-length", "16", "--device", "cpu", *extra]


def assert_user_error(res, needle):
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    assert needle in lines[0]
    assert "Traceback" not in res.output and res.stdout == ""


def test_generate_json_fields():
    res = wdiff(*llada_args("A bird in the hand", "--format", "json"))
    assert res.exit_code == 0, res.output
    obj = json.loads(res.stdout)
    for key in ("text", "token_ids", "prompt_token_ids", "model", "strategy", "settings", "steps",
                "forward_passes", "seconds", "tokens_computed", "flops", "vanilla_flops_estimate"):
        assert key in obj
    assert len(obj["token_ids"]) == 16 and obj["prompt_token_ids"][0] == 506
    assert obj["strategy"] == "window" and obj["settings"]["preset"] == "llada-paper"
    assert obj["settings"]["window"] == 16 and obj["settings"]["steps"] == 16
    assert obj["flops"] <= obj["vanilla_flops_estimate"]


def test_generate_text_stdin_and_batch_file(tmp_path):
    res = wdiff(*llada_args("-"), input="A bird in the hand")
    assert res.exit_code == 0 and res.stdout.strip()
    f = tmp_path / "p.jsonl"
    f.write_text('{"prompt": "A bird"}\n{"prompt": "Why is the sky blue?"}\n')
    res = wdiff(*llada_args("--prompt-file", f, "--format", "jsonl"))
    rows = [json.loads(ln) for ln in res.stdout.splitlines()]
    assert len(rows) == 2 and rows[1]["prompt_token_ids"] != rows[0]["prompt_token_ids"]


def test_trace_file_round_trip(tmp_path):
    path = tmp_path / "run.jsonl"
    res = wdiff(*llada_args("A bird", "--trace", path, "--format", "json"))
    assert res.exit_code == 0, res.output
    events = list(read_trace(path))
    assert isinstance(events[0], RunStart) and isinstance(events[-1], RunEnd)
    steps = [e for e in events if isinstance(e, StepEvent)]
    assert len(path.read_text().splitlines()) == len(steps) + 2  # one line per step
    assert [e.step for e in steps] == list(range(16))
    assert events[-1].token_ids[0] == json.loads(res.stdout)["token_ids"]
    canvas = {}
    for e in steps:
        for pos, tok, conf in e.rows[0]["committed"]:
            canvas[pos] = tok
    lp = len(events[0].prompt_token_ids[0])
    assert [canvas[lp + i] for i in range(16)] == events[-1].token_ids[0]
    again = [e.to_dict() for e in read_trace(path)]
    assert again == [json.loads(ln) for ln in path.read_text().splitlines()]


@pytest.mark.parametrize("args,needle", [
    (["generate", "-m", "/nonexistent/ckpt", "hi"], "unknown model"),
    (["generate", "-m", "tests", "hi"], "no config.json"),
    (llada_args(""), "empty prompt"),
    (llada_args(), "no prompt"),
    (llada_args("hi", "--block-length", "5"), "--block-length 5 must divide --gen-length 16"),
    (llada_args("hi", "--strategy", "vanilla", "--block-length", "8", "--steps", "3"), "--steps 3 must be a multiple"),
    (llada_args("hi", "--steps", "0"), "--steps must be positive"),
    (llada_args("hi", "--window", "-1"), "--window must be positive"),
    (llada_args("hi", "--gen-length", "0"), "--gen-length must be positive"),
    (llada_args("hi", "--steps", "32"), "exceeds --gen-length"),
    (llada_args("hi", "--strategy", "nope"), "unknown strategy"),
    (llada_args("hi", "--format", "xml"), "--format"),
    (llada_args("hi", "--device", "tpu"), "unknown --device"),
    (llada_args("--prompt-file", "/nonexistent.txt"), "no such file"),
])
def test_bad_input_is_one_line_exit_2(args, needle):
    assert_user_error(wdiff(*args), needle)


def test_too_long_for_model_positions(tmp_path):
    ckpt = write_random_checkpoint(parity_ckpt("llada-pub"), tmp_path / "short", max_sequence_length=24)
    assert_user_error(wdiff("generate", "-m", ckpt, "A bird in the hand", "--gen-length", "32"), "exceeds the model's 24 positions")


def test_corrupt_and_mismatched_checkpoints(tmp_path):
    ckpt = write_random_checkpoint(parity_ckpt("llada-pub"), tmp_path / "c")
    (ckpt / "model.safetensors").write_bytes(b"not a safetensors file")
    assert_user_error(wdiff("generate", "-m", ckpt, "hi"), "cannot read safetensors")
    ckpt = write_random_checkpoint(parity_ckpt("llada-pub"), tmp_path / "d")
    (ckpt / "config.json").write_text("{not json")
    assert_user_error(wdiff("generate", "-m", ckpt, "hi"), "corrupt config.json")
    ckpt = write_random_checkpoint(parity_ckpt("llada-pub"), tmp_path / "e")
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg["model_type"], cfg["architectures"] = "gpt2", ["GPT2LMHeadModel"]
    (ckpt / "config.json").write_text(json.dumps(cfg))
    assert_user_error(wdiff("generate", "-m", ckpt, "hi"), "unknown architecture")


def test_unknown_alias_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    res = wdiff("generate", "-m", "dream", "hi")
    assert_user_error(res, "Dream-org/Dream-v0-Instruct-7B")
    assert "--model PATH" in res.stderr


def test_ctrl_c_stops_cleanly_and_writes_no_trace(tmp_path, monkeypatch):
    import wdiff_cli.engine as engine

    def boom(*a, **k):
        raise KeyboardInterrupt
        yield

    monkeypatch.setattr(engine, "stream", boom)
    path = tmp_path / "t.jsonl"
    res = wdiff(*llada_args("hi", "--trace", path))
    assert res.exit_code == 130 and "interrupted" in res.stderr
    assert not path.exists() and not list(tmp_path.iterdir())


def test_help_does_not_import_torch_or_textual():
    code = ("import sys; from wdiff_cli.cli import app; import wdiff_cli, wdiff_cli.engine;"
            "print('textual' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
