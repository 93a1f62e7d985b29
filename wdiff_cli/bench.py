"""``wdiff bench``: time strategies against vanilla on the same model, prompts, gen length and steps.

Each (prompt, strategy) runs ``warmup`` untimed and ``repeats`` timed generations at trace level
``counts`` (no per-position bookkeeping), with the device synchronised before every clock read.
Timed runs are interleaved across strategies (prompt -> repeat -> strategy) so machine drift hits
every strategy alike. Per-prompt records are kept in the report; every aggregate is recomputed
from them, which is what makes ``merge`` of shard reports exact.

Report format ``wdiff-bench/1`` (JSON; ``docs/bench.md`` documents every field)::

    {"format": "wdiff-bench/1", "created", "machine", "model", "settings", "specs", "baseline",
     "prompts", "roofline", "records", "summary", "skipped", "shards"}

Strategy specs: ``NAME[:KEY=VALUE]...`` with KEY an ``engine.Settings`` field (``-`` or ``_``),
e.g. ``window:threshold=0.9:refresh=16`` or ``dual-cache:threshold=0.9``.
"""

from __future__ import annotations

import json
import math
import os
import platform
import re
import statistics
import string
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Callable, Iterable

FORMAT = "wdiff-bench/1"
DEFAULT_PROMPTS = Path(__file__).resolve().parents[1] / "sample_prompts" / "shakespeare.txt"
DEFAULT_STRATEGIES = ("vanilla", "window", "dual-cache")
NOT_OVERRIDABLE = ("strategy", "gen_length")


class BenchError(ValueError):
    """Bad bench input; the message is one actionable line."""


# ---------------------------------------------------------------- specs, sweeps, prompts, shards


@dataclass(frozen=True)
class Spec:
    """One strategy with its setting overrides; ``label`` is its canonical text."""

    strategy: str
    overrides: tuple = ()  # ((Settings field, value), ...) in the order given
    sweep: bool = False

    @property
    def label(self) -> str:
        return ":".join([self.strategy] + [f"{k.replace('_', '-')}={_fmt(v)}" for k, v in self.overrides])

    def settings(self, **common):
        from .engine import Settings

        return Settings(strategy=self.strategy, **{**common, **dict(self.overrides)})


