"""``wdiff bench``: spec/sweep/shard parsing, aggregate arithmetic, merge, report schema, gloo shards."""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from wdiff_cli import bench as B
from wdiff_cli.cli import app

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(__file__).resolve().parents[2] / "shared"
TEMPLATE = SHARED / "parity" / "checkpoints" / "llada-pub"
needs_shared = pytest.mark.skipif(not TEMPLATE.exists(),
                                  reason=f"parity checkpoints not found at {TEMPLATE.parent} (../shared beside the repo): "
                                         "the random bench checkpoint copies their tokenizer")


def _script():
    spec = importlib.util.spec_from_file_location("make_random_checkpoint", REPO / "scripts" / "make_random_checkpoint.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    if not TEMPLATE.exists():
        pytest.skip(f"parity checkpoints not found at {TEMPLATE.parent}")
    return _script().write_checkpoint(tmp_path_factory.mktemp("bench") / "llada-tiny", "llada", d_model=32,
                                      layers=2, heads=2, mlp=64, seed=1)


@pytest.fixture(scope="module")
def loaded(ckpt):
    from wdiff_cli.loading import load

    return load(str(ckpt), device="cpu", dtype="float32")


# ---------------------------------------------------------------- parsing


def test_parse_spec_and_labels():
    s = B.parse_spec("dual-cache:threshold=0.9:block-length=16")
    assert s.strategy == "dual-cache"
    assert s.overrides == (("threshold", 0.9), ("block_length", 16))
    assert s.label == "dual-cache:threshold=0.9:block-length=16"
    assert B.parse_spec("window:slide=off:preset=dream-paper").overrides == (("slide", False), ("preset", "dream-paper"))
    specs = B.parse_specs(["vanilla,window", "window, dual-cache:threshold=0.9"])
    assert [x.label for x in specs] == ["vanilla", "window", "dual-cache:threshold=0.9"]
    assert B.parse_spec("window:threshold=0.9").settings(gen_length=64).threshold == 0.9


@pytest.mark.parametrize("text,msg", [
    ("warp", "unknown strategy"), ("window:threshold", "not KEY=VALUE"), ("window:bogus=1", "unknown setting"),
    ("window:refresh=abc", "expected int"), ("window:gen-length=8", "common to all strategies"),
])
def test_parse_spec_errors(text, msg):
    with pytest.raises(B.BenchError, match=msg):
        B.parse_spec(text)


def test_sweep_parsing_and_grid():
    axes = B.parse_sweep(["window=8,16,32", "refresh=8,32"])
    assert axes == {"window": [8, 16, 32], "refresh": [8, 32]}
    assert B.parse_sweep(["window=8,16 refresh=4"]) == {"window": [8, 16], "refresh": [4]}
    grid = B.sweep_specs(axes, B.parse_spec("window:threshold=0.9:refresh=2"))
    assert len(grid) == 6 and all(s.sweep for s in grid)
    assert grid[0].label == "window:threshold=0.9:window=8:refresh=8"
    assert B.is_sweep_axis("refresh=8,32") and not B.is_sweep_axis("ROMEO:") and not B.is_sweep_axis("a=1")
    for bad in (["window"], ["window=8", "window=16"], ["gen-length=8,16"]):
        with pytest.raises(B.BenchError):
            B.parse_sweep(bad)


def test_shard_split():
    assert B.parse_shard("1/3") == (1, 3)
    for bad in ("3/3", "x", "1/0"):
        with pytest.raises(B.BenchError, match="i/n"):
            B.parse_shard(bad)
    parts = [B.shard_indices(10, (i, 3)) for i in range(3)]
    assert parts == [[0, 3, 6, 9], [1, 4, 7], [2, 5, 8]]
    assert sorted(sum(parts, [])) == list(range(10))
    assert B.shard_indices(4, None) == [0, 1, 2, 3]


def test_read_prompts(tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_text('{"prompt": "2+2?", "answer": 4}\n\n{"prompt": "hi"}\n')
    ps = B.read_prompts(f)
    assert [(p.index, p.text, p.answer) for p in ps] == [(0, "2+2?", 4), (1, "hi", None)]
    t = tmp_path / "p.txt"
    t.write_text("ROMEO:\nA\\nB\n")
    assert [p.text for p in B.read_prompts(t)] == ["ROMEO:", "A\nB"]
    assert len(B.read_prompts(REPO / "sample_prompts" / "shakespeare.txt")) >= 8
    inst = B.read_prompts(REPO / "sample_prompts" / "instruct.jsonl")
    assert len(inst) >= 6 and sum(p.answer is not None for p in inst) >= 4
    (tmp_path / "bad.jsonl").write_text("nope\n")
    with pytest.raises(B.BenchError, match="bad.jsonl:1"):
        B.read_prompts(tmp_path / "bad.jsonl")


def test_answer_scoring():
    assert B.extract_number("so 3 + 4 = 7. The answer is 1,234.") == 1234
    assert B.extract_number("no digits") is None
    assert B.is_correct("He has 15 apples left: 15", 15) is True
    assert B.is_correct("answer: -2.50", "-2.5") is True
    assert B.is_correct("15 then 16", 15) is False
    assert B.is_correct("  Paris. ", "paris") is True
    assert B.is_correct("x", None) is None


# ---------------------------------------------------------------- arithmetic on synthetic records


def _rec(spec, prompts, seconds, flops, tokens, text, correct=None, nll=None, bound=None):
    r = dict(spec=spec, prompts=prompts, seconds=seconds, peak_mem_mb=None, steps=4, forward_passes=4,
             tokens_computed=10, flops=flops, vanilla_flops_estimate=flops, stop_reason="complete",
             outputs=[dict(prompt=p, token_ids=tokens, text=text, text_tokens=len(tokens), correct=correct, nll=nll)
                      for p in prompts])
    if bound is not None:
        r["roofline"] = dict(bound_seconds=bound, memory_bound_steps=1, steps=4)
    return r


def _report(records, labels=("vanilla", "window"), sweep=False):
    return dict(format=B.FORMAT, baseline="vanilla", settings=dict(gen_length=4, steps=None, frontier="wall", shard=None,
                                                                    world_size=1),
                model=dict(name="m", params=1, family="llada"), machine={}, roofline=None, skipped=[],
                specs=[dict(label=x, strategy=x.split(":")[0], overrides={}, sweep=sweep and x != "vanilla",
                            settings={}) for x in labels],
                prompts=[dict(index=i, prompt=f"p{i}", answer=None, id=None, tokens=3) for i in range(4)],
                records=records, shards=[dict(shard=None, prompts=[])])


def synthetic():
    return [
        _rec("vanilla", [0], [2.0, 4.0, 3.0], 100, [1, 2, 3, 4], "abcd", True, 2.0, bound=1.0),
        _rec("vanilla", [1], [1.0], 100, [5, 6, 7, 8], "efgh", False, 4.0, bound=1.0),
        _rec("window", [0], [1.0, 1.5, 0.5], 25, [1, 2, 0, 4], "ab?d", True, 3.0, bound=0.25),
        _rec("window", [1], [0.5], 25, [5, 6, 7, 8], "efgh", True, 5.0, bound=0.5),
    ]


def test_summary_arithmetic():
    rows = {r["label"]: r for r in B.summarize(_report(synthetic()))}
    v, w = rows["vanilla"], rows["window"]
    assert v["seconds_median"] == pytest.approx(3.0 + 1.0)
    assert (v["seconds_min"], v["seconds_max"]) == (pytest.approx(3.0), pytest.approx(5.0))
    assert w["seconds_median"] == pytest.approx(1.0 + 0.5)
    assert w["speedup"] == pytest.approx(4.0 / 1.5)
    assert w["flop_ratio"] == pytest.approx(0.25) and w["flop_speedup"] == pytest.approx(4.0)
    assert w["token_agreement"] == pytest.approx(7 / 8)
    assert w["text_agreement"] == pytest.approx(0.5)
    assert v["token_agreement"] == 1.0 and v["speedup"] == 1.0
    assert v["accuracy"] == 0.5 and w["accuracy"] == 1.0 and w["answered"] == 2
    assert w["nll"] == pytest.approx(4.0)
    assert w["tokens_per_s"] == pytest.approx(2 * 4 / 1.5)
    assert w["roofline_speedup"] == pytest.approx(2.0 / 0.75)
    assert w["roofline_efficiency"] == pytest.approx((4.0 / 1.5) / (2.0 / 0.75))
    assert w["forward_passes_per_run"] == 4


def test_pareto_marks_frontier():
    rows = [dict(speedup=1.0, token_agreement=1.0), dict(speedup=2.0, token_agreement=0.9),
            dict(speedup=1.5, token_agreement=0.8), dict(speedup=3.0, token_agreement=0.5),
            dict(speedup=2.0, token_agreement=0.9), dict(speedup=None, token_agreement=1.0)]
    B.mark_pareto(rows, "speedup", "token_agreement")
    assert [r["pareto"] for r in rows] == [True, True, False, True, True, False]


def test_merge_recomputes_from_records():
    recs = synthetic()
    whole = B.summarize(_report(recs))
    a = _report([r for r in recs if r["prompts"] == [0]])
    b = _report([r for r in recs if r["prompts"] == [1]])
    a["settings"]["shard"], b["settings"]["shard"] = "0/2", "1/2"
    merged = B.merge_reports([a, b])
    assert merged["settings"]["shard"] is None
    assert len(merged["records"]) == 4 and len(merged["shards"]) == 2
    assert merged["summary"] == whole
    with pytest.raises(B.BenchError, match="overlapping"):
        B.merge_reports([a, copy.deepcopy(a)])
    c = copy.deepcopy(b)
    c["settings"]["gen_length"] = 8
    with pytest.raises(B.BenchError, match="gen_length"):
        B.merge_reports([a, c])
    with pytest.raises(B.BenchError, match="not a wdiff-bench/1"):
        B.merge_reports([a, {"format": "x"}])


# ---------------------------------------------------------------- on a tiny checkpoint


def test_random_checkpoint_script(ckpt):
    from safetensors import safe_open

    cfg = json.loads((ckpt / "config.json").read_text())
    assert cfg["model_type"] == "llada" and cfg["d_model"] == 32 and cfg["n_layers"] == 2
    assert (ckpt / "tokenizer.json").exists()
    with safe_open(str(ckpt / "model.safetensors"), "pt") as f:
        head = f.get_tensor("model.transformer.ff_out.weight")
    assert float(head[cfg["mask_token_id"]].abs().sum()) == 0.0


def test_run_bench_report(loaded):
    prompts = [B.Prompt(0, "ROMEO:"), B.Prompt(1, "Lily has 3 apples.", answer=3), B.Prompt(2, "JULIET:")]
    specs = B.parse_specs(["vanilla,window,dual-cache:threshold=0.9"])
    cfg = B.BenchConfig(gen_length=16, repeats=2, warmup=1, nll_masks=2, roofline=True, roofline_matmul_n=64,
                        roofline_copy_mb=1, prompt_tokens=6)
    rep = B.run_bench(loaded, prompts, specs, cfg)
    assert rep["format"] == "wdiff-bench/1"
    assert set(rep) >= {"created", "machine", "model", "settings", "baseline", "specs", "prompts", "roofline",
                        "records", "summary", "skipped", "shards"}
    assert {"platform", "cpu_count", "torch", "device", "dtype"} <= set(rep["machine"])
    assert rep["specs"][2]["settings"]["threshold"] == 0.9 and rep["specs"][2]["settings"]["block_length"] == 16
    assert len(rep["records"]) == 9 and all(len(r["seconds"]) == 2 for r in rep["records"])
    assert all(p["tokens"] == 6 for p in rep["prompts"])
    rows = {r["label"]: r for r in rep["summary"]}
    v = rows["vanilla"]
    assert v["speedup"] == 1.0 and v["token_agreement"] == 1.0 and v["roofline_speedup"] == 1.0
    assert v["forward_passes_per_run"] == 16 and v["answered"] == 1
    w = rows["window"]
    assert 0 < w["flop_ratio"] < 1 and w["tokens_computed"] < v["tokens_computed"]
    assert all(r["nll"] is not None and r["nll"] > 0 for r in rows.values())
    for r in rows.values():
        assert r["roofline_speedup"] > 0 and r["roofline_efficiency"] > 0
        for k in ("seconds_median", "tokens_per_s", "speedup", "token_agreement", "text_agreement", "flop_ratio"):
            assert r[k] is not None
    json.dumps(rep)  # serialisable
    # NLL is deterministic and independent of the strategy's own run
    out = rep["records"][0]["outputs"][0]
    enc = B.fit_length(__import__("wdiff_cli.engine", fromlist=["encode"]).encode(loaded, "ROMEO:"), 6)
    assert B.masked_nll(loaded.model, enc, out["token_ids"], loaded.eos_id, 2, 0.15, 0) == pytest.approx(out["nll"],
                                                                                                        abs=1e-5)


def test_cli_bench_json_csv_and_merge(ckpt, tmp_path):
    runner = CliRunner()
    common = ["bench", "-m", str(ckpt), "--gen-length", "16", "--repeats", "1", "--warmup", "0", "--nll-masks", "1",
              "-s", "vanilla,window:refresh=4", "--no-progress", "ROMEO:", "JULIET:", "HAMLET:"]
    shards = []
    for i in range(2):
        out = tmp_path / f"s{i}.json"
        res = runner.invoke(app, common + ["--shard", f"{i}/2", "--json", str(out)])
        assert res.exit_code == 0, res.output
        shards.append(out)
    s0 = json.loads(shards[0].read_text())
    assert sorted({p for r in s0["records"] for p in r["prompts"]}) == [0, 2]
    merged, csv = tmp_path / "all.json", tmp_path / "all.csv"
    res = runner.invoke(app, ["bench", "merge", str(shards[0]), str(shards[1]), "-o", str(merged), "--csv", str(csv)])
    assert res.exit_code == 0, res.output
    assert "window:refresh=4" in res.stdout and "speedup" in res.stdout
    m = json.loads(merged.read_text())
    assert m["settings"]["shard"] is None and len(m["records"]) == 6
    assert m["summary"][0]["prompts"] == 3
    lines = csv.read_text().splitlines()
    assert len(lines) == 3 and "setting_refresh" in lines[0] and "machine_torch" in lines[0]
    res = runner.invoke(app, ["bench", "merge", str(shards[0]), str(shards[0])])
    assert res.exit_code == 2 and "overlapping" in res.output


def test_cli_sweep_marks_pareto(ckpt, tmp_path):
    out = tmp_path / "sweep.json"
    res = CliRunner().invoke(app, ["bench", "-m", str(ckpt), "--gen-length", "16", "--repeats", "1", "--warmup", "0",
                                   "--nll-masks", "0", "--no-progress", "--json", str(out), "--frontier", "flops",
                                   "--sweep", "window=4,8", "refresh=2,64", "ROMEO:"])
    assert res.exit_code == 0, res.output
    rep = json.loads(out.read_text())
    labels = [s["label"] for s in rep["specs"]]
    assert labels[0] == "vanilla" and "window:window=8:refresh=2" in labels
    assert any("refresh" in s["label"] for s in rep["skipped"])  # refresh 64 > gen: window outgrows buffer
    assert any(r["pareto"] for r in rep["summary"]) and "pareto" in res.stdout
    assert rep["prompts"] == [dict(index=0, prompt="ROMEO:", answer=None, id=None, tokens=rep["prompts"][0]["tokens"])]


def test_cli_errors(ckpt, monkeypatch):
    runner = CliRunner()
    res = runner.invoke(app, ["bench", "-m", str(ckpt), "-s", "vanilla,warp", "x"])
    assert res.exit_code == 2 and "unknown strategy 'warp'" in res.output
    res = runner.invoke(app, ["bench", "--shard", "2/2", "-m", str(ckpt), "x"])
    assert res.exit_code == 2 and "--shard" in res.output
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    res = runner.invoke(app, ["bench", "-m", str(ckpt), "--plot", "p.png", "x"])
    assert res.exit_code == 2
    assert res.output.strip() == f"error: {B.PLOT_MISSING}"


def test_plot_written(tmp_path):
    pytest.importorskip("matplotlib", reason="matplotlib not installed: the plot path is covered by test_cli_errors")
    rep = _report(synthetic())
    rep["summary"] = B.summarize(rep)
    B.write_plot(rep, tmp_path / "p.png")
    assert (tmp_path / "p.png").stat().st_size > 1000


def test_torchrun_two_ranks_gloo(ckpt, tmp_path):
    """torchrun with 2 CPU ranks: each takes its shard, rank 0 gathers and writes the merged report."""
    out = tmp_path / "dist.json"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "wdiff_cli", "bench", "-m", str(ckpt), "--gen-length", "16", "--repeats", "1", "--warmup", "0",
           "--nll-masks", "1", "-s", "vanilla,window", "--no-progress", "--threads", "1", "--json", str(out),
           "ROMEO:", "JULIET:", "HAMLET:"]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert p.returncode == 0, f"torchrun exit {p.returncode}\nstdout:\n{p.stdout[-1500:]}\nstderr:\n{p.stderr[-4000:]}"
    rep = json.loads(out.read_text())
    assert rep["settings"]["world_size"] == 2 and rep["settings"]["shard"] is None
    assert sorted(s["shard"] for s in rep["shards"]) == ["0/2", "1/2"]
    assert sorted(s["prompts"] for s in rep["shards"]) == [[0, 2], [1]]
    assert len(rep["records"]) == 6 and rep["summary"][0]["prompts"] == 3
    assert p.stdout.count("speedup") == 1  # only rank 0 prints the table
