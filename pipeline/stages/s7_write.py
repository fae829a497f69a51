"""Shard writing off the driver: the driver decides, a bounded set of Ray writer tasks writes.

The pipeline's last task (`s6_dedup.sketch_batch`) leaves every finished dialogue in Ray's object
store twice per block: the full record (audio, units) and a summary without them. The driver:

1. reads only the summaries of each output block, through a small task that Ray places where the
   block is (`DialogueSummaries`), and remembers which block holds which dialogue;
2. counts the arrivals per shard and keeps only the block references (workers finish out of order,
   so shards complete out of order: holding their summaries would grow the driver with that
   disorder); when the next shard in shard order is complete, it reads that shard's summaries again
   from its blocks (`shard_summaries`), removes near-duplicates in index order (`NearDuplicateFilter`,
   on-disk index, committed before the shard can get its marker) and turns the new rejects into
   verdicts;
3. hands the shard to a writer task (`ShardWriters`) with the verdicts and the references of the
   blocks that hold its rows. The writer reads the full records from those blocks, applies the
   verdicts and calls `OutputFolder.write_shard`: the same temp-file-and-rename files, stats and
   completion marker (written last) as when the driver wrote, so resume and the transient merge
   are unchanged.

At most `resources.writer.concurrency` writers are in flight; the driver waits for one to finish
before it dispatches another, which backpressures the pipeline. The driver holds one count per
unfinished shard, the block references and one shard's summaries at a time, never audio. Markers may land out of shard
order (a later shard's writer can finish first); a resume redoes exactly the shards without one.
"""

from __future__ import annotations

import pickle
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from typing import Any

from pipeline.io.shards import OutputFolder
from pipeline.recipe import WriterResources
from pipeline.records import Dialogue, Reject
from pipeline.stages.s6_dedup import NearDuplicateFilter


class WriterError(Exception):
    """A writer task cannot write where the driver expects (the output folder is not shared)."""


class DialogueSummaries:
    """Iterate a Ray dataset's finished dialogues as summaries, without fetching the full records.

    `block_of[index]` is the reference of the block that holds dialogue `index`'s full record, until
    `write_in_order` takes it.
    """

    def __init__(self, ds: Any) -> None:
        self.ds = ds
        self.block_of: dict[int, Any] = {}

    def __iter__(self) -> Iterator[Dialogue]:
        import ray

        read = ray.remote(num_cpus=0)(_summary_columns)
        for bundle in self.ds.iter_internal_ref_bundles():
            refs = bundle.block_refs
            rows = [(s.start_offset, s.end_offset) if s is not None else None for s in bundle.slices]
            for ref, blobs in zip(refs, ray.get(read.remote(rows, *refs)), strict=True):
                for blob in blobs:
                    summary: Dialogue = pickle.loads(blob)
                    self.block_of[summary.index] = ref
                    yield summary


def _summary_columns(rows: list[tuple[int, int] | None], *blocks: Any) -> list[list[bytes]]:
    """Ray task: the `summary` column of each block, or of its (start, end) rows where the bundle holds
    a slice of it (runs where the blocks are)."""
    from ray.data.block import BlockAccessor

    columns = []
    for block, part in zip(blocks, rows, strict=True):
        column = list(BlockAccessor.for_block(block).to_numpy("summary"))
        columns.append(column if part is None else column[part[0] : part[1]])
    return columns


def shard_summaries(shard: int, blocks: list[Any]) -> list[Dialogue]:
    """The summaries of shard `shard`'s dialogues in `blocks`, in index order (read where the blocks are)."""
    import ray

    read = ray.remote(num_cpus=0)(shard_column)
    blobs = ray.get(read.remote("summary", shard, *blocks))
    return sorted((pickle.loads(blob) for blob in blobs), key=lambda d: d.index)


def shard_column(column: str, shard: int, *blocks: Any) -> list[bytes]:
    """The `column` values (`summary` or `record`) of the rows of `shard` in `blocks`; a Ray task for
    the driver's summaries, called inside the writer task for the records."""
    from ray.data.block import BlockAccessor

    values = []
    for block in blocks:
        accessor = BlockAccessor.for_block(block)
        shards, blobs = accessor.to_numpy("shard"), accessor.to_numpy(column)
        values += [blob for k, blob in zip(shards, blobs, strict=True) if k == shard]
    return values


