"""`scalselect report`: PNG plots and one self-contained HTML page of a selection, to look at
before training on it. No server: the page holds its plots and thumbnails inline and opens
offline.

- spectrum.png: the squared singular values of the centred vectors (their share of the total,
  log scale) and the cumulative energy, with the scoring's k marked. On a store of more than
  SPECTRUM_ROWS rows it is estimated from a seeded sample of them.
- scores.png: the histogram of the importance scores, with the subset's cut.
- sources.png: each source's share of the pool and of the subset.
- report.html: the three plots, the counts, `scalselect compare`'s figures when given, and the
  SHOWN highest- and lowest-scored samples with a thumbnail of their first image and their
  first instruction.
"""

from __future__ import annotations

import base64
import html
import io
import json
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from . import options
from .atomic import atomic_open
from .baselines import IMAGE_FOLDER, source_of
from .data import read_pool
from .data.conversations import IMAGE_TAG, image_refs, read_turns
from .data.images import SampleSkip, open_image
from .scoring.eigen import centred_spectrum, rank_for_energy
from .errors import InputError
from .select import read_scores
from .scoring.sketch import sample_rows
from .stores import read_manifest, read_store

SPECTRUM_ROWS = 20_000
SHOWN = 12
THUMB = 160


def plot_figures(spectrum: np.ndarray, k: int, scores: np.ndarray, cut: float | None, sources: dict):
    """The three matplotlib figures (Agg), labelled."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    share = spectrum / spectrum.sum()
    fig1, ax = plt.subplots(figsize=(7, 3.6))
    ranks = np.arange(1, len(share) + 1)
    ax.semilogy(ranks, np.maximum(share, 1e-16), color="tab:blue", lw=1.5)
    ax.set_xlabel("rank i")
    ax.set_ylabel("σᵢ² / Σσ² (log)", color="tab:blue")
    twin = ax.twinx()
    twin.plot(ranks, np.cumsum(share), color="tab:orange", lw=1.5)
    twin.set_ylabel("cumulative energy", color="tab:orange")
    twin.set_ylim(0, 1.02)
    ax.axvline(k, color="black", ls="--", lw=1)
    ax.annotate(f"k = {k}", (k, 0.5), xycoords=("data", "axes fraction"), xytext=(4, 0), textcoords="offset points")
    ax.set_title("Spectrum of the centred vectors")
    fig1.tight_layout()

    fig2, ax = plt.subplots(figsize=(7, 3.6))
    positive = scores[scores > 0]
    bins = np.geomspace(positive.min(), positive.max(), 60) if len(positive) > 1 else 30
    ax.hist(positive if len(positive) > 1 else scores, bins=bins, color="tab:blue")
    if len(positive) > 1:
        ax.set_xscale("log")
    if cut is not None:
        ax.axvline(cut, color="tab:red", lw=1.5, label="subset's cut")
        ax.legend()
    ax.set_xlabel("importance (leverage score)")
    ax.set_ylabel("samples")
    ax.set_title("Scores")
    fig2.tight_layout()

    names = sorted(sources, key=lambda s: -sources[s][0])
    fig3, ax = plt.subplots(figsize=(7, 0.6 + 0.45 * max(3, len(names))))
    y = np.arange(len(names))
    ax.barh(y - 0.2, [sources[s][0] for s in names], 0.4, label="pool", color="tab:gray")
    ax.barh(y + 0.2, [sources[s][1] for s in names], 0.4, label="subset", color="tab:blue")
    ax.set_yticks(y, names)
    ax.invert_yaxis()
    ax.set_xlabel("share of samples")
    ax.set_ylabel("source")
    ax.legend()
    ax.set_title("Composition by source")
    fig3.tight_layout()
    return {"spectrum": fig1, "scores": fig2, "sources": fig3}


def _spectrum(store: Path, seed: int) -> tuple[np.ndarray, int]:
    """Squared singular values of the centred store (from a seeded sample of SPECTRUM_ROWS rows
    on a larger store, scaled to the whole), and the number of rows used."""
    src = read_store(store)
    rows = src.take(sample_rows(src.num_rows, SPECTRUM_ROWS, seed)).to(torch.float64)
    rows = rows[torch.isfinite(rows).all(dim=1)]
    values = centred_spectrum(rows - rows.mean(dim=0)).numpy()
    return values * (src.num_rows / max(1, rows.shape[0])), int(rows.shape[0])


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    return buf.getvalue()


def _thumbnail(record: dict, layout: str, root: Path | None) -> str | None:
    """A data URI of the record's first image, at most THUMB pixels a side, or None."""
    try:
        refs = image_refs(record, layout)
        if not refs or root is None:
            return None
        img = open_image(refs[0], root)
    except (SampleSkip, InputError, OSError):
        return None
    img.thumbnail((THUMB, THUMB))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _first_instruction(record: dict, layout: str) -> str:
    try:
        text = next((t for role, t in read_turns(record, layout) if role == "user"), "")
    except InputError:
        return "(unreadable conversation)"
    text = " ".join(text.replace(IMAGE_TAG, " ").split())
    return text if len(text) <= 300 else text[:297] + "..."