def _fmt(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return "none" if v is None else str(v)


def _settings_types() -> dict[str, str]:
    from .engine import Settings  # annotations are strings: "int | None", "float", ...

    return {f.name: str(f.type) for f in fields(Settings)}


def parse_value(key: str, text: str):
    """``text`` -> the type of Settings field ``key``; raises BenchError."""
    types = _settings_types()
    name = key.replace("-", "_")
    if name not in types:
        raise BenchError(f"unknown setting {key!r} (use one of: {', '.join(k.replace('_', '-') for k in types)})")
    typ = types[name]
    t = text.strip()
    if t.lower() == "none" and "None" in typ:
        return None
    try:
        if "bool" in typ:
            low = t.lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError(t)
        if "int" in typ:
            return int(t)
        if "float" in typ:
            return float(t)
    except ValueError:
        raise BenchError(f"setting {key}={text!r}: expected {typ.replace(' | None', '')}") from None
    return t


def parse_spec(text: str, sweep: bool = False) -> Spec:
    """``window:threshold=0.9:refresh=16`` -> Spec; raises BenchError."""
    from .strategies import STRATEGIES

    parts = [p.strip() for p in text.strip().split(":")]
    name = parts[0]
    if name not in STRATEGIES:
        raise BenchError(f"unknown strategy {name!r} in {text!r} (use {', '.join(STRATEGIES)})")
    over = []
    for p in parts[1:]:
        if "=" not in p:
            raise BenchError(f"strategy spec {text!r}: {p!r} is not KEY=VALUE (syntax NAME[:KEY=VALUE]...)")
        k, v = p.split("=", 1)
        k = k.strip().replace("-", "_")
        if k in NOT_OVERRIDABLE:
            raise BenchError(f"strategy spec {text!r}: {k.replace('_', '-')} is common to all strategies "
                             f"(use the bench option)")
        over.append((k, parse_value(k, v)))
    return Spec(name, tuple(over), sweep)


def parse_specs(texts: Iterable[str]) -> list[Spec]:
    """Comma-separated spec lists (the option may also repeat) -> unique specs in order."""
    out, seen = [], set()
    for t in texts:
        for part in t.split(","):
            if part.strip():
                s = parse_spec(part)
                if s.label not in seen:
                    seen.add(s.label)
                    out.append(s)
    if not out:
        raise BenchError("--strategies is empty")
    return out


SWEEP_AXIS = re.compile(r"^[A-Za-z][A-Za-z_-]*=[^\s=]+$")


def parse_sweep(texts: Iterable[str]) -> dict[str, list]:
    """``["window=8,16,32", "refresh=8,32"]`` (or one string, space/semicolon separated) -> axes."""
    axes: dict[str, list] = {}
    for t in texts:
        for item in re.split(r"[\s;]+", t.strip()):
            if not item:
                continue
            if not SWEEP_AXIS.match(item):
                raise BenchError(f"--sweep {item!r}: expected KEY=V1,V2,... (e.g. window=8,16,32)")
            k, vals = item.split("=", 1)
            k = k.replace("-", "_")
            if k in NOT_OVERRIDABLE:
                raise BenchError(f"--sweep {k.replace('_', '-')}: common to all strategies, cannot be swept")
            if k in axes:
                raise BenchError(f"--sweep {k.replace('_', '-')} given twice")
            axes[k] = [parse_value(k, v) for v in vals.split(",") if v != ""]
            if not axes[k]:
                raise BenchError(f"--sweep {item!r}: no values")
    return axes


def is_sweep_axis(text: str) -> bool:
    """Does a positional argument look like a sweep axis (``refresh=8,32``) rather than a prompt?"""
    if not SWEEP_AXIS.match(text):
        return False
    return text.split("=", 1)[0].replace("-", "_") in _settings_types()


def sweep_specs(axes: dict[str, list], base: Spec) -> list[Spec]:
    """The grid over ``axes`` on top of ``base`` (axis values replace base overrides of that key)."""
    import itertools

    keys = list(axes)
    out = []
    for combo in itertools.product(*(axes[k] for k in keys)):
        over = [(k, v) for k, v in base.overrides if k not in keys] + list(zip(keys, combo))
        out.append(Spec(base.strategy, tuple(over), sweep=True))
    return out


@dataclass
class Prompt:
    index: int
    text: str
    answer: object = None
    id: str | None = None


def read_prompts(path: Path) -> list[Prompt]:
    """JSONL rows ``{"prompt", "answer"?, "id"?}`` or text with one prompt per line (``\\n`` escapes)."""
    path = Path(path)
    if not path.exists():
        raise BenchError(f"--prompts {path}: no such file")
    out: list[Prompt] = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        if path.suffix == ".jsonl":
            try:
                row = json.loads(line)
                text = row["prompt"] if isinstance(row, dict) else str(row)
            except (json.JSONDecodeError, KeyError, TypeError):
                raise BenchError(f"{path}:{n}: expected a JSON object with a \"prompt\" field") from None
            ans = row.get("answer") if isinstance(row, dict) else None
            out.append(Prompt(len(out), text, ans, row.get("id") if isinstance(row, dict) else None))
        else:
            out.append(Prompt(len(out), line.replace("\\n", "\n")))
    if not out:
        raise BenchError(f"--prompts {path}: no prompts in it")
    return out


def parse_shard(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not m or int(m.group(2)) < 1 or int(m.group(1)) >= int(m.group(2)):
        raise BenchError(f"--shard {text!r}: expected i/n with 0 <= i < n (e.g. 0/4)")
    return int(m.group(1)), int(m.group(2))


def shard_indices(n_prompts: int, shard: tuple[int, int] | None) -> list[int]:
    """Prompt indices of shard i/n: every n-th prompt starting at i."""
    if shard is None:
        return list(range(n_prompts))
    i, n = shard
    return [p for p in range(n_prompts) if p % n == i]


# ---------------------------------------------------------------- scoring


NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def extract_number(text: str) -> float | None:
    """The last number in ``text`` (commas as thousands separators), or None."""
    found = NUMBER.findall(text)
    if not found:
        return None
    try:
        return float(found[-1].replace(",", ""))
    except ValueError:
        return None


def normalise(text: str) -> str:
    text = text.lower().translate(str.maketrans("", "", string.punctuation))
    return " ".join(text.split())


def is_correct(text: str, answer) -> bool | None:
    """Numeric answers: last number in the text equals it; else normalised exact match."""
    if answer is None:
        return None
    a = str(answer).strip()
    try:
        want = float(a.replace(",", ""))
    except ValueError:
        return normalise(text) == normalise(a)
    got = extract_number(text)
    return got is not None and math.isclose(got, want, rel_tol=1e-9, abs_tol=1e-9)


def masked_nll(model, prompt_ids: list[int], gen_ids: list[int], eos_id, n_masks: int, ratio: float,
               seed: int) -> float | None:
    """The model's masked-token NLL (nats/token) of its own generated text.

    Scored span: the generated tokens up to and including the first end-of-text. ``n_masks``
    random masks each hide ``ratio`` of that span (at least one token); the prompt stays visible.
    One full bidirectional forward per mask (batched); cross-entropy at the hidden positions,
    averaged over every hidden token. Masks are seeded by ``seed`` (the prompt index), so every
    strategy of a prompt is scored with the same masks when their spans have the same length.
    """
    import torch
    import torch.nn.functional as F

    if n_masks <= 0:
        return None
    n = len(gen_ids)
    if eos_id is not None and eos_id in gen_ids:
        n = gen_ids.index(eos_id) + 1
    if n == 0:
        return None
    a = model.args
    shift = int(a.shift_logits)
    P = len(prompt_ids)
    k = max(1, round(ratio * n))
    g = torch.Generator().manual_seed(seed)
    row = torch.tensor(prompt_ids + gen_ids[:n], dtype=torch.long)
    hide = torch.stack([torch.randperm(n, generator=g)[:k] for _ in range(n_masks)]) + P  # (K, k)
    ids = row.repeat(n_masks, 1)
    ids.scatter_(1, hide, a.mask_id)
    ids = ids.to(model.device)
    pos = torch.arange(ids.shape[1], device=model.device)[None].expand(n_masks, -1)
    with torch.inference_mode():
        logits = model(ids, pos, None, (hide - shift).to(model.device))  # (K, k, V)
    target = row[hide].to(model.device)
    return float(F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), target.reshape(-1)))


