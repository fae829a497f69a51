"""Shard writing off the driver (stages/s7_write.py) on a real local Ray: the driver reads audio-free
summaries and decides near-duplicates in index order; writer tasks write the rows from the blocks."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import write_recipe

from pipeline.catalogs import load_catalogs
from pipeline.io.shards import OutputFolder
from pipeline.recipe import WriterResources, load_recipe
from pipeline.records import Dialogue, Turn
from pipeline.stages.base import BuildContext, to_batch
from pipeline.stages.s1_scenarios import ScenarioSampler
from pipeline.stages.s6_dedup import NearDuplicateFilter, sketch_batch
from pipeline.stages.s7_write import DialogueSummaries, ShardWriters, WriterError, write_in_order

SAME = ["I lost my job today and I do not know how to tell my family.", "I am so sorry, that is a lot to carry."]
BABY = ["My sister is having a baby and I cannot wait!", "That is wonderful news for your family!"]
STORM = ["The storm knocked our fence down last night.", "That sounds scary, is everyone safe?"]
AUDIO = b"fLaC" + bytes(range(256)) * 40  # stands in for a FLAC clip: the writer copies the bytes as they are


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=1, include_dashboard=False, logging_level="ERROR")
    yield
    ray.shutdown()


def _dialogues(tmp_path: Path, texts: list[list[str]]) -> tuple[OutputFolder, list[Dialogue]]:
    recipe = load_recipe(write_recipe(tmp_path, num_dialogues=len(texts), shard_size=2, text_only=True))
    ctx = BuildContext(recipe=recipe, catalogs=load_catalogs(recipe), out_dir=tmp_path)
    dialogues = []
    for index, pair in enumerate(texts):
        d = ScenarioSampler(ctx).new(index)
        d.turns = [Turn(f"{d.id}-t{n:02d}", role, t, "sad", "low", "spk-01", audio=AUDIO, speech_units=[1, 2, 3])
                   for n, (role, t) in enumerate(zip(["user", "assistant"], pair, strict=True), start=1)]  # fmt: skip
        dialogues.append(d)
    out = OutputFolder(tmp_path / "out", recipe)
    out.prepare(False)
    out.write_manifest({"recipe_hash": recipe.fingerprint(), "run_id": "run-1"})
    return out, dialogues


def _dataset(blocks: list[list[Dialogue]]) -> object:
    """A Ray dataset whose blocks are the output of the pipeline's real last task, one per group."""
    import pyarrow as pa
    import ray

    tables = [pa.table(sketch_batch(to_batch(group), threshold=0.5)) for group in blocks]
    return ray.data.from_arrow_refs([ray.put(t) for t in tables])


def test_writers_remove_the_later_duplicate_whatever_order_workers_finish_in(local_ray: None, tmp_path: Path) -> None:
    out, d = _dialogues(tmp_path, [BABY, SAME, STORM, SAME])
    summaries = DialogueSummaries(_dataset([[d[3]], [d[2]], [d[1], d[0]]]))  # shard 1 finishes first
    seen: list[Dialogue] = []
    writers = ShardWriters(out, "run-1", WriterResources())
    written = write_in_order(out, iter(summaries), summaries.block_of, [0, 1], NearDuplicateFilter(0.5), writers,
                             lambda _done, _total, s: seen.append(s))  # fmt: skip

    assert written == 2
    assert [s.index for s in seen] == [3, 2, 1, 0]
    assert all(t.audio == b"" and t.speech_units == [] for s in seen for t in s.turns)  # the driver got no audio
    assert summaries.block_of == {}  # every block reference was handed to a writer
    kept = [row[0] for row in out.kept_texts()]
    assert kept == ["dlg-3-000000", "dlg-3-000001", "dlg-3-000002"]  # index 3 duplicates index 1
    assert out.totals()["rejected_by_reason"] == {"near_duplicate": 1}
    import pyarrow.parquet as pq

    rows = pq.read_table(out.root / "data" / f"train-{out.shard_name(0)}.parquet").to_pylist()
    assert [t["audio"]["bytes"] for r in rows for t in r["turns"]] == [AUDIO] * 4  # the writers had the full rows
    assert [t["speech_units"] for r in rows for t in r["turns"]] == [[1, 2, 3]] * 4


def test_a_writer_that_does_not_see_the_folder_stops_the_build(local_ray: None, tmp_path: Path) -> None:
    out, d = _dialogues(tmp_path, [BABY, STORM])
    summaries = DialogueSummaries(_dataset([d]))
    writers = ShardWriters(out, "another-run", WriterResources(node="driver"))  # as a node with its own disk sees it
    with pytest.raises(WriterError, match="does not see this build's output folder .* resources.writer.node: driver"):
        write_in_order(out, iter(summaries), summaries.block_of, [0], NearDuplicateFilter(0.5), writers)
    assert not out.marker(0).exists()
    assert not list((out.root / "data").glob("*"))


def test_the_driver_lists_spans_and_the_workers_make_the_indices(local_ray: None) -> None:
    from pipeline.build import todo_dataset

    todo: list[range | list[int]] = [range(0, 3), [7, 9], range(10, 12)]  # unwritten shards and a retry list
    for block_rows in (1, 2, 100):
        rows = todo_dataset(todo, block_rows=block_rows).take_all()
        assert [r["index"] for r in rows] == [0, 1, 2, 7, 9, 10, 11]


def test_where_the_writers_run_is_not_part_of_the_recipe_identity(tmp_path: Path) -> None:
    plain = load_recipe(write_recipe(tmp_path, name="a"))
    (tmp_path / "b").mkdir()
    moved = load_recipe(
        write_recipe(tmp_path / "b", name="a", resources={"writer": {"concurrency": 5, "node": "driver"}})
    )
    assert moved.resources.writer.concurrency == 5
    assert moved.fingerprint() == plain.fingerprint()
