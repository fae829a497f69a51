"""In-cluster dialogue writing with `ray.data.llm` and a vLLM engine (`llm.backend: ray-vllm`, GPU clusters).

Instead of calling a server, the build hands the dataset to a Ray Data LLM processor: vLLM engine
replicas on the cluster's GPUs take batches of rows, and the rows stay in Ray's object store the
whole way. Each row asks for a whole dialogue (dialogue mode) constrained by the same JSON schema as
the server path, sent as `sampling_params["structured_outputs"] = {"json": schema}` (what Ray 2.60's
vLLM stage reads). The answer goes through the same parser and text gates as the server path; there
is one attempt per dialogue (no retry budget), and a row the engine failed on
(`__inference_error__`, with `should_continue_on_error`) becomes an `llm_request_failed` reject.

Needs `pip install "ray[llm]==2.60.0"` (which brings vllm) on GPU nodes, and a local model folder.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

from pipeline.failures import classify
from pipeline.records import Reject
from pipeline.stages.base import BuildContext
from pipeline.stages.s2_dialogue import (
    DialogueOut,
    add_turns,
    dialogue_max_tokens,
    dialogue_messages,
    parse_dialogue,
    request_seed,
)
from pipeline.stages.s2_text_gates import InvalidOutput, TextGates

STAGE = "dialogue"


def check_ray_vllm(model_path: str | None) -> None:
    """Raise FileNotFoundError naming the fix if the model folder or `ray[llm]` is missing."""
    if not model_path or not Path(model_path).is_dir():
        raise FileNotFoundError(
            f"llm.model_path: {model_path!r} is not a folder; backend ray-vllm needs a local model folder "
            "(e.g. Qwen3-8B) at the same path on every GPU node"
        )
    try:
        import ray.data.llm  # noqa: F401
        import vllm  # noqa: F401
    except ImportError as err:
        raise FileNotFoundError(
            f'llm.backend ray-vllm needs `pip install "ray[llm]==2.60.0"` on the GPU nodes ({err})'
        ) from None


_GATES: dict[str, TextGates] = {}


def _gates(ctx: BuildContext) -> TextGates:
    """One TextGates per worker process and recipe (its models load on first use)."""
    key = ctx.recipe.fingerprint()
    if key not in _GATES:
        _GATES[key] = TextGates(ctx.recipe.text_gates, ctx.recipe.llm, ctx.catalogs.emotion_sentences)
    return _GATES[key]


class DialogueRequests:
    """Preprocess: a pipeline row becomes a chat request with sampling parameters."""

    def __init__(self, ctx: BuildContext) -> None:
        self.ctx = ctx
        self.schema = DialogueOut.model_json_schema()

    def __call__(self, row: dict[str, Any]) -> dict[str, Any]:
        """Add `messages` and `sampling_params` to a row (its other columns ride along)."""
        dialogue = pickle.loads(row["record"])
        cfg = self.ctx.recipe.llm
        return {
            **row,
            "messages": dialogue_messages(self.ctx.catalogs.prompts, dialogue),
            "sampling_params": {
                "temperature": cfg.temperature,
                "max_tokens": dialogue_max_tokens(cfg, dialogue.scenario.num_exchanges),
                "seed": request_seed(dialogue.id, "dialogue", 0),
                "structured_outputs": {"json": self.schema},
            },
        }


class DialogueResults:
    """Postprocess: the engine's text is parsed, gated and written into the dialogue record."""

    def __init__(self, ctx: BuildContext) -> None:
        self.ctx = ctx

    def __call__(self, row: dict[str, Any]) -> dict[str, Any]:
        """Return the pipeline row (`id`, `shard`, `record`) with turns filled in or a reject set."""
        dialogue = pickle.loads(row["record"])
        dialogue.llm_model = self.ctx.recipe.llm.model
        error = row.get("__inference_error__") or ""
        sc = dialogue.scenario
        if error:
            kind = classify(str(error))  # the engine's error arrives as text: OOM or a lost connection is transient
            dialogue.reject = Reject(stage=STAGE, reason="llm_request_failed", detail=str(error)[:300], kind=kind)
        else:
            try:
                raw = row.get("generated_text") or ""
                written = parse_dialogue(raw, sc.num_exchanges, sc.emotion, _gates(self.ctx), sc.situation)
                add_turns(dialogue, written, self.ctx.catalogs.emotions[sc.emotion].assistant_style)
            except InvalidOutput as err:
                dialogue.reject = Reject(stage=STAGE, reason=err.reason, detail=str(err)[:300])
        return {"id": row["id"], "shard": row["shard"], "record": pickle.dumps(dialogue)}


def ray_vllm_dialogues(ds: Any, ctx: BuildContext) -> Any:
    """Apply the vLLM processor to a dataset of pipeline rows; returns pipeline rows."""
    from ray.data.llm import build_processor, vLLMEngineProcessorConfig

    cfg, res = ctx.recipe.llm, ctx.recipe.resources.dialogue
    config = vLLMEngineProcessorConfig(
        model_source=cfg.model_path,
        engine_kwargs={"max_model_len": 8192, "enable_prefix_caching": True},
        batch_size=max(res.batch_size, cfg.max_concurrency),
        concurrency=res.concurrency,
        should_continue_on_error=True,
    )
    builder_kwargs = {"chat_template_kwargs": cfg.extra_body["chat_template_kwargs"]} if (
        "chat_template_kwargs" in cfg.extra_body
    ) else None  # fmt: skip
    processor = build_processor(
        config,
        preprocess=DialogueRequests(ctx),
        postprocess=DialogueResults(ctx),
        builder_kwargs=builder_kwargs,
    )
    results = DialogueResults(ctx)  # error rows bypass the processor's postprocess: settle them here

    def settle(row: dict[str, Any]) -> dict[str, Any]:
        if row.get("__inference_error__"):
            return results(row)
        return {"id": row["id"], "shard": row["shard"], "record": row["record"]}

    return processor(ds).map(settle)
