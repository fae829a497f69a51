"""`opens2s-data check`: try every stage of a recipe on 2 scenarios before a long build.

The check runs what the build would, at the scale of a smoke test: it validates the recipe and lists
every missing model path, package or key at once (`build.check_inputs`), starts the LLM endpoint,
then starts one actor per stage with the recipe's resources (CPUs, GPUs, runtime_env) on the Ray
cluster the build would use, pushes the scenarios through the stages in flow order, and reports per
stage: backend and versions, interpreter, load seconds, seconds per item and the outcome. The
estimate of the full build's time scales the slowest stage's measured rate by the recipe's
dialogue count and that stage's pool size (stages run concurrently in the build).
"""

from __future__ import annotations

import functools
import pickle
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from pipeline.build import STAGES, _stage_options, _units_manifest, check_inputs, llm_endpoint, ray_session
from pipeline.failfast import stage_backend
from pipeline.recipe import Recipe, load_recipe
from pipeline.records import Dialogue
from pipeline.stages.base import BuildContext, RayStage, to_batch
from pipeline.stages.s1_scenarios import ScenarioSampler
from pipeline.stages.s2_dialogue import WrittenTurn, add_turns

# Packages whose versions shape a stage's output, by the backend the recipe chose (those installed in
# the stage's interpreter are shown).
_PACKAGES = {
    ("llm", "embedded"): ("openai", "xllamacpp"),
    ("llm", "openai"): ("openai",),
    ("llm", "ray-vllm"): ("vllm", "ray"),
    ("tts", "espeak"): ("espeakng-loader",),
    ("tts", "cosyvoice2"): ("torch", "torchaudio", "transformers"),
    ("asr", "faster-whisper"): ("faster-whisper", "ctranslate2", "jiwer"),
    ("asr", "funasr"): ("funasr", "torch", "jiwer"),
    ("emotion", "prosody"): ("praat-parselmouth",),
    ("emotion", "emotion2vec"): ("funasr",),
    ("units", "kmeans"): ("numpy",),
    ("units", "glm4voice"): ("transformers", "torch"),
}


def stage_packages(recipe: Recipe, stage: str) -> tuple[str, ...]:
    """The distributions whose versions matter for `stage` under this recipe."""
    chosen = {
        "scenarios": [],
        "dialogue": [("llm", recipe.llm.backend)],
        "tts": [("tts", recipe.tts.backend)],
        "gates": [("asr", recipe.asr.backend)]
        + ([("emotion", recipe.gates.emotion_backend)] if recipe.gates.emotion_check else []),
        "units": [("units", recipe.units.backend)],
    }[stage]
    return tuple(dict.fromkeys(name for key in chosen for name in _PACKAGES[key]))


_MODEL_FIELD = {"dialogue": "llm_model", "tts": "tts_backend", "gates": "asr_backend", "units": "units_codebook"}


@dataclass
class StageReport:
    """What the check measured for one stage."""

    stage: str
    backend: str = ""
    versions: dict[str, str] = field(default_factory=dict)
    interpreter: str = ""
    load_s: float = 0.0
    item_s: float = 0.0
    outcome: str = "not reached"
    ok: bool = False


@dataclass
class CheckResult:
    """Every stage's report and the estimated time of the full build."""

    recipe: Recipe
    stages: list[StageReport]
    estimate_s: float = 0.0
    bottleneck: str = ""

    @property
    def ok(self) -> bool:
        """True when every stage loaded and handled the items without an error."""
        return all(s.ok for s in self.stages)


class StageProbe:
    """A Ray actor around one stage: times its set-up and each item, and reports its environment."""

    def __init__(
        self, factory: Callable[[], Callable[[dict[str, Any]], dict[str, Any]]], packages: tuple[str, ...]
    ) -> None:
        started = time.perf_counter()
        self.runner = factory()
        self.load_s = time.perf_counter() - started
        self.packages = packages

    def info(self) -> dict[str, Any]:
        """Load seconds, set-up error (if any), interpreter and installed package versions."""
        versions = {}
        for name in self.packages:
            try:
                versions[name] = metadata.version(name)
            except metadata.PackageNotFoundError:
                pass
        error = getattr(self.runner, "setup_error", "")
        return {"load_s": self.load_s, "setup_error": error, "python": sys.executable, "versions": versions}

    def run(self, batch: dict[str, Any]) -> tuple[dict[str, Any], float]:
        """Run one batch; returns it and the seconds it took."""
        started = time.perf_counter()
        out = self.runner(batch)
        return out, time.perf_counter() - started


