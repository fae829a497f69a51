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
    console.print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(code)


def summary_table(totals: dict[str, Any], wall_s: float) -> Table:
    """The end-of-build summary: requested, kept, rejected by reason, audio hours, wall time."""
    table = Table(title="build summary", show_header=True)
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_row("dialogues requested", str(totals["requested"]))
    table.add_row("dialogues kept", str(totals["kept"]))
    table.add_row("dialogues rejected", str(totals["rejected"]))
    for reason, count in totals["rejected_by_reason"].items():
        table.add_row(f"  rejected: {reason}", str(count))
    table.add_row("turns kept", str(totals["turns_kept"]))
    for reason, count in totals["turns_dropped_by_reason"].items():
        table.add_row(f"  turns dropped: {reason}", str(count))
    table.add_row("speakers / emotions kept", f"{len(totals['speakers'])} / {len(totals['emotions'])}")
    table.add_row("audio hours", f"{totals['audio_hours']:.4f}")
    table.add_row("wall time (this run)", f"{wall_s:.1f} s")
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
) -> None:
    """Build (or resume) a dataset from RECIPE into OUT."""
    from pipeline.build import BuildError
    from pipeline.build import build as run_build

    progress = Progress(
        TextColumn("[bold]dialogues"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn(),
        console=console,
    )  # fmt: skip
    task = progress.add_task("build", total=None)

    def on_progress(done: int, total: int, _dialogue: object) -> None:
        progress.update(task, completed=done, total=total)

    try:
        with progress:
            result = run_build(recipe, out, num_dialogues, overwrite, ray_address, on_progress=on_progress)
    except RecipeError as err:
        fail(str(err), EXIT_BAD_INPUT)
    except BuildError as err:
        fail(str(err), EXIT_BAD_INPUT)
    except KeyboardInterrupt:
        fail(f"interrupted; completed shards are kept, re-run the same command to resume into {out}", EXIT_INTERRUPTED)
    except OSError as err:
        fail(f"{err}; completed shards are kept, fix the cause and re-run the same command to resume", EXIT_FAILED)
    Console().print(summary_table(result.totals, result.wall_s))
    crashed = sum(n for reason, n in result.totals["rejected_by_reason"].items() if reason.endswith("_error"))
    if crashed:
        console.print(
            f"[yellow]warning:[/] {crashed} dialogue(s) were rejected because a stage raised an error "
            "(reason *_error); the `detail` column of rejects/ has the exception"
        )
    if result.resumed:
        console.print(f"resumed the run in {out}; {result.shards_written} shard(s) written now")
    if not result.complete:
        fail("the build did not finish every shard; re-run the same command to resume", EXIT_FAILED)


@app.command()
def verify(out: Annotated[Path, typer.Argument(help="A build's output folder.")]) -> None:
    """Check a finished dataset: schemas, audio, ids, counts, units; non-zero exit on problems."""
    from pipeline.verify import verify as run_verify

    problems, counts = run_verify(out)
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
            v = s.voice
            row = (s.id, role, s.gender, s.age_group, s.accent, v.name, v.pitch, v.pitch_range, v.rate)
            table.add_row(*map(str, row))
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

# --- review, report and stats (issue 6) ---


def main() -> None:
    """Entry point of the console script."""
    app()


if __name__ == "__main__":
    main()
