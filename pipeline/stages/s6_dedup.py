"""Near-duplicate removal across the whole dataset (run by the writer, in index order).

A dialogue's text is all its turns joined; its shingles are its lower-cased word 3-grams. Two
dialogues are near-duplicates when the Jaccard similarity of their shingle sets is at least
`text_gates.near_duplicate_jaccard`. MinHash LSH (datasketch) proposes candidates with a lower
threshold, so that it misses almost no true pair, and the exact Jaccard of the stored shingle sets
decides. The writer feeds dialogues in index order, so of two near-duplicates the one with the
higher index is rejected (`near_duplicate`), whatever order the workers finished in, and a resumed
build first re-indexes the dialogues its completed shards kept.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import numpy as np

from pipeline.records import Dialogue, Reject
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
    """Remembers the kept dialogues' shingles and rejects later near-duplicates."""

    def __init__(self, threshold: float) -> None:
        from datasketch import MinHashLSH

        self.threshold = threshold
        self.lsh = MinHashLSH(threshold=max(0.05, 0.7 * threshold), num_perm=NUM_PERM)
        self.sets: dict[str, np.ndarray] = {}

    def _minhash(self, sh: np.ndarray) -> object:
        from datasketch import MinHash

        m = MinHash(num_perm=NUM_PERM, seed=1)
        m.update_batch([int(x).to_bytes(8, "big") for x in sh])
        return m

    def closest(self, sh: np.ndarray) -> tuple[str | None, float]:
        """The kept dialogue most similar to shingles `sh` among the LSH candidates, with its Jaccard."""
        best, best_j = None, 0.0
        if not len(sh):
            return best, best_j
        for key in self.lsh.query(self._minhash(sh)):
            j = jaccard(sh, self.sets[key])
            if j > best_j:
                best, best_j = key, j
        return best, best_j

    def add(self, dialogue_id: str, texts: Iterable[str]) -> None:
        """Index a kept dialogue (used when resuming from completed shards)."""
        sh = shingles(texts)
        if dialogue_id in self.sets or not len(sh):
            return
        self.sets[dialogue_id] = sh
        self.lsh.insert(dialogue_id, self._minhash(sh))

    def apply(self, dialogue: Dialogue) -> Dialogue:
        """Reject `dialogue` if it nearly duplicates a kept one; otherwise index it. Call in index order."""
        if not dialogue.kept:
            return dialogue
        texts = [t.text for t in dialogue.turns]
        other, j = self.closest(shingles(texts))
        if other is not None and j >= self.threshold:
            dialogue.reject = Reject(
                stage="dedup", reason="near_duplicate", detail=f"word 3-gram Jaccard {j:.3f} with {other}",
                measured={"jaccard": round(j, 4), "duplicate_of": other},
            )  # fmt: skip
            return dialogue
        self.add(dialogue.id, texts)
        return dialogue
