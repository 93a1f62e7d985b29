"""``wdiff bench`` and ``wdiff bench merge``: registered on the main app; torch is imported lazily.

    wdiff bench -m tiny --strategies vanilla,window,dual-cache:threshold=0.9 --gen-length 256
    wdiff bench --sweep window=8,16,32 refresh=8,32 --json sweep.json
    wdiff bench --shard 0/2 --json a.json ...; wdiff bench --shard 1/2 --json b.json ...
    wdiff bench merge a.json b.json -o all.json
    torchrun --nproc-per-node 4 -m wdiff_cli bench ...   # each rank runs its shard, rank 0 reports
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from typer.core import TyperGroup

from . import options as o

SPEC_HELP = ("Comma-separated strategy specs NAME[:KEY=VALUE]... with KEY a generation setting, "
             "e.g. vanilla,window,window:threshold=0.9,dual-cache:threshold=0.9:block-length=32. "
             "The baseline is added if missing.")
P = "Bench"
OUT = "Output"


class BenchGroup(TyperGroup):
    """``bench`` runs without a subcommand; ``bench merge`` is the only subcommand.

    Every argument list not starting with a subcommand name is parsed as the bench command's
    own (prompts are positional), so ``wdiff bench "ROMEO:"`` works alongside ``bench merge``.
    """

    allow_interspersed_args = True  # options may follow the prompts, as in a plain command

    def parse_args(self, ctx, args: list[str]) -> list[str]:
        own = super(TyperGroup, self).parse_args  # the plain-command parser, skipping the group's
        if args and args[0] in self.commands:
            own(ctx, [])  # the bench options take their defaults
            ctx._protected_args, ctx.args = [args[0]], list(args[1:])
            return ctx.args
        return own(ctx, args)

    def get_params(self, ctx):
        params = super().get_params(ctx)
        if ctx.command is not self:  # a subcommand's usage line: `wdiff bench merge`, not `bench [prompts]... merge`
            return [p for p in params if p.param_type_name != "argument"]
        return params


bench_app = typer.Typer(cls=BenchGroup, invoke_without_command=True, add_completion=False,
                        pretty_exceptions_enable=False)


def _dist():
    """(rank, world size) when launched by torchrun with WORLD_SIZE > 1, else None."""
    ws = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if ws <= 1 or "RANK" not in os.environ:
        return None
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("gloo")  # objects only: gloo works beside CUDA models too
    return dist.get_rank(), dist.get_world_size()


class _Progress:
    """Progress on stderr: a rich bar on a terminal, one line per run otherwise, or nothing."""

    def __init__(self, mode: str, label: str = "bench"):
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.mode, self.label = mode, label
        self.bar = Progress(TextColumn("[dim]{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TimeElapsedColumn(), console=Console(stderr=True), transient=True,
                            disable=mode != "bar")
        self.task = None
        self.done = self.total = 0
        self.t0 = 0.0

    def __enter__(self):
        import time

        self.t0 = time.perf_counter()
        self.bar.__enter__()
        return self

    def __exit__(self, *exc):
        self.bar.__exit__(*exc)

    def start(self, total: int) -> None:
        self.total = total
        self.task = self.bar.add_task(self.label, total=total)

    def advance(self, desc: str) -> None:
        import time

        self.done += 1
        self.bar.update(self.task, advance=1, description=f"{self.label} {desc}")
        if self.mode == "lines":
            typer.echo(f"{self.label} {self.done}/{self.total} {desc} ({time.perf_counter() - self.t0:.0f}s)", err=True)


def _print_table(report) -> None:
    from rich.console import Console

    from .bench import render_table

    console = Console()
    if not console.is_terminal:
        console = Console(width=max(console.width, 220))
    console.print(render_table(report))


def _outputs(report, json_path, csv_path, plot_path) -> None:
    from .bench import write_csv, write_json, write_plot

    _print_table(report)
    if json_path:
        write_json(report, json_path)
        typer.echo(f"wrote {json_path}", err=True)
    if csv_path:
        write_csv(report, csv_path)
        typer.echo(f"wrote {csv_path}", err=True)
    if plot_path:
        write_plot(report, plot_path)
        typer.echo(f"wrote {plot_path}", err=True)


def _check_out_paths(*paths) -> None:
    from .cli import UserError

    for p in paths:
        if p is not None and not Path(p).parent.exists():
            raise UserError(f"{p}: folder {Path(p).parent} does not exist")


@bench_app.callback()
def bench(
    ctx: typer.Context,
    prompts: Annotated[Optional[list[str]], typer.Argument(
        help="Prompts (default: sample_prompts/shakespeare.txt). With --sweep, KEY=V1,V2 arguments are sweep axes.",
        show_default=False)] = None,
    prompts_file: Annotated[Optional[Path], typer.Option("--prompts", help="JSONL rows {\"prompt\", \"answer\"?} or one prompt per line.", rich_help_panel=P)] = None,
    strategies: Annotated[Optional[list[str]], typer.Option("--strategies", "-s", help=SPEC_HELP, rich_help_panel=P)] = None,
    baseline: Annotated[str, typer.Option(help="Spec the ratios and agreement are measured against.", rich_help_panel=P)] = "vanilla",
    sweep: Annotated[Optional[list[str]], typer.Option(help="Grid axis KEY=V1,V2,... (repeatable, or several in one quoted value): runs the grid on --sweep-base and marks the Pareto frontier.", rich_help_panel=P)] = None,
    sweep_base: Annotated[str, typer.Option(help="Spec the sweep grid modifies.", rich_help_panel=P)] = "window",
    frontier: Annotated[str, typer.Option(help="Speed axis of the Pareto frontier: wall | flops (quality axis: token agreement).", rich_help_panel=P)] = "wall",
    gen_length: o.GenLength = 128,
    steps: o.Steps = None,
    early_stop: o.EarlyStop = None,
    repeats: Annotated[int, typer.Option(help="Timed runs per prompt and strategy (median, min, max).", rich_help_panel=P)] = 3,
    warmup: Annotated[int, typer.Option(help="Untimed runs per strategy on the first prompt.", rich_help_panel=P)] = 1,
    batch: Annotated[int, typer.Option(help="Prompts per generation call.", rich_help_panel=P)] = 1,
    prompt_tokens: Annotated[Optional[int], typer.Option(help="Cut or cycle every prompt to exactly N tokens (cost control).", rich_help_panel=P)] = None,
    nll_masks: Annotated[int, typer.Option(help="Random masks for the masked-token NLL quality signal (0: off).", rich_help_panel=P)] = 4,
    roofline: Annotated[bool, typer.Option("--roofline/--no-roofline", help="Measure peak matmul rate and copy bandwidth; report each strategy's roofline speedup bound and efficiency.", rich_help_panel=P)] = False,
    shard: Annotated[Optional[str], typer.Option(help="Run shard i/n: prompts with index % n == i.", rich_help_panel=P)] = None,
    threads: Annotated[Optional[int], typer.Option(help="torch CPU threads.", rich_help_panel=P)] = None,
    seed: o.Seed = 0,
    model: o.Model = "tiny",
    device: o.Device = "auto",
    dtype: o.Dtype = "auto",
    chat: o.Chat = None,
    json_path: Annotated[Optional[Path], typer.Option("--json", help="Write the wdiff-bench/1 report here.", rich_help_panel=OUT)] = None,
    csv_path: Annotated[Optional[Path], typer.Option("--csv", help="Write one CSV row per strategy here.", rich_help_panel=OUT)] = None,
    plot: Annotated[Optional[Path], typer.Option(help="Write a speedup-vs-agreement PNG (needs matplotlib).", rich_help_panel=OUT)] = None,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Progress on stderr (a bar on a terminal, else one line per run).", rich_help_panel=OUT)] = True,
):
    """Benchmark strategies against vanilla: NFE, FLOPs, wall time, tokens/s, speedup, agreement, quality.

    Strategy spec syntax: NAME[:KEY=VALUE]..., KEY any generation setting (window, buffer, refresh,
    threshold, block-length, steps, ...). Example: --strategies vanilla,window,window:threshold=0.9.
    """
    if ctx.invoked_subcommand is not None:
        return
    _bench(prompts, prompts_file, strategies, baseline, sweep, sweep_base, frontier, gen_length, steps, early_stop,
           repeats, warmup, batch, prompt_tokens, nll_masks, roofline, shard, threads, seed, model, device, dtype,
           chat, json_path, csv_path, plot, progress)


def _bench(prompts, prompts_file, strategies, baseline, sweep, sweep_base, frontier, gen_length, steps, early_stop,
           repeats, warmup, batch, prompt_tokens, nll_masks, roofline, shard, threads, seed, model, device, dtype,
           chat, json_path, csv_path, plot, progress):
    from .cli import UserError, load_model, user_errors

    @user_errors
    def go():
        from . import bench as B

        try:
            args = list(prompts or [])
            axes_text = list(sweep or [])
            if axes_text:  # `--sweep window=8,16 refresh=8,32`: trailing axes arrive as arguments
                axes_text += [a for a in args if B.is_sweep_axis(a)]
                args = [a for a in args if not B.is_sweep_axis(a)]
            if args and prompts_file:
                raise UserError("give prompts as arguments or --prompts FILE, not both")
            for name, v, lo in (("repeats", repeats, 1), ("warmup", warmup, 0), ("batch", batch, 1),
                                ("nll-masks", nll_masks, 0), ("gen-length", gen_length, 1)):
                if v < lo:
                    raise UserError(f"--{name} must be >= {lo} (got {v})")
            if frontier not in ("wall", "flops"):
                raise UserError(f"--frontier {frontier!r}: use wall or flops")
            if plot is not None:
                B.check_plot()
            _check_out_paths(json_path, csv_path, plot)
            if args:
                plist = [B.Prompt(i, a.replace("\\n", "\n")) for i, a in enumerate(args)]
            else:
                path = prompts_file or B.DEFAULT_PROMPTS
                if prompts_file is None and not path.exists():
                    raise UserError(f"no prompts: pass them as arguments or --prompts FILE ({path} is missing)")
                plist = B.read_prompts(path)
            base = B.parse_spec(baseline)
            specs = B.parse_specs(strategies) if strategies else (
                [base] if axes_text else B.parse_specs([",".join(B.DEFAULT_STRATEGIES)]))
            if axes_text:
                specs += [s for s in B.sweep_specs(B.parse_sweep(axes_text), B.parse_spec(sweep_base))
                          if s.label not in {x.label for x in specs}]
            if base.label not in [s.label for s in specs]:
                specs.insert(0, base)
            sh = B.parse_shard(shard)
            dist = _dist()
            if dist is not None:
                if sh is not None:
                    raise UserError("--shard and a torchrun launch are alternatives; the launch shards by rank")
                sh = dist
            dev = device
            if dist is not None and device in ("auto", "cuda"):
                import torch

                if torch.cuda.is_available():
                    dev = f"cuda:{int(os.environ.get('LOCAL_RANK', dist[0])) % torch.cuda.device_count()}"
            if threads:
                import torch

                torch.set_num_threads(threads)
            cfg = B.BenchConfig(gen_length=gen_length, steps=steps, repeats=repeats, warmup=warmup, batch=batch,
                                early_stop=early_stop, chat=chat, prompt_tokens=prompt_tokens, nll_masks=nll_masks,
                                roofline=roofline, frontier=frontier, seed=seed, shard=sh,
                                world_size=dist[1] if dist else 1)
            rank0 = dist is None or dist[0] == 0
            loaded = load_model(model, dev, dtype)
            log = (lambda msg: typer.echo(msg, err=True)) if rank0 else None
            label = f"bench[{dist[0]}/{dist[1]}]" if dist else "bench"
            mode = "off" if not (progress and rank0) else "bar" if sys.stderr.isatty() else "lines"
            with _Progress(mode, label) as bar:
                report = B.run_bench(loaded, plist, specs, cfg, baseline=base.label, progress=bar, log=log)
            if dist is not None:
                import torch.distributed as tdist

                gathered = [None] * dist[1]
                tdist.all_gather_object(gathered, report)
                tdist.destroy_process_group()
                if not rank0:
                    return
                report = B.merge_reports(gathered)
            _outputs(report, json_path, csv_path, plot)
        except B.BenchError as e:
            raise UserError(str(e)) from None

    go()


@bench_app.command("merge")
def merge(
    inputs: Annotated[list[Path], typer.Argument(help="Shard reports (wdiff-bench/1 JSON).", show_default=False)],
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Write the merged report here.")] = None,
    csv_path: Annotated[Optional[Path], typer.Option("--csv", help="Write one CSV row per strategy here.")] = None,
    plot: Annotated[Optional[Path], typer.Option(help="Write a speedup-vs-agreement PNG (needs matplotlib).")] = None,
):
    """Merge shard reports: records are combined and every aggregate is recomputed."""
    from .cli import UserError, user_errors

    @user_errors
    def go():
        from . import bench as B

        try:
            if plot is not None:
                B.check_plot()
            _check_out_paths(out, csv_path, plot)
            report = B.merge_reports([B.read_json(p) for p in inputs])
            _outputs(report, out, csv_path, plot)
        except B.BenchError as e:
            raise UserError(str(e)) from None

    go()


def register(app) -> None:
    app.add_typer(bench_app, name="bench")
