"""The `opens2s-data` command: a thin typer layer over the library functions."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from pipeline.recipe import RecipeError

app = typer.Typer(help="Manufacture empathetic spoken-dialogue training data.", no_args_is_help=True)
console = Console(stderr=True)

EXIT_BAD_INPUT = 2
EXIT_FAILED = 1
EXIT_INTERRUPTED = 130


def fail(message: str, code: int) -> None:
    """Print one readable error and exit with `code`."""
    console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def summary_table(totals: dict[str, Any], wall_s: float, startup_s: dict[str, float] | None = None) -> Table:
    """The end-of-build summary: requested, kept, rejected by reason, audio hours, wall time and the
    seconds of each start-up phase."""
    table = Table(title="build summary", show_header=True)
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_row("dialogues requested", str(totals["requested"]))
    table.add_row("dialogues kept", str(totals["kept"]))
    table.add_row("dialogues rejected", str(totals["rejected"]))
    table.add_row("  of which transient (retried on resume)", str(totals.get("transient", 0)))
    for reason, count in totals["rejected_by_reason"].items():
        table.add_row(f"  rejected: {reason}", str(count))
    table.add_row("turns kept", str(totals["turns_kept"]))
    for reason, count in totals["turns_dropped_by_reason"].items():
        table.add_row(f"  turns dropped: {reason}", str(count))
    table.add_row("speakers / emotions kept", f"{len(totals['speakers'])} / {len(totals['emotions'])}")
    table.add_row("audio hours", f"{totals['audio_hours']:.4f}")
    if "balance" in totals:
        b = totals["balance"]
        diffs = f"{b['emotion_max_share_diff']:.3f} / {b['topic_max_share_diff']:.3f}"
        table.add_row("largest share difference kept vs requested: emotion / topic", diffs)
    table.add_row("wall time (this run)", f"{wall_s:.1f} s")
    if startup_s:
        names = {"llm_server": "LLM server", "codebook": "codebook", "calibration": "emotion calibration",
                 "ray_start": "Ray start", "first_dialogue": "first dialogue"}  # fmt: skip
        for phase, seconds in startup_s.items():
            table.add_row(f"  start-up: {names.get(phase, phase)}", f"{seconds:.1f} s")
    return table


@app.command()
def build(
    recipe: Annotated[Path, typer.Argument(help="Recipe YAML, e.g. manifests/demo.yaml.")],
    out: Annotated[Path, typer.Option("--out", help="Output folder (re-running on it resumes).")],
    num_dialogues: Annotated[
        int | None, typer.Option("--num-dialogues", min=1, help="Override the recipe's count.")
    ] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace another recipe's run in OUT.")] = False,
    ray_address: Annotated[
        str | None, typer.Option("--ray-address", help="Existing Ray cluster (default: local Ray).")
    ] = None,
    no_retry_transient: Annotated[
        bool,
        typer.Option(
            "--no-retry-transient",
            help="Do not retry dialogues that failed transiently (outages) in earlier runs; they stay rejected.",
        ),
    ] = False,
    verbose: Annotated[
        bool, typer.Option("--verbose", help="Show third-party output (Ray, llama.cpp, ...) instead of logging it.")
    ] = False,
) -> None:
    """Build (or resume) a dataset from RECIPE into OUT."""
    from pipeline.build import BuildError
    from pipeline.build import build as run_build
    from pipeline.failfast import FailFastError
    from pipeline.io.quiet import quiet_stderr

    progress = Progress(
        TextColumn("[bold]dialogues"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn(),
        console=console,
    )  # fmt: skip
    task = progress.add_task("build", total=None)

    def on_progress(done: int, total: int, _dialogue: object) -> None:
        progress.update(task, completed=done, total=total)

    with quiet_stderr(not verbose) as (terminal, _log):
        console.file = terminal  # ours to the terminal; Ray's and the libraries' output to the log
        try:
            with progress:
                result = run_build(recipe, out, num_dialogues, overwrite, ray_address, on_progress=on_progress,
                                   retry_transient=not no_retry_transient)  # fmt: skip
        except RecipeError as err:
            fail(str(err), EXIT_BAD_INPUT)
        except BuildError as err:
            fail(str(err), EXIT_BAD_INPUT)
        except FailFastError as err:
            fail(str(err), EXIT_FAILED)
        except KeyboardInterrupt:
            fail(f"interrupted; completed shards are kept, re-run the same command to resume into {out}",
                 EXIT_INTERRUPTED)  # fmt: skip
        except OSError as err:
            fail(f"{err}; completed shards are kept, fix the cause and re-run the same command to resume", EXIT_FAILED)
        finally:
            console.file = None  # type: ignore[assignment]  # back to the current sys.stderr
    Console().print(summary_table(result.totals, result.wall_s, result.startup_s))
    crashed = sum(n for reason, n in result.totals["rejected_by_reason"].items() if reason.endswith("_error"))
    if crashed:
        console.print(
            f"[yellow]warning:[/] {crashed} dialogue(s) were rejected because a stage raised an error "
            "(reason *_error); the `detail` column of rejects/ has the exception"
        )
    balance = result.totals.get("balance")
    if balance and not balance["within_tolerance"]:
        console.print(
            "[yellow]warning:[/] rejections pushed the kept emotion/topic shares off the design "
            f"(largest share difference: emotion {balance['emotion_max_share_diff']}, "
            f"topic {balance['topic_max_share_diff']}; scenarios.balance_tolerance {balance['tolerance']})"
        )
    if result.resumed:
        console.print(f"resumed the run in {out}; {result.shards_written} shard(s) written now")
        if result.retried:
            console.print(f"retried {result.retried} dialogue(s) that had failed transiently in an earlier run")
    transient = result.totals.get("transient", 0)
    if transient:
        down = result.totals["rejected_by_reason"].get("llm_endpoint_down", 0)
        why = f", {down} of them because the LLM endpoint stayed down past reliability.outage_budget_s" if down else ""
        message = f"{transient} dialogue(s) failed transiently (infrastructure, not a gate{why})"
        if no_retry_transient:
            console.print(f"[yellow]warning:[/] {message}; not retried (--no-retry-transient): re-run without it")
        else:
            fail(f"{message}; they are not written off: once the cause is fixed, re-run the same command to retry "
                 "exactly those", EXIT_FAILED)  # fmt: skip
    if not result.complete:
        fail("the build did not finish every shard; re-run the same command to resume", EXIT_FAILED)


@app.command()
def check(
    recipe: Annotated[Path, typer.Argument(help="Recipe YAML, e.g. manifests/production-gpu.yaml.")],
    ray_address: Annotated[
        str | None, typer.Option("--ray-address", help="Ray cluster the build will use (default: local Ray).")
    ] = None,
) -> None:
    """Preflight RECIPE: list every missing input, then run 2 scenarios through every stage and estimate the build."""
    from pipeline.build import BuildError
    from pipeline.preflight import run_check

    def on_stage(r: Any) -> None:
        console.print(f"{r.stage}: {r.outcome} (load {r.load_s:.1f} s, {r.item_s:.2f} s/item)", highlight=False)

    try:
        result = run_check(recipe, ray_address, on_stage=on_stage)
    except (RecipeError, BuildError) as err:
        fail(str(err), EXIT_BAD_INPUT)
    table = Table(title=f"check {result.recipe.name}")
    for column in ("stage", "backend", "versions", "interpreter", "load s", "s / item", "outcome"):
        table.add_column(column, overflow="fold")
    for r in result.stages:
        versions = ", ".join(f"{k} {v}" for k, v in r.versions.items())
        table.add_row(r.stage, r.backend, versions, r.interpreter, f"{r.load_s:.1f}", f"{r.item_s:.2f}", r.outcome)
    terminal = Console()
    if not terminal.is_terminal:  # a log file or a pipe: do not squeeze the table into 80 columns
        terminal = Console(width=220)
    terminal.print(table)
    if not result.ok:
        fail("a stage does not work (see the outcome column); fix it before the build", EXIT_FAILED)
    terminal.print(
        f"estimate for {result.recipe.num_dialogues} dialogues: {result.estimate_s / 3600:.2f} h "
        f"({result.estimate_s:.0f} s; slowest stage {result.bottleneck}, from the rates measured on 2 items)"
    )


@app.command()
def verify(out: Annotated[Path, typer.Argument(help="A build's output folder.")]) -> None:
    """Check a finished dataset: schemas, audio, ids, counts, units; non-zero exit on problems."""
    from pipeline.verify import dominant_reject_warnings
    from pipeline.verify import verify as run_verify

    problems, counts = run_verify(out)
    for warning in dominant_reject_warnings(out):
        console.print(f"[yellow]warning:[/] {warning}", highlight=False)
    if problems:
        for problem in problems:
            console.print(f"[red]problem:[/] {problem}", highlight=False)
        fail(f"{out} has {len(problems)} problem(s)", EXIT_FAILED)
    Console().print(
        f"ok: {out} ({counts['requested']} requested, {counts['kept']} kept, {counts['rejected']} rejected)"
    )


voices_app = typer.Typer(help="Inspect and audition the speaker catalog.", no_args_is_help=True)
app.add_typer(voices_app, name="voices")


def _catalogs(recipe: str) -> Any:
    from pipeline.catalogs import load_catalogs
    from pipeline.recipe import load_recipe

    try:
        return load_catalogs(load_recipe(recipe))
    except RecipeError as err:
        fail(str(err), EXIT_BAD_INPUT)


@voices_app.command("list")
def voices_list(
    recipe: Annotated[str, typer.Option(help="Recipe whose catalogs to read.")] = "demo",
) -> None:
    """List the speakers and assistant voices with their engine parameters."""
    catalogs = _catalogs(recipe)
    table = Table(title="speakers")
    for column in ("id", "role", "gender", "age group", "accent", "espeak voice", "pitch", "range", "rate"):
        table.add_column(column)
    for role, speakers in (("user", catalogs.speakers), ("assistant", catalogs.assistants)):
        for s in speakers:
            v = getattr(s, "voice", None)  # a Piper assistant has styles, not eSpeak parameters
            engine = (v.name, v.pitch, v.pitch_range, v.rate) if v else ("(piper)", "", "", "")
            table.add_row(*map(str, (s.id, role, s.gender, s.age_group, s.accent, *engine)))
    Console().print(table)


@voices_app.command("audition")
def voices_audition(
    speaker: Annotated[str, typer.Argument(help="Speaker id, e.g. spk-01.")],
    text: Annotated[str, typer.Option("--text", help="What to say.")],
    out: Annotated[Path, typer.Option("--out", help="WAV file to write.")],
    emotion: Annotated[str, typer.Option("--emotion", help="One of the 7 emotions.")] = "neutral",
    intensity: Annotated[str, typer.Option("--intensity", help="low, medium or high.")] = "medium",
    recipe: Annotated[str, typer.Option(help="Recipe whose catalogs to read.")] = "demo",
) -> None:
    """Render TEXT in SPEAKER's voice with an emotion, for tuning the catalog."""
    import soundfile as sf

    from pipeline.adapters.tts_espeak import EspeakEngine
    from pipeline.records import EMOTIONS, INTENSITIES

    catalogs = _catalogs(recipe)
    if emotion not in EMOTIONS:
        fail(f"--emotion: unknown emotion {emotion!r}; choose one of {', '.join(EMOTIONS)}", EXIT_BAD_INPUT)
    if intensity not in INTENSITIES:
        fail(f"--intensity: unknown intensity {intensity!r}; choose one of {', '.join(INTENSITIES)}", EXIT_BAD_INPUT)
    try:
        voice = catalogs.speaker(speaker).voice
    except KeyError:
        fail(f"unknown speaker {speaker!r}; `opens2s-data voices list` shows the catalog", EXIT_BAD_INPUT)
    audio = EspeakEngine.instance().synthesize(text, voice, catalogs.prosody(emotion, intensity))
    sf.write(out, audio.samples, audio.sample_rate)
    Console().print(f"wrote {out} ({audio.duration_s:.2f} s, {speaker}, {emotion}/{intensity})")