# ---------------------------------------------------------------- machine, roofline


ENV_KEYS = ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "MKL_NUM_THREADS", "CUDA_VISIBLE_DEVICES", "WORLD_SIZE")


def machine_info(device=None, dtype=None) -> dict:
    import torch

    info = dict(platform=platform.platform(), machine=platform.machine(), processor=platform.processor(),
                python=platform.python_version(), cpu_count=os.cpu_count(), torch=torch.__version__,
                torch_threads=torch.get_num_threads(), device=str(device) if device is not None else None,
                dtype=str(dtype).replace("torch.", "") if dtype is not None else None, hostname=platform.node())
    info["env"] = {k: os.environ[k] for k in ENV_KEYS if k in os.environ}
    if hasattr(os, "getloadavg"):
        info["load_average"] = round(os.getloadavg()[0], 2)  # other work on the machine at the start
    if device is not None and getattr(device, "type", str(device)) == "cuda":
        info["cuda_device"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    return info


def sync(device) -> None:
    import torch

    if getattr(device, "type", None) == "cuda":
        torch.cuda.synchronize(device)


def measure_peaks(device, dtype, matmul_n: int | None = None, copy_mb: int | None = None,
                  repeats: int = 3) -> dict:
    """This machine's matmul rate (n x n @ n x n in ``dtype``) and copy bandwidth; best of repeats."""
    import torch

    cuda = getattr(device, "type", None) == "cuda"
    n = matmul_n or (8192 if cuda else 2048)
    mb = copy_mb or (2048 if cuda else 256)
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    torch.matmul(a, b)
    best = float("inf")
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        torch.matmul(a, b)
        sync(device)
        best = min(best, time.perf_counter() - t0)
    flops = 2 * n**3 / best
    del a, b
    src = torch.empty(mb * 2**20 // 4, dtype=torch.float32, device=device).fill_(1.0)
    dst = torch.empty_like(src)
    dst.copy_(src)
    best_c = float("inf")
    for _ in range(repeats + 2):
        sync(device)
        t0 = time.perf_counter()
        dst.copy_(src)
        sync(device)
        best_c = min(best_c, time.perf_counter() - t0)
    bw = 2 * src.numel() * 4 / best_c  # read + write
    return dict(peak_flops=flops, bandwidth_bytes=bw, matmul_n=n, matmul_dtype=str(dtype).replace("torch.", ""),
                copy_mb=mb)


def weight_bytes(model) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def roofline_of_run(model, events, peaks: dict) -> dict:
    """Sum over steps of max(FLOPs / peak, bytes / bandwidth) from level="full" step events.

    bytes per step = weight bytes x forward passes + keys attended (all rows) x layers x 2 x
    kv heads x head dim x element size.
    """
    from .trace import expand

    a = model.args
    elem = next(model.parameters()).element_size()
    wb = weight_bytes(model)
    kv_per_key = a.n_layers * 2 * a.n_kv_heads * a.head_dim * elem
    tot = dict(bound_seconds=0.0, compute_seconds=0.0, memory_seconds=0.0, weight_bytes=0, kv_bytes=0,
               keys_attended=0, flops=0, memory_bound_steps=0, steps=0)
    for ev in events:
        keys = 0
        for r in ev.rows:
            span = r.get("attended", r.get("computed"))
            if span:
                keys += len(expand(span))
        wbytes = wb * ev.forward_passes
        kbytes = keys * kv_per_key
        c = ev.flops / peaks["peak_flops"]
        m = (wbytes + kbytes) / peaks["bandwidth_bytes"]
        tot["bound_seconds"] += max(c, m)
        tot["compute_seconds"] += c
        tot["memory_seconds"] += m
        tot["weight_bytes"] += wbytes
        tot["kv_bytes"] += kbytes
        tot["keys_attended"] += keys
        tot["flops"] += ev.flops
        tot["memory_bound_steps"] += int(m > c)
        tot["steps"] += 1
    return tot


# ---------------------------------------------------------------- running


@dataclass
class BenchConfig:
    """Settings common to every strategy of a bench run."""

    gen_length: int = 128
    steps: int | None = None
    repeats: int = 3
    warmup: int = 1
    batch: int = 1
    early_stop: bool | None = None
    chat: bool | None = None
    prompt_tokens: int | None = None  # cut/cycle every prompt to exactly this many tokens
    nll_masks: int = 4
    nll_ratio: float = 0.15
    roofline: bool = False
    roofline_matmul_n: int | None = None
    roofline_copy_mb: int | None = None
    frontier: str = "wall"  # wall | flops: the speed axis of the Pareto frontier
    seed: int = 0
    shard: tuple[int, int] | None = None
    world_size: int = 1

    def common(self) -> dict:
        return dict(gen_length=self.gen_length, steps=self.steps, early_stop=self.early_stop, seed=self.seed)


class NullProgress:
    def start(self, total: int) -> None:
        pass

    def advance(self, desc: str) -> None:
        pass


def fit_length(ids: list[int], n: int | None) -> list[int]:
    """``--prompt-tokens``: repeat the ids cyclically and cut to exactly n (cost control)."""
    if n is None:
        return ids
    if n <= 0:
        raise BenchError(f"--prompt-tokens must be positive (got {n})")
    reps = -(-n // len(ids))
    return (ids * reps)[:n]


def resolve_specs(loaded, specs: list[Spec], cfg: BenchConfig) -> tuple[list[Spec], dict, list[dict]]:
    """-> (runnable specs, label -> filled Settings, skipped). Bad sweep points are skipped, bad
    explicit specs raise BenchError."""
    from .engine import GenerationError, resolve_settings

    ok, filled, skipped = [], {}, []
    for sp in specs:
        try:
            s, _ = resolve_settings(loaded, sp.settings(**cfg.common()))
        except (GenerationError, TypeError) as e:
            if sp.sweep:
                skipped.append(dict(label=sp.label, reason=str(e)))
                continue
            raise BenchError(f"{sp.label}: {e}") from None
        ok.append(sp)
        filled[sp.label] = s
    return ok, filled, skipped


def run_bench(loaded, prompts: list[Prompt], specs: list[Spec], cfg: BenchConfig, baseline: str = "vanilla",
              progress=None, log: Callable[[str], None] | None = None) -> dict:
    """Run the bench on this process's shard of ``prompts``; returns a ``wdiff-bench/1`` report."""
    import torch

    from .engine import decode, encode, stream
    from .trace import RunEnd, StepEvent

    progress = progress or NullProgress()
    log = log or (lambda msg: None)
    model = loaded.model
    dev = model.device
    machine = machine_info(dev, model.dtype)
    specs, filled, skipped = resolve_specs(loaded, specs, cfg)
    for s in skipped:
        log(f"skipped {s['label']}: {s['reason']}")
    if not any(s.label == baseline for s in specs):
        raise BenchError(f"baseline {baseline!r} is not among the strategies that can run")
    by_index = {p.index: p for p in prompts}
    if sorted(by_index) != list(range(len(prompts))):
        raise BenchError("prompt indices must be 0..n-1 (shards are taken by index)")
    idx = shard_indices(len(prompts), cfg.shard)
    encoded = {p.index: fit_length(encode(loaded, p.text, cfg.chat), cfg.prompt_tokens) for p in prompts
               if p.index in idx}
    units = [idx[i: i + cfg.batch] for i in range(0, len(idx), cfg.batch)]
    peaks = None
    if cfg.roofline:
        peaks = measure_peaks(dev, model.dtype, cfg.roofline_matmul_n, cfg.roofline_copy_mb)
        log(f"roofline: {peaks['peak_flops'] / 1e9:.1f} GFLOP/s ({peaks['matmul_dtype']} matmul "
            f"{peaks['matmul_n']}), {peaks['bandwidth_bytes'] / 1e9:.1f} GB/s copy")
    n_warm = cfg.warmup * len(specs) if units else 0
    per_unit = len(specs) * (cfg.repeats + (1 if cfg.roofline else 0))
    progress.start(n_warm + per_unit * len(units))

    def timed(ids, s):
        end = None
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        sync(dev)
        t0 = time.perf_counter()
        for ev in stream(loaded, ids, s, level="counts"):
            if isinstance(ev, RunEnd):
                end = ev
        sync(dev)
        dt = time.perf_counter() - t0
        mem = torch.cuda.max_memory_allocated(dev) / 2**20 if dev.type == "cuda" else None
        return dt, end, mem

    for sp in specs:  # warm-up: untimed runs of the first unit
        for _ in range(cfg.warmup if units else 0):
            timed([encoded[i] for i in units[0]], filled[sp.label])
            progress.advance(f"warmup {sp.label}")

    records = []
    for u in units:
        ids = [encoded[i] for i in u]
        recs = {sp.label: dict(spec=sp.label, prompts=list(u), seconds=[], peak_mem_mb=None) for sp in specs}
        if cfg.roofline:  # one untimed level="full" pass: keys attended per step
            for sp in specs:
                events = []
                for ev in stream(loaded, ids, filled[sp.label], level="full"):
                    if isinstance(ev, StepEvent):
                        events.append(ev)
                recs[sp.label]["roofline"] = roofline_of_run(model, events, peaks)
                progress.advance(f"roofline {sp.label} [{u[0]}]")
        for _ in range(cfg.repeats):
            for sp in specs:
                dt, end, mem = timed(ids, filled[sp.label])
                r = recs[sp.label]
                r["seconds"].append(round(dt, 6))
                if mem is not None:
                    r["peak_mem_mb"] = max(r["peak_mem_mb"] or 0.0, round(mem, 1))
                if "steps" not in r:
                    r.update(steps=end.steps, forward_passes=end.forward_passes, tokens_computed=end.tokens_computed,
                             flops=end.flops, vanilla_flops_estimate=end.vanilla_flops_estimate,
                             stop_reason=end.stop_reason, token_ids=end.token_ids)
                progress.advance(f"{sp.label} [{u[0]}]")
        for sp in specs:
            r = recs[sp.label]
            gen = r.pop("token_ids")
            outs = []
            for b, pi in enumerate(u):
                text = decode(loaded, gen[b])
                eos = loaded.eos_id
                n_text = gen[b].index(eos) if eos is not None and eos in gen[b] else len(gen[b])
                outs.append(dict(prompt=pi, token_ids=gen[b], text=text, text_tokens=n_text,
                                 correct=is_correct(text, by_index[pi].answer),
                                 nll=_round(masked_nll(model, encoded[pi], gen[b], eos, cfg.nll_masks,
                                                       cfg.nll_ratio, cfg.seed * 100003 + pi))))
            r["outputs"] = outs
            records.append(r)

    return build_report(
        model=model_info(loaded), machine=machine, cfg=cfg, specs=specs, filled=filled,
        baseline=baseline, prompts=prompts, prompt_tokens={i: len(v) for i, v in encoded.items()},
        records=records, peaks=peaks, skipped=skipped)


def _round(x, n=6):
    return None if x is None else round(x, n)


def model_info(loaded) -> dict:
    m = loaded.model
    a = m.args
    return dict(name=loaded.name, path=str(loaded.path), family=a.family, params=sum(p.numel() for p in m.parameters()),
                weight_bytes=weight_bytes(m), d_model=a.d_model, n_layers=a.n_layers, n_heads=a.n_heads,
                n_kv_heads=a.n_kv_heads, head_dim=a.head_dim, mlp_hidden=a.mlp_hidden, vocab_size=a.vocab_size,
                mask_id=a.mask_id, eos_id=a.eos_id)


def build_report(model, machine, cfg: BenchConfig, specs, filled, baseline, prompts, prompt_tokens, records, peaks,
                 skipped) -> dict:
    settings = asdict(cfg)
    settings["shard"] = f"{cfg.shard[0]}/{cfg.shard[1]}" if cfg.shard else None
    report = dict(
        format=FORMAT,
        created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        machine=machine,
        model=model,
        settings=settings,
        baseline=baseline,
        specs=[dict(label=s.label, strategy=s.strategy, overrides={k: v for k, v in s.overrides}, sweep=s.sweep,
                    settings=asdict(filled[s.label])) for s in specs],
        prompts=[dict(index=p.index, prompt=p.text, answer=p.answer, id=p.id, tokens=prompt_tokens.get(p.index))
                 for p in prompts],
        roofline=peaks,
        records=records,
        skipped=skipped,
        shards=[dict(shard=settings["shard"], machine=machine, roofline=peaks,
                     prompts=sorted({i for r in records for i in r["prompts"]}))],
    )
    report["summary"] = summarize(report)
    return report


# ---------------------------------------------------------------- aggregation


def _ratio(a, b):
    return a / b if a is not None and b not in (None, 0) else None


def summarize(report: dict) -> list[dict]:
    """One row per spec, recomputed from ``records``; ratios use the baseline over the same prompts."""
    recs: dict[str, dict[tuple, dict]] = {}
    for r in report["records"]:
        recs.setdefault(r["spec"], {})[tuple(r["prompts"])] = r
    base = recs.get(report["baseline"], {})
    base_out = {o["prompt"]: o for r in base.values() for o in r["outputs"]}
    gen_length = report["settings"]["gen_length"]
    rows = []
    for sp in report["specs"]:
        label = sp["label"]
        mine = recs.get(label, {})
        if not mine:
            continue
        units = list(mine.values())
        common = [k for k in mine if k in base]
        out = dict(label=label, strategy=sp["strategy"], baseline=label == report["baseline"], sweep=sp["sweep"])
        n_prompts = sum(len(r["prompts"]) for r in units)
        out["prompts"] = n_prompts
        out["runs"] = len(units)
        for key in ("steps", "forward_passes", "tokens_computed", "flops"):
            out[key] = sum(r[key] for r in units)
        out["forward_passes_per_run"] = out["forward_passes"] / len(units)
        out["seconds_median"] = sum(statistics.median(r["seconds"]) for r in units)
        out["seconds_min"] = sum(min(r["seconds"]) for r in units)
        out["seconds_max"] = sum(max(r["seconds"]) for r in units)
        out["repeats"] = min(len(r["seconds"]) for r in units)
        out["tokens_per_s"] = _ratio(gen_length * n_prompts, out["seconds_median"])
        mem = [r["peak_mem_mb"] for r in units if r.get("peak_mem_mb") is not None]
        out["peak_mem_mb"] = max(mem) if mem else None
        b_flops = sum(base[k]["flops"] for k in common)
        m_flops = sum(mine[k]["flops"] for k in common)
        out["flop_ratio"] = _ratio(m_flops, b_flops)
        out["flop_speedup"] = _ratio(b_flops, m_flops)
        b_sec = sum(statistics.median(base[k]["seconds"]) for k in common)
        m_sec = sum(statistics.median(mine[k]["seconds"]) for k in common)
        out["speedup"] = _ratio(b_sec, m_sec)
        same_tok = total_tok = same_text = n_cmp = 0
        for r in units:
            for o in r["outputs"]:
                ref = base_out.get(o["prompt"])
                if ref is None:
                    continue
                n_cmp += 1
                total_tok += len(ref["token_ids"])
                same_tok += sum(int(x == y) for x, y in zip(o["token_ids"], ref["token_ids"]))
                same_text += int(o["text"] == ref["text"])
        out["token_agreement"] = _ratio(same_tok, total_tok)
        out["text_agreement"] = _ratio(same_text, n_cmp)
        graded = [o["correct"] for r in units for o in r["outputs"] if o.get("correct") is not None]
        out["answered"] = len(graded)
        out["accuracy"] = _ratio(sum(graded), len(graded)) if graded else None
        nll = [o["nll"] for r in units for o in r["outputs"] if o.get("nll") is not None]
        out["nll"] = statistics.fmean(nll) if nll else None
        out["stop_reasons"] = sorted({r["stop_reason"] for r in units})
        if all("roofline" in r for r in units):
            out["roofline_seconds"] = sum(r["roofline"]["bound_seconds"] for r in units)
            b_rf = [base[k].get("roofline") for k in common]
            if all(b_rf) and common:
                b_bound = sum(x["bound_seconds"] for x in b_rf)
                m_bound = sum(mine[k]["roofline"]["bound_seconds"] for k in common)
                out["roofline_speedup"] = _ratio(b_bound, m_bound)
                out["roofline_efficiency"] = _ratio(out["speedup"], out["roofline_speedup"])
            out["memory_bound_steps"] = _ratio(sum(r["roofline"]["memory_bound_steps"] for r in units),
                                               sum(r["roofline"]["steps"] for r in units))
        rows.append(out)
    mark_pareto(rows, "flop_speedup" if report["settings"].get("frontier") == "flops" else "speedup",
                "token_agreement")
    return rows


def mark_pareto(rows: list[dict], speed: str, quality: str) -> None:
    """Set ``pareto``: no other row is at least as fast and as good, and strictly better in one."""
    for r in rows:
        s, q = r.get(speed), r.get(quality)
        if s is None or q is None:
            r["pareto"] = False
            continue
        r["pareto"] = not any(
            o is not r and o.get(speed) is not None and o.get(quality) is not None
            and o[speed] >= s and o[quality] >= q and (o[speed] > s or o[quality] > q)
            for o in rows)


# ---------------------------------------------------------------- merge


def merge_reports(reports: list[dict]) -> dict:
    """Combine shard reports of the same bench into one; aggregates are recomputed."""
    if not reports:
        raise BenchError("merge: no reports given")
    for i, r in enumerate(reports):
        if r.get("format") != FORMAT:
            raise BenchError(f"merge: input {i + 1} is not a {FORMAT} report (format={r.get('format')!r})")
    first = reports[0]
    labels = [s["label"] for s in first["specs"]]

    def key_settings(r):
        s = dict(r["settings"])
        for k in ("shard", "world_size"):
            s.pop(k, None)
        return s

    for i, r in enumerate(reports[1:], 2):
        if [s["label"] for s in r["specs"]] != labels:
            raise BenchError(f"merge: input {i} ran other strategies ({', '.join(s['label'] for s in r['specs'])})")
        if r["model"]["name"] != first["model"]["name"] or r["model"]["params"] != first["model"]["params"]:
            raise BenchError(f"merge: input {i} used another model ({r['model']['name']})")
        if key_settings(r) != key_settings(first):
            diff = sorted(k for k in key_settings(r) if key_settings(r).get(k) != key_settings(first).get(k))
            raise BenchError(f"merge: input {i} has other settings ({', '.join(diff)})")
        if r["baseline"] != first["baseline"]:
            raise BenchError(f"merge: input {i} has another baseline ({r['baseline']})")
    seen, records = {}, []
    for i, r in enumerate(reports, 1):
        for rec in r["records"]:
            for p in rec["prompts"]:
                k = (rec["spec"], p)
                if k in seen:
                    raise BenchError(f"merge: prompt {p} of {rec['spec']} is in inputs {seen[k]} and {i} "
                                     f"(overlapping shards)")
                seen[k] = i
            records.append(rec)
    records.sort(key=lambda rec: (labels.index(rec["spec"]), rec["prompts"]))
    prompts = {}
    for r in reports:
        for p in r["prompts"]:
            if p.get("tokens") is not None or p["index"] not in prompts:
                prompts[p["index"]] = p
    settings = dict(first["settings"], shard=None, world_size=max(r["settings"].get("world_size", 1) for r in reports))
    skipped = {s["label"]: s for r in reports for s in r.get("skipped", [])}
    out = dict(first, created=time.strftime("%Y-%m-%dT%H:%M:%S%z"), settings=settings,
               prompts=[prompts[k] for k in sorted(prompts)], records=records, skipped=list(skipped.values()),
               shards=[s for r in reports for s in r.get("shards", [])])
    out["summary"] = summarize(out)
    return out


# ---------------------------------------------------------------- output


def write_json(report: dict, path: Path) -> None:
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def read_json(path: Path) -> dict:
    path = Path(path)
    if not path.exists():
        raise BenchError(f"{path}: no such file")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise BenchError(f"{path}: not JSON ({e})") from None


CSV_METRICS = ("label", "strategy", "baseline", "pareto", "prompts", "runs", "repeats", "steps", "forward_passes",
               "forward_passes_per_run", "tokens_computed", "flops", "flop_ratio", "flop_speedup", "seconds_median",
               "seconds_min", "seconds_max", "tokens_per_s", "speedup", "token_agreement", "text_agreement",
               "answered", "accuracy", "nll", "peak_mem_mb", "roofline_seconds", "roofline_speedup",
               "roofline_efficiency", "memory_bound_steps")


def write_csv(report: dict, path: Path) -> None:
    """One row per strategy: metrics, then every resolved setting, bench setting, model and machine field."""
    import csv

    specs = {s["label"]: s for s in report["specs"]}
    setting_keys = sorted({k for s in report["specs"] for k in s["settings"]})
    bench_keys = [k for k in report["settings"] if k not in ("gen_length", "steps", "early_stop", "seed")]
    machine = report.get("machine", {})
    roof = report.get("roofline") or {}
    header = (list(CSV_METRICS) + [f"setting_{k}" for k in setting_keys] + [f"bench_{k}" for k in bench_keys]
              + ["model", "model_family", "model_params"] + [f"machine_{k}" for k in machine]
              + ["roofline_peak_flops", "roofline_bandwidth_bytes"])
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        for row in report["summary"]:
            s = specs[row["label"]]["settings"]
            w.writerow([_csv(row.get(k)) for k in CSV_METRICS] + [_csv(s.get(k)) for k in setting_keys]
                       + [_csv(report["settings"][k]) for k in bench_keys]
                       + [report["model"]["name"], report["model"]["family"], report["model"]["params"]]
                       + [_csv(v) for v in machine.values()]
                       + [_csv(roof.get("peak_flops")), _csv(roof.get("bandwidth_bytes"))])
    os.replace(tmp, path)


def _csv(v):
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, (list, tuple)):
        return ";".join(str(x) for x in v)
    if isinstance(v, dict):
        return ";".join(f"{k}={x}" for k, x in v.items())
    return v


class PlotUnavailable(BenchError):
    pass


PLOT_MISSING = "--plot needs matplotlib, which is not installed (pip install matplotlib)"


def check_plot() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise PlotUnavailable(PLOT_MISSING) from None


def write_plot(report: dict, path: Path) -> None:
    """Speedup vs token agreement, one labelled point per strategy; the Pareto frontier is starred.

    The speed axis follows ``settings.frontier``: wall speedup, or FLOP speedup with ``flops``.
    """
    check_plot()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    flops = report["settings"].get("frontier") == "flops"
    speed = "flop_speedup" if flops else "speedup"
    rows = [r for r in report["summary"] if r.get(speed) is not None and r.get("token_agreement") is not None]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in rows:
        ax.scatter(r[speed], r["token_agreement"], marker="*" if r.get("pareto") else "o",
                   s=90 if r.get("pareto") else 40, color="tab:red" if r["baseline"] else "tab:blue")
        # sweep points: only the swept settings, so neighbouring labels stay short
        label = r["label"].split(":", 1)[1].replace(":", " ") if r.get("sweep") and ":" in r["label"] else r["label"]
        ax.annotate(label, (r[speed], r["token_agreement"]), textcoords="offset points", xytext=(4, 4), fontsize=7)
    front = sorted((r[speed], r["token_agreement"]) for r in rows if r.get("pareto"))
    if len(front) > 1:
        ax.plot(*zip(*front), color="tab:gray", linewidth=0.8, linestyle="--")
    ax.set_xlabel(("FLOP" if flops else "wall") + " speedup vs " + report["baseline"])
    ax.set_ylabel("token agreement with " + report["baseline"])
    m = report["model"]
    ax.set_title(f"{_model_label(m)} ({m['family']}), gen {report['settings']['gen_length']}, "
                 f"{report['machine'].get('device')} {report['machine'].get('dtype')}", fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _model_label(m: dict) -> str:
    """Aliases as given; checkpoint paths by their folder name."""
    return Path(m["name"]).name if "/" in m["name"] and Path(m["name"]).exists() else m["name"]


def _num(v, fmt="{:.2f}", none="-"):
    return none if v is None else fmt.format(v)


def _si(v):
    if v is None:
        return "-"
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(v) >= scale:
            return f"{v / scale:.2f}{unit}"
    return f"{v:.0f}"


def render_table(report: dict):
    """The product: a rich table with one row per strategy."""
    from rich.markup import escape
    from rich.table import Table

    rows = report["summary"]
    has_acc = any(r.get("accuracy") is not None for r in rows)
    has_nll = any(r.get("nll") is not None for r in rows)
    has_roof = any(r.get("roofline_speedup") is not None for r in rows)
    has_sweep = any(r.get("sweep") for r in rows)
    s, m = report["settings"], report["model"]
    mach = report["machine"]
    title = (f"{_model_label(m)} ({m['family']}, {m['params'] / 1e6:.1f}M params) · gen {s['gen_length']} · "
             f"steps {s['steps'] or s['gen_length']} · {rows[0]['prompts'] if rows else 0} prompt(s) · "
             f"{s['repeats']} repeat(s) · {mach.get('device')} {mach.get('dtype')}")
    t = Table(title=escape(title), title_style="bold", caption=escape(_caption(report)))
    t.add_column("strategy", no_wrap=True)
    for name in ("NFE/run", "tok computed", "FLOPs", "FLOP ×", "wall s med (min–max)", "tok/s", "speedup",
                 "agree tok", "agree text"):
        t.add_column(name, justify="right", no_wrap=True)
    if has_acc:
        t.add_column("acc", justify="right")
    if has_nll:
        t.add_column("NLL", justify="right")
    if has_roof:
        t.add_column("roofline ×", justify="right")
        t.add_column("eff", justify="right")
    if has_sweep:
        t.add_column("pareto", justify="center")
    for r in rows:
        cells = [escape(r["label"]) + (" (base)" if r["baseline"] else ""), _num(r["forward_passes_per_run"], "{:.1f}"),
                 _si(r["tokens_computed"]), _si(r["flops"]), _num(r["flop_ratio"], "{:.3f}"),
                 f"{r['seconds_median']:.3f} ({r['seconds_min']:.3f}–{r['seconds_max']:.3f})",
                 _num(r["tokens_per_s"], "{:.1f}"), _num(r["speedup"], "{:.2f}×"),
                 _num(r["token_agreement"], "{:.1%}"), _num(r["text_agreement"], "{:.0%}")]
        if has_acc:
            cells.append(f"{r['accuracy']:.0%} ({r['answered']})" if r.get("accuracy") is not None else "-")
        if has_nll:
            cells.append(_num(r.get("nll"), "{:.3f}"))
        if has_roof:
            cells += [_num(r.get("roofline_speedup"), "{:.2f}×"), _num(r.get("roofline_efficiency"), "{:.0%}")]
        if has_sweep:
            cells.append("★" if r.get("pareto") else "")
        t.add_row(*cells)
    return t


def _caption(report: dict) -> str:
    parts = []
    rf = report.get("roofline")
    if rf:
        parts.append(f"roofline: {rf['peak_flops'] / 1e9:.1f} GFLOP/s, {rf['bandwidth_bytes'] / 1e9:.1f} GB/s")
    if report.get("skipped"):
        parts.append(f"{len(report['skipped'])} sweep point(s) skipped as invalid (see JSON)")
    n_shards = len(report.get("shards") or [])
    if n_shards > 1:
        parts.append(f"merged from {n_shards} shards")
    return " · ".join(parts)


__all__ = ["FORMAT", "Spec", "Prompt", "BenchConfig", "BenchError", "parse_spec", "parse_specs", "parse_sweep",
           "sweep_specs", "read_prompts", "parse_shard", "shard_indices", "run_bench", "summarize", "merge_reports",
           "render_table", "write_json", "write_csv", "write_plot", "check_plot", "masked_nll", "is_correct",
           "extract_number", "measure_peaks", "roofline_of_run"]
