"""`opens2s-data report`: DIR/report.html, one self-contained file (plots as inline PNG, audio as data URIs).

The numbers come from `compute_stats`, the same function `opens2s-data stats` prints.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pipeline.io.files import atomic_write_bytes
from pipeline.review.dataset import BuildOutput, Sample
from pipeline.review.sampling import stratified_sample
from pipeline.review.stats import compute_stats

Progress = Callable[[str, int, int], None]


def _png(fig: Any) -> str:
    """The figure as an inline <img> (base64 PNG); closes the figure."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return f'<img alt="" src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">'


def _heatmap(ax: Any, matrix: list[list[int]], rows: list[str], cols: list[str], cmap: str) -> None:
    ax.imshow(matrix, cmap=cmap, aspect="auto")
    ax.set_xticks(range(len(cols)), cols, rotation=90 if len(cols) > 8 else 45, ha="center", fontsize=8)
    ax.set_yticks(range(len(rows)), rows, fontsize=9)
    peak = max((v for row in matrix for v in row), default=0)
    for i, row in enumerate(matrix):
        for j, v in enumerate(row):
            if v:
                ax.text(j, i, str(v), ha="center", va="center", fontsize=7, color="white" if v > peak / 2 else "black")


def _plot_coverage(stats: dict[str, Any]) -> str:
    import matplotlib.pyplot as plt

    cov = stats["coverage"]
    emotions = list(cov)
    speakers = sorted({s for v in cov.values() for s in v})
    fig, ax = plt.subplots(figsize=(max(6.0, 0.22 * len(speakers) + 2), 0.45 * len(emotions) + 1.6))
    _heatmap(ax, [[cov[e].get(s, 0) for s in speakers] for e in emotions], emotions, speakers, "Blues")
    ax.set_title("kept dialogues per target emotion x user speaker")
    return _png(fig)


def _plot_histogram(hist: dict[str, Any], title: str, xlabel: str, threshold: float | None) -> str:
    import matplotlib.pyplot as plt

    edges, counts = hist["edges"], hist["counts"]
    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.bar(edges[:-1], counts, width=[b - a for a, b in zip(edges[:-1], edges[1:], strict=True)], align="edge",
           edgecolor="white", color="#4c72b0")  # fmt: skip
    if threshold is not None:
        ax.axvline(threshold, color="#c44e52", linestyle="--", label=f"gate {threshold}")
        ax.legend()
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("turns")
    return _png(fig)


def _plot_confusion(conf: dict[str, Any]) -> str:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    _heatmap(ax, conf["matrix"], conf["labels"], conf["labels"], "Greens")
    ax.set_xlabel("measured emotion")
    ax.set_ylabel("target emotion")
    agreement = "-" if conf["agreement"] is None else f"{conf['agreement']:.1%}"
    ax.set_title(f"user turns: target vs measured ({conf['n']} turns, agreement {agreement})")
    return _png(fig)


def _plot_bars(series: dict[str, dict[str, float]], title: str, xlabel: str) -> str:
    """Horizontal bars: one group per key of `series` (e.g. dialogues / turns), one bar per label."""
    import matplotlib.pyplot as plt

    labels = sorted({k for v in series.values() for k in v})
    fig, ax = plt.subplots(figsize=(6.5, 0.4 * max(len(labels), 1) * max(len(series), 1) + 1.2))
    height = 0.8 / max(len(series), 1)
    for n, (name, values) in enumerate(series.items()):
        ax.barh([i + n * height for i in range(len(labels))], [values.get(k, 0) for k in labels], height, label=name)
    ax.set_yticks([i + height * (len(series) - 1) / 2 for i in range(len(labels))], labels)
    ax.invert_yaxis()
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    if len(series) > 1:
        ax.legend()
    if not labels:
        ax.text(0.5, 0.5, "none", ha="center", va="center", transform=ax.transAxes)
    return _png(fig)


def _plot_throughput(tp: dict[str, Any]) -> str:
    import matplotlib.pyplot as plt

    stages = list(tp["stages"])
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.4))
    left.bar(stages, [tp["stages"][s]["seconds_per_dialogue"] or 0 for s in stages], color="#55a868")
    left.set_ylabel("seconds per requested dialogue")
    left.set_title("stage time per dialogue (all shards)")
    shards = tp["per_shard"]
    bottom = [0.0] * len(shards)
    for stage in stages:
        values = [s.get(stage, 0.0) for s in shards]
        right.bar([str(s["shard"]) for s in shards], values, bottom=bottom, label=stage)
        bottom = [a + b for a, b in zip(bottom, values, strict=True)]
    right.plot([str(s["shard"]) for s in shards], [s["wall_s"] for s in shards], "k.-", label="wall")
    right.set_xlabel("shard")
    right.set_ylabel("seconds")
    right.set_title("stage seconds and wall time per shard")
    right.legend(fontsize=8)
    return _png(fig)


def _audio_tag(data: bytes | None) -> str:
    if data is None:
        return "<em>no audio</em>"
    return f'<audio controls preload="metadata" src="data:audio/flac;base64,{base64.b64encode(data).decode()}"></audio>'


