"""Fail fast: stop a build whose stage fails on every item instead of rejecting the whole dataset.

A misconfigured backend (a corrupt model folder, a CosyVoice checkout with another signature, an
emotion model without our labels) turns every dialogue into a `<stage>_error` reject. The monitor
watches the finished dialogues in the driver's write loop:

- probation: until the build has shown that it works (a kept dialogue, an error of another kind or
  enough dialogues), finished dialogues are held back, so no shard is written with them; when the
  first `first_items` outcomes are all the same `<stage>_error`, the build stops before writing any
  of them, and a re-run after the fix resumes as if the failed attempt had never happened;
- afterwards, a sliding window of the last `window` dialogues: when more than `max_error_share` of
  them are `<stage>_error` rejects, the build stops (shards already written are kept).
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Iterator

from pipeline.recipe import Recipe
from pipeline.records import Dialogue


class FailFastError(Exception):
    """A stage failed on too many items; the message names the stage, its backend and the error."""


def stage_backend(recipe: Recipe, stage: str) -> str:
    """The backend the recipe chose for `stage`, as the user wrote it (for messages)."""
    backends = {
        "scenarios": "catalogs",
        "dialogue": f"llm.backend {recipe.llm.backend}",
        "tts": f"tts.backend {recipe.tts.backend}",
        "gates": f"asr.backend {recipe.asr.backend}, gates.emotion_backend {recipe.gates.emotion_backend}",
        "units": f"units.backend {recipe.units.backend}",
    }
    return backends.get(stage, stage)


def _error_of(dialogue: Dialogue) -> str | None:
    """The `<stage>_error` reason of a dialogue that a stage crashed on, else None."""
    reject = dialogue.reject
    if reject is not None and reject.reason.endswith("_error"):
        return reject.reason
    return None


class FailFastMonitor:
    """Watches finished dialogues; raises FailFastError when a stage fails on (nearly) every item."""

    def __init__(self, recipe: Recipe) -> None:
        cfg = recipe.fail_fast
        self.recipe = recipe
        self.first_items = cfg.first_items
        self.window: deque[str | None] = deque(maxlen=cfg.window)
        self.max_error_share = cfg.max_error_share
        self.settled = cfg.first_items == 0
        self._held: list[Dialogue] = []
        self._streak: list[Dialogue] = []
        self._recent_errors: deque[Dialogue] = deque(maxlen=cfg.window)  # the failed dialogues of the window

    def watch(self, stream: Iterator[Dialogue]) -> Iterator[Dialogue]:
        """Yield the dialogues of `stream`, holding them back during probation; raise on a failing stage."""
        for dialogue in stream:
            self.observe(dialogue)
            if self.settled:
                yield from self._held
                self._held.clear()
                yield dialogue
            else:
                self._held.append(dialogue)
        yield from self._held  # a build shorter than the probation
        self._held.clear()

    def observe(self, dialogue: Dialogue) -> None:
        """Account for one finished dialogue; raise FailFastError if its stage looks broken."""
        error = _error_of(dialogue)
        self.window.append(error)
        if error is not None:
            self._recent_errors.append(dialogue)
        if not self.settled:
            self._probation(dialogue, error)
            return
        errors = Counter(e for e in self.window if e is not None)
        if len(self.window) == self.window.maxlen and sum(errors.values()) / len(self.window) > self.max_error_share:
            reason = errors.most_common(1)[0][0]
            sample = next(d for d in reversed(self._recent_errors) if _error_of(d) == reason)
            self._stop(sample, f"{sum(errors.values())} of the last {len(self.window)} dialogues failed")

    def _probation(self, dialogue: Dialogue, error: str | None) -> None:
        if dialogue.kept or (error is not None and self._streak and error != _error_of(self._streak[0])):
            self.settled = True
        elif error is not None:
            self._streak.append(dialogue)
            if len(self._streak) >= self.first_items:
                self._stop(dialogue, f"the first {len(self._streak)} dialogues all failed")
        elif len(self._held) + 1 >= 4 * self.first_items:  # only gate rejects so far: stop holding back
            self.settled = True

    def _stop(self, dialogue: Dialogue, what: str) -> None:
        reject = dialogue.reject
        assert reject is not None
        raise FailFastError(
            f"stage {reject.stage} ({stage_backend(self.recipe, reject.stage)}) fails: {what} with "
            f"{reject.reason}: {reject.detail}. Fix the backend and re-run the same command: completed shards "
            "are kept and the build resumes"
        )
