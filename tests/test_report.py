"""`opens2s-data report` on a real build: a self-contained HTML file whose plots and audio render in Chromium."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import run_cli
from test_review import launch_chromium, one_error, sync_playwright_or_skip

from pipeline.review.db import JudgementStore


@pytest.fixture
def copy(built: tuple[Path, subprocess.CompletedProcess[str]], tmp_path: Path) -> Path:
    out = tmp_path / "out"
    shutil.copytree(built[0], out)
    return out


def test_report_is_self_contained_and_renders_its_plots_in_chromium(copy: Path, tmp_path: Path) -> None:
    sync_playwright = sync_playwright_or_skip()
    JudgementStore(copy).upsert("alice", "dlg-3-000000", "accept", [], "", "kept", "sad", "spk-01")
    result = run_cli("report", str(copy), "--samples", "2")
    assert result.returncode == 0, result.stderr
    report = copy / "report.html"
    html = report.read_text()
    assert re.findall(r'(?:src|href)="(?!data:)', html) == []  # nothing loaded from elsewhere
    for title in ("Coverage", "Turn durations", "WER", "target vs measured", "Rejections", "Throughput", "acceptance"):
        assert title in html
    with sync_playwright() as p:
        browser = launch_chromium(p)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(report.as_uri())
            page.wait_for_load_state("load")
            sizes = page.eval_on_selector_all("img", "imgs => imgs.map(i => [i.complete, i.naturalWidth])")
            assert len(sizes) == 7 and all(done and width > 0 for done, width in sizes), sizes
            durations = page.evaluate(
                """Promise.all([...document.querySelectorAll('audio')].map(a => new Promise(done => {
                     if (a.readyState >= 1) done(a.duration);
                     a.addEventListener('loadedmetadata', () => done(a.duration));
                     a.addEventListener('error', () => done(-1));
                     a.load();
                   })))"""
            )
            page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
        finally:
            browser.close()
    kept_turns = "<audio" in html
    assert all(d > 0 for d in durations) and (len(durations) > 0) == kept_turns, durations


def test_report_refuses_a_folder_that_is_not_a_build(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "manifest.json").write_text("{}")
    result = run_cli("report", str(tmp_path))
    assert result.returncode == 2 and one_error(result.stderr), result.stderr
    assert "no finished shard" in result.stderr and not (tmp_path / "report.html").exists()