@app.command("recipe-schema")
def recipe_schema() -> None:
    """Print the recipe's JSON schema (every field with its description)."""
    import json

    from pipeline.recipe import Recipe

    sys.stdout.write(json.dumps(Recipe.model_json_schema(), indent=2) + "\n")


# --- training and export (issue 5) ---


@app.command()
def train(
    data_dir: Annotated[Path, typer.Argument(help="A build's output folder (its data/*.parquet shards).")],
    out: Annotated[Path | None, typer.Option("--out", help="Checkpoint folder (re-running on it resumes).")] = None,
    config: Annotated[str, typer.Option("--config", help="tiny (random init) or opens2s (local weights).")] = "tiny",
    steps: Annotated[int, typer.Option("--steps", help="Optimizer steps in total (a resume continues to this).")] = 100,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Dialogues per step and process.")] = 2,
    grad_accum: Annotated[int, typer.Option("--grad-accum", help="Micro-batches per optimizer step.")] = 1,
    lr: Annotated[float, typer.Option("--lr", help="AdamW learning rate.")] = 3e-3,
    trainable: Annotated[str, typer.Option("--trainable", help="adapters or adapters-llm-tts.")] = "adapters-llm-tts",
    spk_emb: Annotated[str, typer.Option("--spk-emb", help="Speaker vector: code, zeros or none.")] = "code",
    save_every: Annotated[int, typer.Option("--save-every", help="Also checkpoint every N steps (0: at the end).")] = 0,
    log_every: Annotated[int, typer.Option("--log-every", help="Log the mean losses every N steps.")] = 10,
    device: Annotated[str, typer.Option("--device", help="cpu or cuda (torchrun: LOCAL_RANK GPU).")] = "cpu",
    bf16: Annotated[bool, typer.Option("--bf16", help="bf16 compute (see README).")] = False,
    grad_checkpointing: Annotated[bool, typer.Option("--grad-checkpointing", help="Recompute decoder layers.")] = False,
    eval_fraction: Annotated[float, typer.Option("--eval-fraction", help="Scenarios held out for eval.")] = 0.0,
    eval_every: Annotated[int, typer.Option("--eval-every", help="Eval losses every N steps (0: never).")] = 0,
    init_from: Annotated[Path | None, typer.Option("--init-from", help="An OpenS2S checkpoint folder.")] = None,
    save_opens2s: Annotated[Path | None, typer.Option("--save-opens2s", help="Also write OpenS2S layout.")] = None,
    audio_model: Annotated[str | None, typer.Option("--audio-model", help="opens2s: Qwen2-Audio folder.")] = None,
    llm_model: Annotated[str | None, typer.Option("--llm-model", help="opens2s: Qwen3 LLM folder.")] = None,
    tts_model: Annotated[str | None, typer.Option("--tts-model", help="opens2s: TTS LM folder.")] = None,
    plan: Annotated[bool, typer.Option("--plan", help="Print the per-GPU memory plan and exit.")] = False,
    gpus: Annotated[int, typer.Option("--gpus", help="--plan: GPUs in total.")] = 1,
    seq_len: Annotated[int, typer.Option("--seq-len", help="--plan: LLM tokens per dialogue.")] = 2048,
    gpu_memory_gb: Annotated[float, typer.Option("--gpu-memory-gb", help="--plan: GiB per GPU.")] = 80.0,
) -> None:
    """Train the bundled speech-to-speech model on DATA_DIR's shards (one process, or many under torchrun)."""
    import os

    paths = {"audio": audio_model, "llm": llm_model, "tts": tts_model}
    if plan:
        from pipeline.train.plan import PlanError, check_plan, plan_for_cli

        try:
            estimate = plan_for_cli(config, init_from, paths, trainable, gpus, batch_size, seq_len,
                                    grad_checkpointing, gpu_memory_gb)  # fmt: skip
            sys.stdout.write(estimate.render() + "\n")
            check_plan(estimate)
        except PlanError as err:
            fail(str(err), EXIT_BAD_INPUT)
        return
    if out is None:
        fail("--out is required (the checkpoint folder); or pass --plan", EXIT_BAD_INPUT)
    from pipeline.train.trainer import TrainError, TrainOptions
    from pipeline.train.trainer import train as run_train

    options = TrainOptions(steps=steps, batch_size=batch_size, grad_accum=grad_accum, lr=lr, trainable=trainable,
                           spk_emb=spk_emb, save_every=save_every, log_every=max(log_every, 1), device=device,
                           bf16=bf16, grad_checkpointing=grad_checkpointing, eval_fraction=eval_fraction,
                           eval_every=eval_every)  # fmt: skip

    def on_log(r: dict[str, float]) -> None:
        evaluated = f"  eval {r['eval_text_loss']:.4f} / {r['eval_unit_loss']:.4f}" if "eval_text_loss" in r else ""
        console.print(f"step {r['step']:>6}  text_loss {r['text_loss']:.4f}  unit_loss {r['unit_loss']:.4f}  "
                      f"{r['samples_per_s']:.1f} samples/s{evaluated}", highlight=False)  # fmt: skip

    try:
        result = run_train(data_dir, out, config, options, model_paths=paths, on_log=on_log, init_from=init_from,
                           save_opens2s=save_opens2s)  # fmt: skip
    except TrainError as err:
        fail(str(err), EXIT_BAD_INPUT)
    except KeyboardInterrupt:
        fail(f"interrupted; re-run the same command to resume from the last checkpoint in {out}", EXIT_INTERRUPTED)
    if os.environ.get("RANK", "0") == "0":
        how = f"resumed at step {result.start_step}, " if result.resumed else ""
        Console().print(f"wrote {result.checkpoint} ({how}step {result.step}, {result.samples_per_s:.1f} samples/s, "
                        f"{result.world} process(es))")  # fmt: skip


