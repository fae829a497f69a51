"""The near-duplicate index on disk: same verdicts as datasketch's in-memory LSH, durable, exact on resume."""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

from pipeline.records import Dialogue, Scenario, Turn
from pipeline.stages.s6_dedup import NUM_PERM, NearDuplicateFilter, shingles


def _dialogue(index: int, text: str) -> Dialogue:
    scenario = Scenario("t", "s", None, "sad", "low", "spk-01", "asst-1", 1)  # type: ignore[arg-type]
    d = Dialogue(id=f"dlg-0-{index:06d}", index=index, shard=0, seed=0, scenario=scenario)
    d.turns = [Turn(f"{d.id}-t01", "user", text, "sad", "low", "spk-01")]
    return d


def _texts(n: int, seed: int = 0) -> list[str]:
    """Random 25-word texts over a small vocabulary, a third of them one-word edits of an earlier one."""
    rng = random.Random(seed)
    vocab = [f"w{i}" for i in range(300)]
    texts: list[str] = []
    for _ in range(n):
        if len(texts) > 10 and rng.random() < 0.3:
            words = rng.choice(texts).split()
            words[rng.randrange(len(words))] = rng.choice(vocab)
            texts.append(" ".join(words))
        else:
            texts.append(" ".join(rng.choice(vocab) for _ in range(25)))
    return texts


def test_candidates_are_exactly_datasketch_lsh() -> None:
    from datasketch import MinHash, MinHashLSH

    dedup = NearDuplicateFilter(0.5)
    lsh = MinHashLSH(threshold=0.35, num_perm=NUM_PERM)
    for i, text in enumerate(_texts(300)):
        sh = shingles([text])
        m = MinHash(num_perm=NUM_PERM, seed=1)
        m.update_batch([int(x).to_bytes(8, "big") for x in sh])
        ours = {key for key, _ in dedup.store.candidates(dedup._band_keys(sh))}
        assert ours == set(lsh.query(m)), i
        lsh.insert(f"dlg-0-{i:06d}", m)
        dedup.add(f"dlg-0-{i:06d}", [text])


def test_index_on_disk_gives_the_same_verdicts_and_survives_reopening(tmp_path: Path) -> None:
    texts = _texts(200, seed=1)
    memory = NearDuplicateFilter(0.5)
    expected = [memory.apply(_dialogue(i, t)).kept for i, t in enumerate(texts)]
    assert 0 < expected.count(False) < len(texts)  # the filter really fires on this data

    path = tmp_path / "dedup" / "index.sqlite"
    first = NearDuplicateFilter(0.5, path)
    got = [first.apply(_dialogue(i, t)).kept for i, t in enumerate(texts[:120])]
    first.commit()
    first.store.close()
    reopened = NearDuplicateFilter(0.5, path)
    assert not reopened.store.is_new and len(reopened.store) == got.count(True)
    got += [reopened.apply(_dialogue(i, t)).kept for i, t in enumerate(texts[120:], start=120)]
    assert got == expected


_CRASH = """
import os, sys
from pathlib import Path
sys.path.insert(0, {tests!r})
from test_dedup_index import _dialogue, _texts
from pipeline.stages.s6_dedup import NearDuplicateFilter
texts = _texts(30, seed=2)
dedup = NearDuplicateFilter(0.5, Path({path!r}))
for i, text in enumerate(texts[:10]):
    dedup.apply(_dialogue(i, text))
dedup.commit()
for i, text in enumerate(texts[10:20], start=10):
    dedup.apply(_dialogue(i, text))
os._exit(9)  # killed before the second commit
"""


def test_uncommitted_and_forgotten_dialogues_are_not_in_the_index(tmp_path: Path) -> None:
    path = tmp_path / "index.sqlite"
    code = _CRASH.format(tests=str(Path(__file__).parent), path=str(path))
    assert subprocess.run([sys.executable, "-c", code], timeout=120).returncode == 9
    texts = _texts(30, seed=2)
    reopened = NearDuplicateFilter(0.5, path)
    assert [reopened.store.contains(i) for i in range(20)] == [True] * 10 + [False] * 10
    # a resumed run redoes indices 5..9: they leave the index, with their band keys
    reopened.forget([range(5, 8), [8, 9]])  # an unwritten shard (a range) and transient failures (a list)
    assert [reopened.store.contains(i) for i in range(10)] == [True] * 5 + [False] * 5
    assert reopened.apply(_dialogue(7, texts[7])).kept  # no longer a duplicate of itself
    assert not reopened.apply(_dialogue(25, texts[7])).kept  # but a later copy is