def write_shard_from_blocks(
    out: OutputFolder, run_id: str, shard: int, verdicts: dict[int, Reject], wall_s: float, *blocks: Any
) -> str:
    """Ray task: write shard `shard` from the full records in `blocks`, with the driver's near-duplicate
    verdicts applied. Returns the Ray node it ran on."""
    manifest = out.read_manifest() or {}
    if manifest.get("run_id") != run_id:
        import socket

        raise WriterError(
            f"a shard writer on {socket.gethostname()} does not see this build's output folder {out.root}: "
            "put the output on a filesystem every Ray node mounts, or set resources.writer.node: driver"
        )
    import ray

    dialogues = [pickle.loads(record) for record in shard_column("record", shard, *blocks)]
    for d in dialogues:
        d.reject = verdicts.get(d.index, d.reject)
    out.write_shard(shard, dialogues, wall_s)
    return str(ray.get_runtime_context().get_node_id())


class ShardWriters:
    """Writer tasks for one build: at most `cfg.concurrency` in flight, errors raised in the driver;
    `nodes` counts the shards written per Ray node."""

    def __init__(self, out: OutputFolder, run_id: str, cfg: WriterResources) -> None:
        import ray

        self.out, self.run_id, self.concurrency = out, run_id, cfg.concurrency
        options: dict[str, Any] = {"num_cpus": cfg.num_cpus}
        if cfg.node == "driver":
            from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

            node = ray.get_runtime_context().get_node_id()
            options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(node_id=node, soft=False)
        self._task = ray.remote(write_shard_from_blocks).options(**options)
        self._in_flight: list[Any] = []
        self.nodes: Counter[str] = Counter()

    def submit(self, shard: int, verdicts: dict[int, Reject], wall_s: float, blocks: list[Any]) -> None:
        """Start writing `shard`, after waiting for a free writer."""
        while len(self._in_flight) >= self.concurrency:
            self._wait_one()
        self._in_flight.append(self._task.remote(self.out, self.run_id, shard, verdicts, wall_s, *blocks))

    def drain(self) -> None:
        """Wait for every writer in flight; raise the first one's error."""
        while self._in_flight:
            self._wait_one()

    def _wait_one(self) -> None:
        import ray
        from ray.exceptions import RayTaskError

        done, self._in_flight = ray.wait(self._in_flight, num_returns=1)
        try:
            self.nodes[ray.get(done[0])] += 1
        except RayTaskError as err:  # the writer's own exception (an OSError, a WriterError), not Ray's wrapper
            raise (err.cause or err) from None


def write_in_order(
    out: OutputFolder,
    stream: Iterator[Dialogue],
    block_of: dict[int, Any],
    pending: list[int],
    dedup: NearDuplicateFilter,
    writers: ShardWriters,
    on_progress: Callable[[int, int, Dialogue | None], None] | None = None,
) -> int:
    """Dispatch the shards of `pending` in shard order as their summaries arrive from `stream`,
    removing near-duplicates in index order first (so which of two duplicates survives does not
    depend on worker timing). Returns the number of shards written."""
    arrived: Counter[int] = Counter()
    blocks: dict[int, dict[Any, None]] = defaultdict(dict)  # per shard, the blocks that hold its rows (in order)
    first_seen: dict[int, float] = {}
    order = iter(pending)
    next_shard = next(order, None)
    sizes = {k: len(out.todo(k)) for k in pending}  # a written shard's todo: its transient failures
    total = sum(sizes.values())
    done = written = 0
    try:
        for summary in stream:
            # Only a count and the block are kept: shards that finish out of order cost no driver memory
            # per dialogue; their summaries are read again from the blocks when their turn comes.
            first_seen.setdefault(summary.shard, time.monotonic())
            arrived[summary.shard] += 1
            blocks[summary.shard][block_of.pop(summary.index)] = None
            while next_shard is not None and arrived[next_shard] == sizes[next_shard]:
                refs = list(blocks.pop(next_shard))
                verdicts = {}
                for d in shard_summaries(next_shard, refs):
                    if d.kept and not dedup.apply(d).kept:
                        assert d.reject is not None
                        verdicts[d.index] = d.reject
                dedup.commit()  # before the shard's marker: a crash in between is undone by `forget` on resume
                writers.submit(next_shard, verdicts, time.monotonic() - first_seen.pop(next_shard), refs)
                del arrived[next_shard]
                written += 1
                next_shard = next(order, None)
            done += 1
            if on_progress:
                on_progress(done, total, summary)
    except Exception:
        writers.drain()  # the shards already dispatched still land (a later error stops the build)
        raise
    writers.drain()
    return written