@app.command()
def export(
    data_dir: Annotated[Path, typer.Argument(help="A build's output folder.")],
    out: Annotated[Path, typer.Option("--out", help="The .jsonl file to write (assets go next to it).")],
    fmt: Annotated[str, typer.Option("--format", help="opens2s-jsonl (upstream `messages`).")] = "opens2s-jsonl",
    spk_emb: Annotated[str, typer.Option("--spk-emb", help="spk_emb files: code, zeros or none (empty).")] = "code",
) -> None:
    """Export the kept dialogues to the upstream OpenS2S training JSONL."""
    from pipeline.train.export import FORMATS, ExportError, export_opens2s_jsonl

    if fmt not in FORMATS:
        fail(f"--format {fmt!r}: choose one of {', '.join(FORMATS)}", EXIT_BAD_INPUT)
    try:
        result = export_opens2s_jsonl(data_dir, out, spk_emb)
    except ExportError as err:
        fail(str(err), EXIT_BAD_INPUT)
    Console().print(
        f"wrote {result.jsonl}: {result.dialogues} dialogues, {result.audio_files} audio files and "
        f"{result.spk_files} spk_emb files in {result.assets}; speech units from {', '.join(result.codebooks)}"
    )


# --- review, report and stats (issue 6) ---


def _build_output(out: Path) -> Any:
    """The build output at `out`, or one `error:` line and exit 2."""
    from pipeline.review.dataset import BuildOutput, NotABuildOutputError

    try:
        return BuildOutput(out)
    except NotABuildOutputError as err:
        fail(str(err), EXIT_BAD_INPUT)