def _scoring_summary(path: Path) -> dict:
    """k and the energy of the scores' summary (scores.summary.json), when it is there and sound."""
    try:
        summary = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
        energy = options.share(summary.get("settings", {}).get("energy", 0.9), "energy")
        k = summary.get("k")
    except (OSError, ValueError, RecursionError, AttributeError) as exc:
        raise InputError(f"{path}: not the summary `scalselect score` writes ({exc})") from None
    return {"energy": energy, "k": k if isinstance(k, int) and not isinstance(k, bool) and k > 0 else None}


def build_report(
    store,
    scores_path,
    out,
    *,
    subset=None,
    data=None,
    image_root=None,
    source_field: str | None = None,
    seed: int = 0,
    compare=None,
) -> dict:
    """Write the plots and report.html into `out`; returns what it wrote and the counts. The
    pool and image root default to those the store was extracted from (its manifest).
    compare: the JSON `scalselect compare --out` wrote, shown as a table."""
    store, out = Path(store), Path(out)
    meta = read_manifest(store).get("meta", {})
    data = data or meta.get("pool")
    if not data:
        raise InputError(f"{store}: the manifest names no pool; pass --data")
    pool = read_pool(data)
    root = Path(image_root or meta.get("image_root") or ".")
    ids, scores = read_scores(scores_path)
    summary_path = Path(scores_path).with_name(f"{Path(scores_path).stem}.summary.json")
    scoring = _scoring_summary(summary_path)
    compared = None
    if compare is not None:
        try:
            compared = json.loads(Path(compare).read_text(encoding="utf-8"))
            compared["methods"].items()
        except (OSError, ValueError, KeyError, AttributeError, TypeError) as exc:
            raise InputError(f"--compare {compare}: not a `scalselect compare` JSON file ({exc})") from None
    spectrum, rows_used = _spectrum(store, seed)
    energy = scoring["energy"]
    k = scoring.get("k") or rank_for_energy(torch.from_numpy(spectrum), float(spectrum.sum()), energy) or 1

    index = pool.index_of()
    unknown = [sid for sid in ids if sid not in index]
    if unknown:
        raise InputError(f"{len(unknown)} scored sample ids are not in pool {data} (e.g. {unknown[0]!r})")
    chosen = set(read_pool(subset).ids) if subset else set()
    by = source_field or IMAGE_FOLDER
    pool_sources = pool.map(lambda r: source_of(r, pool.layout, by), [index[sid] for sid in ids])
    in_subset = [sid in chosen for sid in ids]
    cut = float(min(s for s, c in zip(scores, in_subset) if c)) if any(in_subset) else None
    counts = Counter(pool_sources)
    picked = Counter(s for s, c in zip(pool_sources, in_subset) if c)
    shares = {s: (counts[s] / len(ids), picked[s] / max(1, sum(picked.values()))) for s in counts}

    figures = plot_figures(spectrum, k, scores, cut, shares)
    out.mkdir(parents=True, exist_ok=True)
    pngs = {}
    for name, fig in figures.items():
        pngs[name] = _png(fig)
        with atomic_open(out / f"{name}.png", "wb") as f:
            f.write(pngs[name])
    order = np.argsort(-scores, kind="stable")
    shown = {"highest": order[:SHOWN], "lowest": order[::-1][:SHOWN]}
    page = _page(
        pool,
        ids,
        scores,
        shown,
        root,
        pngs,
        {
            "store": str(store),
            "scores": str(scores_path),
            "pool": str(data),
            "samples": len(ids),
            "subset": len(chosen & set(ids)) if subset else None,
            "k": k,
            "energy": energy,
            "spectrum_rows": rows_used,
            "sources_by": by,
            "counts": counts,
            "picked": picked,
        },
        compared,
    )
    with atomic_open(out / "report.html", errors="xmlcharrefreplace") as f:
        f.write(page)
    import matplotlib.pyplot as plt

    for fig in figures.values():
        plt.close(fig)
    return {
        "out": str(out),
        "files": [f"{n}.png" for n in pngs] + ["report.html"],
        "k": k,
        "samples": len(ids),
        "subset": len(chosen & set(ids)) if subset else None,
        "sources": {s: {"pool": counts[s], "subset": picked[s]} for s in sorted(counts)},
    }


