"""One base class per kind of step: a stage turns a Dialogue into a Dialogue.

A stage is a plain Python class (testable without Ray). Anything that loads a model does it in
`setup()`, which Ray runs once per actor. A dialogue a stage rejects keeps travelling with its
`Reject`; later stages pass it through untouched. An unexpected exception inside `process` becomes
a reject with reason `<stage>_error`, so one bad row never kills a batch; the reject is transient
(retried by a resumed build) when the exception is an infrastructure failure (pipeline/failures.py).
"""

from __future__ import annotations

import pickle
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from pipeline.catalogs import Catalogs
from pipeline.failures import classify
from pipeline.recipe import Recipe
from pipeline.records import Dialogue, Reject


@dataclass(frozen=True)
class BuildContext:
    """What every stage may read: the recipe, its catalogs and where the run lives."""

    recipe: Recipe
    catalogs: Catalogs
    out_dir: Path
    llm_base_url: str = ""


class Stage:
    """Base class of every pipeline step; subclasses fill in `process` (and maybe `setup`)."""

    name: ClassVar[str] = "stage"

    def __init__(self, ctx: BuildContext) -> None:
        self.ctx = ctx

    def setup(self) -> None:
        """Load models and open clients; called once per actor before any `process`."""

    def process(self, dialogue: Dialogue) -> Dialogue:
        """Transform one kept dialogue; set `dialogue.reject` to drop it."""
        raise NotImplementedError

    def run_batch(self, dialogues: list[Dialogue]) -> list[Dialogue]:
        """Run a batch (one at a time here; stages that wait on a server override this)."""
        return [self.run(d) for d in dialogues]

    def run(self, dialogue: Dialogue) -> Dialogue:
        """Apply `process` to a kept dialogue; pass rejected ones through; turn crashes into rejects."""
        if not dialogue.kept:
            return dialogue
        started = time.perf_counter()
        try:
            return self.process(dialogue)
        except Exception as err:  # noqa: BLE001 - a failed row travels on as data
            last = traceback.extract_tb(err.__traceback__)[-1]
            dialogue.reject = Reject(
                stage=self.name,
                reason=f"{self.name}_error",
                detail=f"{type(err).__name__}: {err} ({Path(last.filename).name}:{last.lineno})"[:500],
                kind=classify(err),
            )
            return dialogue
        finally:
            dialogue.timings[self.name] = round(time.perf_counter() - started, 4)


class RayStage:
    """Adapter that lets Ray Data run any Stage with map_batches (one instance per actor)."""

    def __init__(self, stage_cls: type[Stage], ctx: BuildContext) -> None:
        import ray

        self.stage = stage_cls(ctx)
        self.node_id = ray.get_runtime_context().get_node_id()
        # A backend that cannot load (a corrupt model folder, a wrong upstream version) fails every
        # item with the load error, so the driver's fail-fast check stops the build with that message
        # (an exception here would make Ray retry the actor or end with an opaque traceback).
        self.setup_error, self.setup_kind = "", "permanent"
        try:
            self.stage.setup()
        except Exception as err:  # noqa: BLE001 - reported on every item instead
            self.setup_error, self.setup_kind = f"setup failed: {type(err).__name__}: {err}"[:500], classify(err)

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Run the stage over a batch of pickled dialogues, noting the node and interpreter it ran on."""
        dialogues = [pickle.loads(blob) for blob in batch["record"]]
        if self.setup_error:
            for dialogue in dialogues:
                if dialogue.kept:
                    name = self.stage.name
                    dialogue.reject = Reject(
                        stage=name, reason=f"{name}_error", detail=self.setup_error, kind=self.setup_kind
                    )
        else:
            dialogues = self.stage.run_batch(dialogues)
        for dialogue in dialogues:
            dialogue.nodes[self.stage.name] = self.node_id
            dialogue.interpreters[self.stage.name] = sys.executable
        return to_batch(dialogues)


def to_batch(dialogues: list[Dialogue]) -> dict[str, Any]:
    """The Ray Data batch layout of the pipeline: id, shard and the pickled record."""
    return {
        "id": np.array([d.id for d in dialogues], dtype=object),
        "shard": np.array([d.shard for d in dialogues], dtype=np.int64),
        "record": np.array([pickle.dumps(d) for d in dialogues], dtype=object),
    }