def _sample_html(build: BuildOutput, sample: Sample, max_turns: int) -> str:
    e = html.escape
    sc = sample.scenario or {}
    rows = []
    for t in sample.turns[:max_turns]:
        measured = t["emotion_measured"] or "-"
        wer = "-" if t["wer"] is None else f"{t['wer']:.3f}"
        rows.append(
            f"<tr><td>{e(t['role'])} {e(t['speaker_id'])}</td><td>{e(t['text'])}<br>"
            f"<i>ASR: {e(t['asr_text'] or '')}</i></td>"
            f"<td>{_audio_tag(build.audio(t['turn_id']))}<br>{t['duration_s'] or 0:.2f} s</td>"
            f"<td>{e(t['emotion'])} / {e(measured)}</td><td>{wer}</td></tr>"
        )
    return (
        f"<h3>{e(sample.id)} <small>{e(sample.stratum)}</small></h3><p>{e(sc.get('topic', ''))}: "
        f"{e(sc.get('situation', ''))}</p><table><tr><th>turn</th><th>text / ASR</th><th>audio</th>"
        f"<th>emotion target / measured</th><th>WER</th></tr>{''.join(rows)}</table>"
    )


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    e = html.escape
    head = "".join(f"<th>{e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{e(str(v))}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


_CSS = """
body { font: 14px/1.45 system-ui, sans-serif; max-width: 1200px; margin: 20px auto; padding: 0 16px; color: #222; }
img { max-width: 100%; display: block; margin: 8px 0 18px; }
table { border-collapse: collapse; margin: 8px 0 16px; } td, th { border-bottom: 1px solid #ddd; padding: 4px 8px;
text-align: left; vertical-align: top; } h2 { border-bottom: 2px solid #24324a; padding-bottom: 3px; margin-top: 32px; }
.warn { color: #b00; }
"""


def build_report(
    out_dir: Path, samples: int = 3, max_turns: int = 4, seed: int = 0, on_progress: Progress | None = None
) -> tuple[Path, dict[str, Any]]:
    """Write `out_dir/report.html`; returns its path and the stats it shows.

    `samples` dialogues (stratified, seeded) are embedded with their first `max_turns` turns' audio.
    """
    import matplotlib

    matplotlib.use("Agg")
    progress = on_progress or (lambda _step, _done, _total: None)
    build = BuildOutput(Path(out_dir))
    stats = compute_stats(build, lambda done, total: progress("reading shards", done, total))
    max_wer = (build.manifest.get("recipe", {}).get("gates") or {}).get("max_wer")
    plots: list[tuple[str, Callable[[], str]]] = [
        ("Coverage: emotion x speaker", lambda: _plot_coverage(stats)),
        ("Turn durations", lambda: _plot_histogram(stats["duration_s"]["histogram"], "kept turns", "seconds", None)),
        ("WER (ASR vs text)", lambda: _plot_histogram(stats["wer"]["histogram"], "turns at the gates", "WER", max_wer)),
        ("Emotion: target vs measured", lambda: _plot_confusion(stats["emotion_confusion"])),
        ("Rejections by reason", lambda: _plot_bars(stats["rejections"], "rejections by reason", "count")),
        ("Throughput per stage", lambda: _plot_throughput(stats["throughput"])),
    ]
    review = stats["review"]
    if review and review["judgements"]:
        rates = {"acceptance rate": {k: v["acceptance_rate"] for k, v in review["per_emotion"].items()}}
        plots.append(("Review: acceptance per emotion", lambda: _plot_bars(rates, "annotators' acceptance", "rate")))
    sections = []
    for n, (title, plot) in enumerate(plots, start=1):
        sections.append(f"<h2>{html.escape(title)}</h2>{plot()}")
        progress("plotting", n, len(plots))
    kept = [s for s in build.samples() if s.status == "kept"]
    chosen = stratified_sample(kept, samples, seed)
    sample_html = []
    for n, sample in enumerate(chosen, start=1):
        sample_html.append(_sample_html(build, sample, max_turns))
        progress("embedding samples", n, len(chosen))
    d, tot = stats["dataset"], stats["totals"]
    warn = "" if d["status"] == "complete" else f'<p class="warn">build status: {html.escape(str(d["status"]))}</p>'
    overview = _table(["measure", "value"], [[k.replace("_", " "), v] for k, v in tot.items()])
    dur, wer = stats["duration_s"], stats["wer"]
    summaries = _table(
        ["", "n", "mean", "p50", "p90", "max"],
        [
            [name, *(s[k] for k in ("n", "mean", "p50", "p90", "max"))]
            for name, s in (("duration s", dur), ("WER", wer))
        ],
    )
    stages = _table(
        ["stage", "seconds", "s / dialogue", "dialogues / s"],
        [[k, *v.values()] for k, v in stats["throughput"]["stages"].items()],
    )
    review_html = ""
    if review and review["judgements"]:
        review_html = "<h2>Review</h2>" + _table(
            ["stratum", "judged", "accepted", "acceptance rate"],
            [[k, *v.values()] for k, v in review["per_stratum"].items()],
        )
    title = f"opens2s-data report: {d['name']}"
    doc = (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>"
        f"<p>{html.escape(d['path'])}, seed {d['seed']}, {d['shards']} shard(s), "
        f"generated {datetime.now(UTC).isoformat(timespec='seconds')}</p>{warn}{overview}{summaries}"
        f"{''.join(sections)}{stages}{review_html}<h2>Samples</h2>{''.join(sample_html)}</body></html>"
    )
    path = build.root / "report.html"
    atomic_write_bytes(path, doc.encode())
    return path, stats
