"""``wdiff`` command line: generate, watch, bench, models, strategies, train.

stdout carries the product (text or JSON); progress and diagnostics go to stderr. Bad input
prints one ``error:`` line and exits with code 2. torch and textual are imported lazily.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from . import options as o

# OpenMP threads that spin at barriers stall for whole time slices when another process holds a
# core (measured: `wdiff generate "ROMEO:"` 29 s spinning vs 4.8 s passive on a busy 2-core VM).
# Set before torch is imported; an explicit OMP_WAIT_POLICY in the environment wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="Fast inference for diffusion language models (LLaDA, Dream) with Window-Diffusion.")


class UserError(Exception):
    """An error the user can act on: printed as one line, exit code 2."""


def fail(msg: str, code: int = 2):
    typer.echo(f"error: {msg}", err=True)
    raise typer.Exit(code)


def user_errors(fn):
    """Turn known error types into one-line messages with exit code 2; Ctrl-C exits 130."""
    import functools

    @functools.wraps(fn)
    def wrapper(*a, **kw):
        from .errors import GenerationError
        from .loading import ModelLoadError

        try:
            return fn(*a, **kw)
        except (UserError, ModelLoadError, GenerationError) as e:
            fail(str(e))
        except KeyboardInterrupt:
            typer.echo("interrupted", err=True)
            raise typer.Exit(130)

    return wrapper


def read_prompts(prompt: Optional[str], prompt_file: Optional[Path]) -> list[str]:
    """Prompt argument, ``-`` for stdin (one prompt), or a file: JSONL rows or one prompt per line."""
    if prompt is not None and prompt_file is not None:
        raise UserError("give a prompt or --prompt-file, not both")
    if prompt_file is not None:
        if not prompt_file.exists():
            raise UserError(f"--prompt-file {prompt_file}: no such file")
        text = prompt_file.read_text()
        if prompt_file.suffix == ".jsonl":
            out = []
            for n, line in enumerate(text.splitlines(), 1):
                if line.strip():
                    try:
                        row = json.loads(line)
                        out.append(row["prompt"] if isinstance(row, dict) else str(row))
                    except (json.JSONDecodeError, KeyError):
                        raise UserError(f"{prompt_file}:{n}: expected a JSON object with a \"prompt\" field")
            prompts = out
        else:
            prompts = [ln for ln in text.splitlines() if ln.strip()]
        if not prompts:
            raise UserError(f"--prompt-file {prompt_file}: no prompts in it")
        return [p.replace("\\n", "\n") for p in prompts] if prompt_file.suffix != ".jsonl" else prompts
    if prompt is None:
        raise UserError("no prompt: pass text, '-' to read stdin, or --prompt-file FILE")
    if prompt == "-":
        prompt = sys.stdin.read()
    if not prompt.strip():
        raise UserError("empty prompt: give the text to continue")
    return [prompt]


def load_model(model: str, device: str, dtype: str):
    from .loading import load

    with _status(f"loading {model}"):
        return load(model, device=device, dtype=dtype)


class _status:
    def __init__(self, msg):
        self.msg = msg

    def __enter__(self):
        if sys.stderr.isatty():
            from rich.console import Console

            self.s = Console(stderr=True).status(self.msg)
            self.s.__enter__()
        return self

    def __exit__(self, *exc):
        if sys.stderr.isatty():
            self.s.__exit__(*exc)


@app.command()
@user_errors
@o.with_generation_options
def generate(
    prompt: Annotated[Optional[str], typer.Argument(help="Prompt text, or - to read stdin.")] = None,
    prompt_file: Annotated[Optional[Path], typer.Option(help="One prompt per line, or JSONL with a \"prompt\" field: runs them as one batch.")] = None,
    model: o.Model = "tiny",
    chat: o.Chat = None,
    device: o.Device = "auto",
    dtype: o.Dtype = "auto",
    fmt: Annotated[str, typer.Option("--format", "-f", help="text | json | jsonl")] = "text",
    trace: Annotated[Optional[Path], typer.Option(help="Write the per-step trace (wdiff-trace/1 JSONL) here.")] = None,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Progress bar on stderr.")] = True,
    settings: dict = None,
):
    """Generate text. Default: the built-in `tiny` model with the Window-Diffusion paper preset.

    Presets (what --strategy window uses unless a flag overrides it):
    llada-paper = window 16, buffer 48, refresh 32, full refresh scope, schedule commit, sparse active set;
    dream-paper = window 16, buffer 111 (outer 127 masks, as the official o_win_size=128), refresh 32,
    window refresh scope, leftmost commit, span active set, slide on.
    """
    if fmt not in ("text", "json", "jsonl"):
        raise UserError(f"--format {fmt!r}: use text, json or jsonl")
    if trace is not None and not trace.parent.exists():
        raise UserError(f"--trace {trace}: folder {trace.parent} does not exist")
    prompts = read_prompts(prompt, prompt_file)
    from .engine import Settings, resolve_settings

    s = Settings(**settings)
    loaded = load_model(model, device, dtype)
    resolve_settings(loaded, s)  # fail fast on bad settings, before any output
    result = run_generation(loaded, prompts, s, chat, trace, progress)
    if fmt == "text":
        for i, text in enumerate(result.texts):
            if len(result.texts) > 1:
                typer.echo(f"--- [{i}]")
            typer.echo(text)
    elif fmt == "json":
        rows = [result.row_json(b) for b in range(len(result.texts))]
        typer.echo(json.dumps(rows[0] if len(rows) == 1 else rows, ensure_ascii=False))
    else:
        for b in range(len(result.texts)):
            typer.echo(json.dumps(result.row_json(b), ensure_ascii=False))


def run_generation(loaded, prompts, settings, chat, trace_path, progress: bool):
    """Drain the event stream with an optional trace writer and stderr progress bar."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from .engine import Result, stream
    from .trace import RunEnd, RunStart, TraceWriter

    writer = TraceWriter(trace_path) if trace_path else None
    level = "full" if writer else "counts"
    start = end = None
    ok = False
    bar = Progress(TextColumn("[dim]{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("masks left {task.fields[left]}"), TimeElapsedColumn(),
                   transient=True, disable=not progress or not sys.stderr.isatty())
    try:
        with bar:
            task = None
            for ev in stream(loaded, prompts, settings, chat=chat, level=level):
                if writer:
                    writer.write(ev)
                if isinstance(ev, RunStart):
                    start = ev
                    task = bar.add_task(ev.strategy, total=ev.gen_length * len(ev.prompt_token_ids), left="")
                elif isinstance(ev, RunEnd):
                    end = ev
                else:
                    left = sum(r["masks_left"] for r in ev.rows)
                    bar.update(task, completed=start.gen_length * len(ev.rows) - left, left=left)
        ok = True
    finally:
        if writer:
            writer.close(ok)
    return Result.from_run(loaded, start, end)


@app.command()
def models():
    """List the model aliases and whether each is available locally."""
    from rich.console import Console
    from rich.table import Table

    from .loading import BUILTIN_ALIASES, BUILTIN_DIR, HUB_ALIASES

    t = Table("alias", "source", "available")
    for name, sub in BUILTIN_ALIASES.items():
        t.add_row(name, "built-in", "yes" if (BUILTIN_DIR / sub / "config.json").exists() else "missing")
    try:
        from huggingface_hub import scan_cache_dir

        cached = {r.repo_id for r in scan_cache_dir().repos}
    except Exception:
        cached = set()
    for name, (repo, _) in HUB_ALIASES.items():
        t.add_row(name, repo, "cached" if repo in cached else "not cached")
    Console().print(t)


@app.command()
def strategies():
    """List the strategies and the window presets."""
    from .strategies import STRATEGIES
    from .strategies.window import PRESETS

    for name, s in STRATEGIES.items():
        typer.echo(f"{name:13s} {s.help}")
    typer.echo("")
    for name, p in PRESETS.items():
        typer.echo(f"{name:13s} " + ", ".join(f"{k}={v}" for k, v in p.items()))


@app.command()
@user_errors
def train(
    corpus: Annotated[Path, typer.Option(help="Folder of .txt files (e.g. ../shared/data/shakespeare).")],
    out: Annotated[Path, typer.Option(help="Output checkpoint directory.")],
    family: Annotated[str, typer.Option(help="llada | dream")] = "llada",
    max_minutes: Annotated[float, typer.Option(help="Wall-clock budget.")] = 40.0,
    resume: Annotated[bool, typer.Option(help="Resume from the run directory's last checkpoint.")] = False,
    seed: Annotated[int, typer.Option()] = 0,
):
    """Train a small diffusion LM (masked-diffusion objective) in the original checkpoint format."""
    from . import train as training

    if not corpus.is_dir():
        raise UserError(f"--corpus {corpus}: not a folder of .txt files")
    training.train(str(corpus), str(out), family=family, max_minutes=max_minutes, resume=resume, seed=seed)


def _register_optional_commands():
    from .watch_cli import register as register_watch
    from .bench_cli import register as register_bench

    register_watch(app)
    register_bench(app)


_register_optional_commands()


def main():
    app()


if __name__ == "__main__":
    main()