def _step_progress() -> tuple[Progress, Any]:
    """A progress bar for steps that report (step, done, total); returns it and its update callback."""
    progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), console=console)
    tasks: dict[str, Any] = {}

    def update(step: str, done: int, total: int) -> None:
        if step not in tasks:
            tasks[step] = progress.add_task(step, total=total)
        progress.update(tasks[step], completed=done, total=total)

    return progress, update


@app.command()
def review(
    out: Annotated[Path, typer.Argument(help="A build's output folder.")],
    host: Annotated[str, typer.Option(help="Address to bind; anything but loopback exposes the page.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port (0: any free port).")] = 8765,
    annotator: Annotated[str, typer.Option(help="Default annotator name shown on the page.")] = "",
    size: Annotated[int, typer.Option(min=1, help="Default queue size (the page can change it).")] = 20,
    seed: Annotated[int, typer.Option(help="Default sampling seed (the page can change it).")] = 0,
) -> None:
    """Serve the annotators' review page over OUT (judgements go to OUT/review/judgements.sqlite)."""
    from pipeline.review.server import ReviewApp, ReviewHTTPServer

    build = _build_output(out)
    progress, update = _step_progress()
    with progress:
        build.samples(lambda done, total: update("reading shards", done, total))
    try:
        server = ReviewHTTPServer(ReviewApp(build, annotator, size, seed), host, port)
    except OSError as err:
        fail(
            f"cannot listen on {host}:{port} ({err.strerror}); pass another --port (0 picks a free one)", EXIT_BAD_INPUT
        )
    if host not in ("127.0.0.1", "localhost", "::1"):
        console.print(f"[yellow]warning:[/] listening on {host}: anyone who reaches this address can judge samples")
    Console().print(f"review page: {server.url}  (Ctrl-C stops; judgements in {server.app.store.path})")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        console.print("stopped")
    finally:
        server.server_close()