def _compare_section(compared: dict | None) -> str:
    """The figures of `scalselect compare` as an HTML table (empty without them)."""
    if compared is None:
        return ""
    esc = html.escape
    rows = "".join(
        f"<tr><td>{esc(str(name))}</td><td>{m.get('selected', '')}</td><td>{m.get('projection_error', 0):.4f}</td>"
        f"<td>{m.get('coverage_mean', 0):.4g}</td><td>{m.get('coverage_max', 0):.4g}</td>"
        f"<td>{m.get('largest_share_gap', 0):.1%}</td></tr>"
        for name, m in compared["methods"].items()
    )
    return (
        f"<h2>Methods compared at budget {esc(str(compared.get('budget', '?')))} (k = "
        f"{esc(str(compared.get('k', '?')))})</h2><table><tr><th>method</th><th>selected</th>"
        f"<th>projection error</th><th>coverage mean</th><th>coverage max</th><th>largest share gap</th></tr>"
        f"{rows}</table>"
    )


def _page(pool, ids, scores, shown, root, pngs, facts, compared=None) -> str:
    esc = html.escape
    img = lambda data: f'<img src="data:image/png;base64,{base64.b64encode(data).decode()}" alt="">'  # noqa: E731
    rows = "".join(
        f"<tr><td>{esc(str(s))}</td><td>{facts['counts'][s]}</td><td>{facts['picked'][s]}</td></tr>"
        for s in sorted(facts["counts"], key=lambda s: -facts["counts"][s])
    )

    def samples(which):
        cells = []
        for i in shown[which]:
            record = pool.record(pool.index_of()[ids[i]])
            thumb = _thumbnail(record, pool.layout, root)
            picture = f'<img src="{thumb}" alt="">' if thumb else '<div class="none">no image</div>'
            cells.append(
                f'<div class="sample">{picture}<div class="id">{esc(str(ids[i]))} · '
                f'{scores[i]:.4g}</div><div class="text">{esc(_first_instruction(record, pool.layout))}'
                f"</div></div>"
            )
        return "".join(cells)

    subset = f"{facts['subset']:,} in the subset" if facts["subset"] is not None else "no subset given"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>scalselect report</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 24px; color: #222; max-width: 1100px; }}
h1 {{ font-size: 22px; }} h2 {{ font-size: 18px; margin-top: 28px; }}
.plots img {{ max-width: 100%; display: block; margin: 8px 0; }}
table {{ border-collapse: collapse; }} td, th {{ border: 1px solid #ccc; padding: 3px 10px; text-align: right; }}
.grid {{ display: grid; grid-template-columns: repeat(auto-fill, minmax(180px, 1fr)); gap: 12px; }}
.sample {{ border: 1px solid #ddd; padding: 6px; font-size: 12px; }}
.sample img {{ width: {THUMB * 3 // 4}px; height: auto; display: block; }}
.none {{ width: {THUMB}px; height: 60px; background: #eee; color: #888; }}
.id {{ font-weight: bold; margin: 4px 0; }} .meta {{ color: #555; }}
</style></head><body>
<h1>scalselect report</h1>
<p class="meta">{facts["samples"]:,} scored samples, {subset}; k = {facts["k"]} at energy {facts["energy"]};
spectrum from {facts["spectrum_rows"]:,} rows. Store {esc(facts["store"])}; scores {esc(facts["scores"])};
pool {esc(facts["pool"])}.</p>
<div class="plots">{img(pngs["spectrum"])}{img(pngs["scores"])}{img(pngs["sources"])}</div>
<h2>Sources ({esc(facts["sources_by"])})</h2>
<table><tr><th>source</th><th>pool</th><th>subset</th></tr>{rows}</table>
{_compare_section(compared)}
<h2>Highest scores</h2><div class="grid">{samples("highest")}</div>
<h2>Lowest scores</h2><div class="grid">{samples("lowest")}</div>
</body></html>
"""
