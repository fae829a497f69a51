"""Stratified random sampling of review queues: strata are target emotion x user speaker."""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Sequence

from pipeline.review.dataset import Sample


def filter_samples(
    samples: Sequence[Sample], emotion: str = "", speaker: str = "", status: str = "kept"
) -> list[Sample]:
    """Samples matching the filters; empty strings match anything, `status` is kept, rejected or all."""
    if status not in ("kept", "rejected", "all"):
        raise ValueError(f"status must be kept, rejected or all, not {status!r}")
    return [
        s
        for s in samples
        if (not emotion or s.emotion == emotion)
        and (not speaker or s.speaker_id == speaker)
        and (status == "all" or s.status == status)
    ]


def stratified_sample(samples: Sequence[Sample], size: int, seed: int) -> list[Sample]:
    """Draw `size` samples, spreading them over the emotion x speaker strata; same seed, same queue.

    Equal allocation: within every stratum the samples are shuffled; strata are ordered so that
    consecutive strata cycle through the emotions (each emotion's speakers shuffled); then one sample
    is taken from each stratum in that order, round after round, until `size` are drawn. So the first
    queue items cover as many emotions, then speakers, as possible, and no stratum gets a second
    sample before every stratum has one.
    """
    rng = random.Random(seed)
    strata: dict[tuple[str, str], list[Sample]] = defaultdict(list)
    for s in sorted(samples, key=lambda s: s.id):
        strata[(s.emotion, s.speaker_id)].append(s)
    for members in strata.values():
        rng.shuffle(members)
    by_emotion: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for key in sorted(strata):
        by_emotion[key[0]].append(key)
    emotions = sorted(by_emotion)
    rng.shuffle(emotions)
    for keys in by_emotion.values():
        rng.shuffle(keys)
    order: list[tuple[str, str]] = []
    for depth in range(max((len(k) for k in by_emotion.values()), default=0)):
        order += [by_emotion[e][depth] for e in emotions if depth < len(by_emotion[e])]
    queue: list[Sample] = []
    for round_ in range(max((len(m) for m in strata.values()), default=0)):
        for key in order:
            if len(queue) >= size:
                return queue
            if round_ < len(strata[key]):
                queue.append(strata[key][round_])
    return queue
