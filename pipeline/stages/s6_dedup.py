"""Near-duplicate removal across the whole dataset (run by the writer, in index order).

A dialogue's text is all its turns joined; its shingles are its lower-cased word 3-grams. Two
dialogues are near-duplicates when the Jaccard similarity of their shingle sets is at least
`text_gates.near_duplicate_jaccard`. MinHash LSH (datasketch) proposes candidates with a lower
threshold, so that it misses almost no true pair, and the exact Jaccard of the stored shingle sets
decides. The writer feeds dialogues in index order, so of two near-duplicates the one with the
higher index is rejected (`near_duplicate`), whatever order the workers finished in. The kept
dialogues are indexed on disk (`pipeline/io/dedup_index.py`), so the driver's memory does not grow
with the dataset and a resumed build reopens the index instead of re-reading its completed shards.
"""

from __future__ import annotations

import functools
import hashlib
import pickle
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.io.dedup_index import DedupStore
from pipeline.records import Dialogue, Reject, dialogue_index
from pipeline.stages.base import to_batch
from pipeline.stages.s2_text_gates import ngrams, words

NUM_PERM = 128


def shingles(texts: Iterable[str]) -> np.ndarray:
    """Sorted unique 64-bit hashes of the word 3-grams of the joined `texts`."""
    grams = ngrams(words(" ".join(texts)))
    hashes = {int.from_bytes(hashlib.blake2b(" ".join(g).encode(), digest_size=8).digest(), "big") for g in grams}
    return np.array(sorted(hashes), dtype=np.uint64)


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """Exact Jaccard similarity of two sorted unique hash arrays."""
    if not len(a) and not len(b):
        return 1.0
    inter = len(np.intersect1d(a, b, assume_unique=True))
    return inter / (len(a) + len(b) - inter)


