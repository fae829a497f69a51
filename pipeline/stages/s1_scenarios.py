"""Stage 1: seeded scenario sampling (topic, situation, persona, emotion, speaker)."""

from __future__ import annotations

from typing import Any

import numpy as np

from pipeline.records import Dialogue, Scenario, dialogue_id
from pipeline.stages.base import BuildContext, to_batch


def _cycled(items: tuple | list, seed: int, salt: int, index: int) -> object:
    """Item `index` of a seeded shuffled cycle: every item appears once per round."""
    n = len(items)
    round_no, pos = divmod(index, n)
    order = np.random.default_rng([seed, salt, round_no]).permutation(n)
    return items[int(order[pos])]


class ScenarioSampler:
    """Builds dialogue `index` from the catalogs; the same seed and index give the same scenario.

    Emotions, intensities and speakers are drawn as shuffled cycles so that every value appears
    equally often; topics, situations and personas are drawn at random.
    """

    name = "scenarios"

    def __init__(self, ctx: BuildContext) -> None:
        self.ctx = ctx

    def scenario(self, index: int) -> Scenario:
        """The scenario of dialogue `index`."""
        recipe, cat = self.ctx.recipe, self.ctx.catalogs
        seed, cfg = recipe.seed, recipe.scenarios
        rng = np.random.default_rng([seed, index])
        topic = cat.topics[int(rng.integers(len(cat.topics)))]
        return Scenario(
            topic=topic.name,
            situation=topic.situations[int(rng.integers(len(topic.situations)))],
            persona=cat.personas[int(rng.integers(len(cat.personas)))],
            emotion=str(_cycled(cfg.emotions, seed, 1, index)),
            intensity=str(_cycled(cfg.intensities, seed, 2, index // len(cfg.emotions))),
            speaker_id=_cycled(cat.speakers, seed, 3, index).id,
            assistant_speaker_id=cat.assistants[int(rng.integers(len(cat.assistants)))].id,
            num_exchanges=int(rng.integers(cfg.min_exchanges, cfg.max_exchanges + 1)),
        )

    def new(self, index: int) -> Dialogue:
        """A fresh dialogue record for `index` with its scenario filled in."""
        recipe = self.ctx.recipe
        return Dialogue(
            id=dialogue_id(recipe.seed, index),
            index=index,
            shard=index // recipe.shard_size,
            seed=recipe.seed,
            scenario=self.scenario(index),
        )

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Ray Data entry: a batch of dialogue indices becomes a batch of new dialogues."""
        return to_batch([self.new(int(i)) for i in batch["index"]])