def _outcome(stage: str, dialogues: list[Dialogue], setup_error: str) -> tuple[str, bool]:
    """The stage's verdict over the items it handled, and whether it works."""
    if setup_error:
        return f"error: {setup_error}", False
    mine = [d.reject for d in dialogues if d.reject and d.reject.stage == stage]
    errors = [r.detail for r in mine if r.reason.endswith("_error")]
    if errors:
        return f"error: {errors[0]}", False
    rejected = Counter(r.reason for r in mine)
    kept = sum(1 for d in dialogues if d.kept)
    if not rejected:
        return f"ok ({kept} of {len(dialogues)} kept)", True
    reasons = ", ".join(f"{reason} x{n}" for reason, n in rejected.items())
    return f"ok ({kept} of {len(dialogues)} kept; rejected: {reasons})", True


PROBE_TEXTS = (
    "I just found out that my flight was cancelled and I do not know what to do now.",
    "That sounds really stressful. Let us look at the next flights together.",
)


def _next_items(dialogues: list[Dialogue], stage: str, ctx: BuildContext) -> tuple[list[Dialogue], str]:
    """Items for the next stage: the kept ones; else, when the dialogue writer rejected them all,
    the same scenarios with two fixed probe sentences (so the audio stages are still tried)."""
    kept = [d for d in dialogues if d.kept]
    if kept or stage != "dialogue":
        return kept, ""
    for d in dialogues:
        d.reject, d.turns = None, []
        style = ctx.catalogs.emotions[d.scenario.emotion].assistant_style
        add_turns(d, [WrittenTurn(text) for text in PROBE_TEXTS[: 2 * d.scenario.num_exchanges]], style)
    return dialogues, " (on fixed probe sentences: the dialogue writer rejected both scenarios)"


def _short_scenarios(ctx: BuildContext, items: int) -> list[int]:
    """Indices of the first `items` scenarios with the fewest exchanges (quick to probe)."""
    sampler = ScenarioSampler(ctx)
    fewest = ctx.recipe.scenarios.min_exchanges
    found = [i for i in range(200) if sampler.scenario(i).num_exchanges == fewest][:items]
    return found or list(range(items))


def run_check(
    recipe_path: str | Path,
    ray_address: str | None = None,
    items: int = 2,
    on_stage: Callable[[StageReport], None] | None = None,
) -> CheckResult:
    """Check RECIPE end to end on `items` scenarios. Raises RecipeError (with every missing input) or
    BuildError (unusable LLM endpoint) before starting anything else."""
    import ray

    recipe_path = Path(recipe_path)
    recipe = load_recipe(recipe_path)
    catalogs = check_inputs(recipe, recipe_path)
    flow = [("scenarios", ScenarioSampler), *(STAGES[:1] if recipe.text_only else STAGES)]
    reports = [StageReport(stage=name) for name, _ in flow]
    with tempfile.TemporaryDirectory(prefix="opens2s-check-") as tmp, llm_endpoint(recipe) as base_url:
        out_dir = Path(tmp)
        if not recipe.text_only:
            _units_manifest(recipe, catalogs, out_dir)
        ctx = BuildContext(recipe=recipe, catalogs=catalogs, out_dir=out_dir, llm_base_url=base_url)
        with ray_session(recipe, ray_address):
            # All actors start at once (as in the build), so model loading overlaps the LLM's work.
            actors = []
            for name, cls in flow:
                if name == "dialogue" and recipe.llm.backend == "ray-vllm":
                    actors.append(None)  # its vLLM engines are started by ray.data.llm (_vllm_dialogues)
                    continue
                options = _stage_options(recipe, name)
                remote = {k: options[k] for k in ("num_cpus", "num_gpus", "runtime_env") if k in options}
                factory: Any = (
                    functools.partial(ScenarioSampler, ctx)
                    if cls is ScenarioSampler
                    else functools.partial(RayStage, cls, ctx)
                )
                probe = ray.remote(StageProbe).options(**remote)  # type: ignore[attr-defined]
                actors.append(probe.remote(factory, stage_packages(recipe, name)))
            try:
                _probe_stages(ctx, flow, actors, reports, _short_scenarios(ctx, items), on_stage)
            finally:
                for actor in actors:
                    if actor is not None:
                        ray.kill(actor)
    result = CheckResult(recipe=recipe, stages=reports)
    # The probe dialogues have the fewest exchanges; the build's average dialogue has more.
    longer = (recipe.scenarios.min_exchanges + recipe.scenarios.max_exchanges) / 2 / recipe.scenarios.min_exchanges
    timed = [
        (r.item_s * (1 if r.stage == "scenarios" else longer) * recipe.num_dialogues / _pool(recipe, r.stage), r)
        for r in reports
    ]
    if all(r.ok for r in reports) and timed:
        slowest, report = max(timed, key=lambda t: t[0])
        result.estimate_s = slowest + max(r.load_s for r in reports)
        result.bottleneck = report.stage
    return result