class NearDuplicateFilter:
    """Rejects later near-duplicates of kept dialogues, with the kept ones indexed in a `DedupStore`.

    The candidates are exactly those of datasketch's `MinHashLSH` at the same threshold (the same
    bands of the same MinHash signatures), so the verdicts do not depend on where the index lives:
    in memory (`path=None`, tests) or in the output folder's `dedup/index.sqlite` (builds), where the
    driver's memory does not grow with the number of kept dialogues.
    """

    def __init__(self, threshold: float, path: Path | None = None) -> None:
        from datasketch import MinHashLSH

        self.threshold = threshold
        # Only the band layout (b bands of r rows) is taken from datasketch's optimum for this threshold.
        self.bands = MinHashLSH(threshold=max(0.05, 0.7 * threshold), num_perm=NUM_PERM).hashranges
        self.store = DedupStore(path)
        self._permutations: object = None  # drawn once: a MinHash draws its 128 permutations on creation
        self._scheme = ""

    def _minhash_values(self, sh: np.ndarray) -> np.ndarray:
        """The MinHash signature (datasketch, seed 1) of shingles `sh`."""
        from datasketch import MinHash

        if self._permutations is None:
            m = MinHash(num_perm=NUM_PERM, seed=1)
            self._permutations, self._scheme = m.permutations, m.scheme
        else:
            m = MinHash(num_perm=NUM_PERM, seed=1, permutations=self._permutations, scheme=self._scheme)
        m.update_batch([int(x).to_bytes(8, "big") for x in sh])
        return m.hashvalues.astype(np.uint64)

    def _band_keys(self, sh: np.ndarray) -> list[int]:
        """One signed 64-bit key per LSH band of the MinHash signature of shingles `sh`."""
        values = self._minhash_values(sh)
        return [
            int.from_bytes(hashlib.blake2b(bytes([band]) + values[a:b].tobytes(), digest_size=8).digest(), "big",
                           signed=True)
            for band, (a, b) in enumerate(self.bands)
        ]  # fmt: skip

    def closest(self, sh: np.ndarray, keys: list[int] | None = None) -> tuple[str | None, float]:
        """The kept dialogue most similar to shingles `sh` among the LSH candidates, with its Jaccard."""
        best, best_j = None, 0.0
        if not len(sh):
            return best, best_j
        for key, other in self.store.candidates(keys if keys is not None else self._band_keys(sh)):
            j = jaccard(sh, other)
            if j > best_j:
                best, best_j = key, j
        return best, best_j

    def add(self, dialogue_id: str, texts: Iterable[str]) -> None:
        """Index a kept dialogue (also used to seed the index from completed shards)."""
        sh = shingles(texts)
        if len(sh):
            self._index(dialogue_id, sh, self._band_keys(sh))

    def _index(self, dialogue_id: str, sh: np.ndarray, keys: list[int]) -> None:
        self.store.add(dialogue_index(dialogue_id), dialogue_id, sh, keys)

    def apply(self, dialogue: Dialogue) -> Dialogue:
        """Reject `dialogue` if it nearly duplicates a kept one; otherwise index it. Call in index order."""
        if not dialogue.kept:
            return dialogue
        sh, keys = self.sketch(dialogue)
        if not len(sh):
            return dialogue
        other, j = self.closest(sh, keys)
        if other is not None and j >= self.threshold:
            dialogue.reject = Reject(
                stage="dedup", reason="near_duplicate", detail=f"word 3-gram Jaccard {j:.3f} with {other}",
                measured={"jaccard": round(j, 4), "duplicate_of": other},
            )  # fmt: skip
            return dialogue
        self._index(dialogue.id, sh, keys)
        return dialogue

    def sketch(self, dialogue: Dialogue) -> tuple[np.ndarray, list[int]]:
        """A dialogue's shingles and band keys: the ones its worker computed (`sketch_batch`), else computed here."""
        if dialogue.dedup_sketch is not None:
            blob, keys = dialogue.dedup_sketch
            return np.frombuffer(blob, dtype=np.uint64), keys
        sh = shingles(t.text for t in dialogue.turns)
        return sh, self._band_keys(sh) if len(sh) else []

    def forget(self, todo: Iterable[range | list[int]]) -> None:
        """Drop dialogues that this run redoes: one range or list per shard (unfinished shards, transient failures)."""
        for indices in todo:
            self.store.forget(indices)

    def commit(self) -> None:
        """Make the dialogues indexed so far durable (call before a shard's completion marker)."""
        self.store.commit()

    def close(self) -> None:
        """Commit and close the index."""
        self.store.close()


@functools.cache
def _sketcher(threshold: float) -> NearDuplicateFilter:
    return NearDuplicateFilter(threshold)


def sketch_batch(batch: dict[str, Any], threshold: float) -> dict[str, Any]:
    """Ray Data task at the end of the pipeline: attach each kept dialogue's near-duplicate sketch and
    add a `summary` column (the dialogue without audio and units, `Dialogue.summary`). The driver reads
    only the summaries and looks the sketches up (the MinHash work spreads over the workers); the full
    records stay in the object store for the shard writers (`stages/s7_write.py`)."""
    dialogues = [pickle.loads(blob) for blob in batch["record"]]
    summaries = []
    for d in dialogues:
        attach_sketch(d, threshold)
        summaries.append(pickle.dumps(d.summary()))
        d.dedup_sketch = None  # the writer does not need it
    out = to_batch(dialogues)
    out["index"] = np.array([d.index for d in dialogues], dtype=np.int64)
    out["summary"] = np.array(summaries, dtype=object)
    return out


def attach_sketch(dialogue: Dialogue, threshold: float) -> None:
    """Compute a kept dialogue's shingles and band keys into `dialogue.dedup_sketch`."""
    if dialogue.kept:
        sh = shingles(t.text for t in dialogue.turns)
        dialogue.dedup_sketch = (sh.tobytes(), _sketcher(threshold)._band_keys(sh) if len(sh) else [])
