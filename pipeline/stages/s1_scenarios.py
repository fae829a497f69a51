"""Stage 1: seeded scenario sampling (topic, situation, persona, emotion, speaker)."""

from __future__ import annotations

import math
from collections import Counter
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


def balance_report(kept: dict[str, int], requested: dict[str, int], tolerance: float) -> dict[str, Any]:
    """How far rejections pushed the kept dialogues' emotion and topic shares off the design.

    `kept` and `requested` count dialogues per "emotion|topic" cell; the requested counts follow the
    stratified design (balanced by construction). For each emotion, and each topic, the measure is
    the absolute difference between its share of the kept and of the requested dialogues; the run is
    within tolerance when the largest difference is at most `tolerance`.
    """

    def shares(cells: dict[str, int], part: int) -> dict[str, float]:
        out: Counter[str] = Counter()
        for cell, n in cells.items():
            out[cell.split("|", 1)[part]] += n
        total = sum(out.values())
        return {k: v / total for k, v in out.items()} if total else {}

    def max_dev(part: int) -> float:
        a, b = shares(kept, part), shares(requested, part)
        return max((abs(a.get(x, 0.0) - b.get(x, 0.0)) for x in set(a) | set(b)), default=0.0)

    emotion_dev, topic_dev = max_dev(0), max_dev(1)
    return {
        "kept": sum(kept.values()),
        "requested": sum(requested.values()),
        "emotion_max_share_diff": round(emotion_dev, 4),
        "topic_max_share_diff": round(topic_dev, 4),
        "tolerance": tolerance,
        "within_tolerance": max(emotion_dev, topic_dev) <= tolerance,
        "cells_requested": len(requested),
        "cells_kept": sum(1 for n in kept.values() if n),
    }


class ScenarioSampler:
    """Builds dialogue `index` from the catalogs; the same seed and index give the same scenario.

    Emotion and topic come from a stratified design over the emotion x topic grid
    (`stratified_cell`); a cell whose topic has no situation tagged with the emotion takes, instead,
    the next of a seeded cycle over the topics that have one (so emotions stay exactly balanced and
    every plausible cell is visited once per round), and the situation is drawn among those that fit
    the emotion; intensities are a shuffled cycle so that every value appears equally often;
    situations, personas and the assistant voice are drawn at random, and the user's voice is a
    shuffled cycle over the voices that fit the persona's gender and age group (`Catalogs.voices_for`).
    """

    name = "scenarios"

    def __init__(self, ctx: BuildContext) -> None:
        self.ctx = ctx

    def scenario(self, index: int) -> Scenario:
        """The scenario of dialogue `index`."""
        recipe, cat = self.ctx.recipe, self.ctx.catalogs
        seed, cfg = recipe.seed, recipe.scenarios
        rng = np.random.default_rng([seed, index])
        emotion_no, topic_no = stratified_cell(index, len(cfg.emotions), len(cat.topics), seed)
        emotion = str(cfg.emotions[emotion_no])
        topic = cat.topics[topic_no]
        if not topic.situations_for(emotion):  # an implausible cell: another topic that fits the emotion
            fitting = [t for t in cat.topics if t.situations_for(emotion)]
            topic = _cycled(fitting, seed, 6 + emotion_no, index // len(cfg.emotions))
        situations = topic.situations_for(emotion)
        situation = situations[int(rng.integers(len(situations)))]
        persona = cat.personas[int(rng.integers(len(cat.personas)))]
        voices = cat.voices_for(persona)  # never empty: load_catalogs keeps only personas some voice fits
        return Scenario(
            topic=topic.name,
            situation=situation.text,
            persona=persona,
            emotion=emotion,
            intensity=str(_cycled(cfg.intensities, seed, 2, index // len(cfg.emotions))),
            speaker_id=_cycled(voices, seed, 3, index).id,
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