def _pool(recipe: Recipe, stage: str) -> int:
    return getattr(recipe.resources, stage).concurrency


def _probe_stages(
    ctx: BuildContext,
    flow: list[tuple[str, Any]],
    actors: list[Any],
    reports: list[StageReport],
    indices: list[int],
    on_stage: Callable[[StageReport], None] | None,
) -> None:
    """Push the scenarios through the stages in flow order, filling each stage's report."""
    import ray

    # All items go to a stage as one batch, as in the build (a dialogue actor writes them concurrently
    # up to llm.max_concurrency); seconds per item = the batch's seconds / items.
    batch: dict[str, Any] = {"index": indices}
    note = ""
    for report, (name, _), actor in zip(reports, flow, actors, strict=True):
        report.backend = stage_backend(ctx.recipe, name)
        if actor is None:  # ray-vllm: engine start-up and the items are timed together
            dialogues, seconds = _vllm_dialogues(ctx, batch)
            info = {"setup_error": "", "python": "ray.data.llm vLLM engines", "versions": {}}
            report.interpreter, report.item_s = info["python"], seconds / len(indices)
            report.versions = {"vllm": metadata.version("vllm")}
        else:
            info = ray.get(actor.info.remote())
            report.load_s, report.interpreter, report.versions = info["load_s"], info["python"], info["versions"]
            out, seconds = ray.get(actor.run.remote(batch))
            dialogues = [pickle.loads(blob) for blob in out["record"]]
            report.item_s = seconds / max(len(dialogues), 1)
        model = _MODEL_FIELD.get(name)
        names = sorted({getattr(d, model) for d in dialogues if model and getattr(d, model)})
        report.backend += f" [{', '.join(names)}]" if names else ""
        report.outcome, report.ok = _outcome(name, dialogues, info["setup_error"])
        report.outcome += note
        if on_stage:
            on_stage(report)
        if not report.ok:
            return
        dialogues, why = _next_items(dialogues, name, ctx)
        note = note or why
        if not dialogues:
            report.outcome += "; nothing left for the next stage"
            report.ok = False
            return
        batch = to_batch(dialogues)


def _vllm_dialogues(ctx: BuildContext, batch: dict[str, Any]) -> tuple[list[Dialogue], float]:
    """The dialogue stage of a ray-vllm recipe on the probe rows (as the build runs it); returns the
    dialogues and the seconds it took, vLLM engine start-up included."""
    import ray

    from pipeline.adapters.llm_ray_vllm import ray_vllm_dialogues

    started = time.perf_counter()
    rows = [
        {"id": i, "shard": int(k), "record": r}
        for i, k, r in zip(batch["id"], batch["shard"], batch["record"], strict=True)
    ]
    out = ray_vllm_dialogues(ray.data.from_items(rows), ctx).take_all()
    return [pickle.loads(row["record"]) for row in out], time.perf_counter() - started
