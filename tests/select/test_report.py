"""`scalselect report` on the demo: labelled PNGs, a self-contained page, and that page rendered
in a headless Chromium (from Debian's packages; README's test command installs it) shows them."""

from __future__ import annotations

import re
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

from scalselect.cli import main
from scalselect.report import plot_figures

BLUE = np.array([31, 119, 180])  # matplotlib's tab:blue, the plots' main colour


@pytest.fixture(scope="module")
def report(demo_run):
    _, run = demo_run
    out = run / "report"
    demo = demo_run[0]
    assert (
        main(
            [
                "compare",
                "--store",
                str(run / "store"),
                "--scores",
                str(run / "scores.jsonl"),
                "--data",
                str(demo["pool"]),
                "--budget",
                "16%",
                "--clusters",
                "8",
                "--out",
                str(run / "compare.json"),
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "report",
                "--store",
                str(run / "store"),
                "--scores",
                str(run / "scores.jsonl"),
                "--subset",
                str(run / "subset.json"),
                "--compare",
                str(run / "compare.json"),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    return out


def test_pngs_are_images_with_labelled_axes(report):
    for name in ("spectrum", "scores", "sources"):
        with Image.open(report / f"{name}.png") as img:
            assert img.size[0] > 300 and img.size[1] > 200
            pixels = np.asarray(img.convert("RGB"))
        assert (np.abs(pixels.astype(int) - BLUE).sum(axis=2) < 30).mean() > 0.002, name  # data drawn
    rng = np.random.default_rng(0)
    figures = plot_figures(np.sort(rng.random(50))[::-1], 7, rng.random(200), 0.5, {"a": (0.6, 0.3), "b": (0.4, 0.7)})
    for name, fig in figures.items():
        for ax in fig.axes:
            assert ax.get_xlabel() or ax.get_ylabel(), name
        assert all(ax.get_ylabel() for ax in fig.axes) and fig.axes[0].get_xlabel() and fig.axes[0].get_title()


def test_the_page_is_self_contained(report):
    page = (report / "report.html").read_text(encoding="utf-8")
    sources = re.findall(r'src="([^"]*)"', page)
    assert len(sources) >= 3 + 12  # three plots and thumbnails
    assert all(s.startswith("data:image/png;base64,") for s in sources)
    assert "http" not in page.replace("http-equiv", "") and "<script" not in page
    assert "Highest scores" in page and "Lowest scores" in page and "k = " in page
    for method in ("scalselect", "random", "length", "cluster"):  # compare's table
        assert f"<tr><td>{method}</td><td>24</td>" in page


def test_a_headless_browser_shows_the_plots(report, tmp_path):
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    assert browser, "no chromium: README's test command installs it (apt-get install chromium)"
    shot = tmp_path / "shot.png"
    proc = subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--window-size=1100,2400",
            f"--screenshot={shot}",
            (report / "report.html").as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert shot.is_file(), proc.stderr[-2000:]
    with Image.open(shot) as img:
        pixels = np.asarray(img.convert("RGB")).astype(int)
    assert pixels.shape[:2] == (2400, 1100)
    blue = np.abs(pixels - BLUE).sum(axis=2) < 30
    rows = np.nonzero(blue.any(axis=1))[0]
    # the plots' blue is drawn, in several places down the page (spectrum, histogram, bars)
    assert blue.mean() > 0.003 and rows.max() - rows.min() > 800
    assert (pixels.sum(axis=2) < 200).mean() > 0.001  # and text
