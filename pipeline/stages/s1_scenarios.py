"""Stage 1: seeded scenario sampling (topic, situation, persona, emotion, speaker)."""

from __future__ import annotations

import math
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


def stratified_cell(index: int, n_emotions: int, n_topics: int, seed: int) -> tuple[int, int]:
    """The (emotion, topic) cell of dialogue `index` in a seeded stratified design.

    Indices go round the E x T grid in rounds of E*T. Within a round, position k takes emotion
    k mod E and topic (k + k // lcm(E, T)) mod T: every cell appears exactly once per round, every
    E consecutive indices cover all emotions and every T consecutive indices all topics, so any
    prefix of the run is balanced over both. Each round relabels emotions and topics with its own
    seeded permutation.
    """
    round_no, k = divmod(index, n_emotions * n_topics)
    emotion_order = np.random.default_rng([seed, 1, round_no]).permutation(n_emotions)
    topic_order = np.random.default_rng([seed, 4, round_no]).permutation(n_topics)
    e = k % n_emotions
    t = (k + k // math.lcm(n_emotions, n_topics)) % n_topics
    return int(emotion_order[e]), int(topic_order[t])


def balance_report(cells: dict[str, int], emotions: list[str], topics: list[str], tolerance: float) -> dict[str, Any]:
    """How far the kept dialogues' emotion and topic distributions are from the recipe's uniform target.

    `cells` counts kept dialogues per "emotion|topic". The measure is the total-variation distance
    (half the L1 distance, 0 = on target, 1 = disjoint) of each marginal from uniform; the run is
    within tolerance when both are at most `tolerance`.
    """
    total = sum(cells.values())
    by_emotion = dict.fromkeys(emotions, 0)
    by_topic = dict.fromkeys(topics, 0)
    for cell, n in cells.items():
        emotion, topic = cell.split("|", 1)
        by_emotion[emotion] = by_emotion.get(emotion, 0) + n
        by_topic[topic] = by_topic.get(topic, 0) + n

    def tv(counts: dict[str, int], support: list[str]) -> float:
        if not total:
            return 0.0
        return 0.5 * sum(abs(counts.get(x, 0) / total - 1 / len(support)) for x in set(support) | set(counts))

    emotion_tv, topic_tv = tv(by_emotion, emotions), tv(by_topic, topics)
    return {
        "kept": total,
        "emotion_tv": round(emotion_tv, 4),
        "topic_tv": round(topic_tv, 4),
        "tolerance": tolerance,
        "within_tolerance": max(emotion_tv, topic_tv) <= tolerance,
        "cells_covered": sum(1 for n in cells.values() if n),
        "cells": len(emotions) * len(topics),
    }


class ScenarioSampler:
    """Builds dialogue `index` from the catalogs; the same seed and index give the same scenario.

    Emotion and topic come from a stratified design over the emotion x topic grid
    (`stratified_cell`); intensities and speakers are shuffled cycles so that every value appears
    equally often; situations, personas and the assistant voice are drawn at random.
    """

    name = "scenarios"

    def __init__(self, ctx: BuildContext) -> None:
        self.ctx = ctx

    def scenario(self, index: int) -> Scenario:
        """The scenario of dialogue `index`."""
        recipe, cat = self.ctx.recipe, self.ctx.catalogs
        seed, cfg = recipe.seed, recipe.scenarios
        rng = np.random.default_rng([seed, index])
        emotion, topic_no = stratified_cell(index, len(cfg.emotions), len(cat.topics), seed)
        topic = cat.topics[topic_no]
        return Scenario(
            topic=topic.name,
            situation=topic.situations[int(rng.integers(len(topic.situations)))],
            persona=cat.personas[int(rng.integers(len(cat.personas)))],
            emotion=str(cfg.emotions[emotion]),
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