@app.command("review-export")
def review_export(
    out: Annotated[Path, typer.Argument(help="A build's output folder with judgements.")],
    to: Annotated[Path, typer.Option("--out", help="Parquet file to write.")],
) -> None:
    """Export every annotator's judgements of OUT to a Parquet file."""
    from pipeline.review.db import JudgementStore

    build = _build_output(out)
    store = JudgementStore(build.root, create=False)
    if not store.exists:
        fail(f"no judgements in {store.path}; annotate first with `opens2s-data review {out}`", EXIT_BAD_INPUT)
    try:
        rows = store.export_parquet(to)
    except OSError as err:
        fail(f"cannot write {to} ({err.strerror or err}); choose a writable --out path", EXIT_FAILED)
    Console().print(f"wrote {to} ({rows} judgement(s))")


@app.command()
def report(
    out: Annotated[Path, typer.Argument(help="A build's output folder.")],
    samples: Annotated[int, typer.Option(min=0, help="Dialogues embedded with playable audio.")] = 3,
    seed: Annotated[int, typer.Option(help="Seed of the embedded samples' stratified draw.")] = 0,
) -> None:
    """Write OUT/report.html: coverage, durations, WER, emotion confusion, rejections, throughput, samples."""
    from pipeline.review.report import build_report

    _build_output(out)
    progress, update = _step_progress()
    try:
        with progress:
            path, _ = build_report(out, samples=samples, seed=seed, on_progress=update)
    except OSError as err:
        fail(f"cannot write the report into {out} ({err.strerror or err}); make the folder writable", EXIT_FAILED)
    Console().print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")


@app.command()
def stats(
    out: Annotated[Path, typer.Argument(help="A build's output folder.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")] = False,
) -> None:
    """Print the build's numbers (and the review's acceptance per stratum) as tables or JSON."""
    import json

    from pipeline.review.stats import compute_stats, stats_tables

    build = _build_output(out)
    numbers = compute_stats(build)
    if as_json:
        sys.stdout.write(json.dumps(numbers, indent=2) + "\n")
        return
    terminal = Console()
    for table in stats_tables(numbers):
        terminal.print(table)


def main() -> None:
    """Entry point of the console script."""
    app()


if __name__ == "__main__":
    main()
