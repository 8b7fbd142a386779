"""Figures: the labelled image grid (each backend and the fallback), the Pareto front and chart,
and the demo and bench writing them."""
import builtins
import contextlib

import numpy as np
import pytest
import torch
from PIL import Image

import stagevar

from stagevar.tools import bench
from stagevar.tools.cli import main
from stagevar.tools.figures import (GAP, MIN_CELL, _wrap, condition_labels, grid_array, image_grid_figure, pareto_chart,
                              pareto_front, write_png)
from stagevar.models import reference_var

RED, BLUE = (255, 0, 0), (0, 0, 255)


def _rows(B=3, h=16, w=16):
    """Two rows of flat images: red, then blue (so the grid can be found in the figure)."""
    red, blue = torch.zeros(B, 3, h, w), torch.zeros(B, 3, h, w)
    red[:, 0], blue[:, 2] = 1, 1
    return [red, blue]


def _hide(monkeypatch, *packages):
    """Make ``import <package>...`` fail, as if the packages were not installed."""
    real = builtins.__import__

    def fake(name, *a, **k):
        if name.split(".")[0] in packages:
            raise ImportError(f"No module named {name!r}")
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", fake)


def _read(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def _dark(a: np.ndarray) -> int:
    """Pixels dark enough to be text on the white background."""
    return int((a.max(-1) < 110).sum())


@pytest.mark.parametrize("backend", ["matplotlib", "pil"])
def test_labelled_figure_has_upscaled_grid_and_text_around_it(tmp_path, backend):
    rows, path = _rows(), tmp_path / "f.png"
    long = "a lighthouse on a cliff at dusk, painted in oils with a storm rolling in from the sea " * 3
    got = image_grid_figure(rows, ["baseline\n100 ms per call", "var-d16  2.00x faster\nPSNR 21.3 dB"],
                            ["astronaut", "coffee", long], str(path), title="T", note="how to read it", backend=backend)
    assert got == backend
    a = _read(path)
    grid = (a == RED).all(-1) | (a == BLUE).all(-1)
    ys, xs = np.nonzero(grid)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    scale = MIN_CELL // 16  # 16-pixel images, nearest neighbour up to 128
    assert (y1 - y0, x1 - x0) == (2 * 16 * scale + GAP, 3 * 16 * scale + 2 * GAP)
    assert (a[y0:y0 + 16 * scale, x0:x0 + 16 * scale] == RED).all()  # whole cells, no smoothing
    assert a.shape[0] > y1 - y0 and a.shape[1] > x1 - x0
    for r in range(2):  # a label left of each row
        assert _dark(a[y0 + r * (16 * scale + GAP):y0 + (r + 1) * 16 * scale + r * GAP, :x0]) > 30
    assert _dark(a[:y0, x1 - 16 * scale:x1]) > 30  # the last column's label (the title is a short "T")
    assert _dark(a[y1:]) > 30  # the note
    assert a.shape[0] - y1 < 80  # the long prompt was cut to three lines, the note is one line


@pytest.mark.parametrize("backend", ["matplotlib", "pil"])
def test_column_labels_are_centred_on_their_columns_on_white(tmp_path, backend):
    """Each column's label is centred over the column, and the page is white even where the
    user's matplotlib style saves on black."""
    if backend == "matplotlib":
        matplotlib = pytest.importorskip("matplotlib")
        style = matplotlib.rc_context({"savefig.facecolor": "black", "figure.facecolor": "black"})
    else:
        style = contextlib.nullcontext()
    path = tmp_path / "c.png"
    with style:
        image_grid_figure(_rows(), ["a", "b"], ["astronaut", "coffee cup", "lighthouse"], str(path), backend=backend)
    a = _read(path)
    assert (a[0, 0] == 255).all() and (a[-1, -1] == 255).all()
    grid = (a == RED).all(-1) | (a == BLUE).all(-1)
    ys, xs = np.nonzero(grid)
    y0, x0 = ys.min(), xs.min()
    cw = 16 * (MIN_CELL // 16)
    for b in range(3):
        left = x0 + b * (cw + GAP)
        band = a[:y0, left:left + cw].max(-1) < 110
        cols = np.nonzero(band.any(0))[0]
        assert len(cols) > 20  # the label is there
        assert abs((cols.min() + cols.max()) / 2 - cw / 2) <= 3, (b, cols.min(), cols.max(), cw)


def test_auto_falls_back_to_pil_then_to_the_plain_grid(tmp_path, monkeypatch):
    rows = _rows()
    _hide(monkeypatch, "matplotlib")
    assert image_grid_figure(rows, ["a", "b"], ["x", "y", "z"], str(tmp_path / "p.png")) == "pil"
    with pytest.raises(ImportError, match="matplotlib"):
        image_grid_figure(rows, ["a", "b"], ["x", "y", "z"], str(tmp_path / "m.png"), backend="matplotlib")
    _hide(monkeypatch, "matplotlib", "PIL")
    assert image_grid_figure(rows, ["a", "b"], ["x", "y", "z"], str(tmp_path / "g.png")) == "plain"
    with pytest.raises(ImportError, match="pillow"):
        image_grid_figure(rows, ["a", "b"], ["x", "y", "z"], str(tmp_path / "q.png"), backend="pil")
    monkeypatch.undo()
    assert np.array_equal(_read(tmp_path / "g.png"), grid_array(rows, scale=MIN_CELL // 16, gap=GAP))
    assert _read(tmp_path / "p.png").shape[1] > _read(tmp_path / "g.png").shape[1]  # room for the labels


def test_figure_refuses_mismatched_labels_and_unknown_backend(tmp_path):
    with pytest.raises(ValueError, match="2 rows"):
        image_grid_figure(_rows(), ["a"], ["x", "y", "z"], str(tmp_path / "f.png"))
    with pytest.raises(ValueError, match="choose one of"):
        image_grid_figure(_rows(), ["a", "b"], ["x", "y", "z"], str(tmp_path / "f.png"), backend="svg")


def test_write_png_and_grid_array_read_back_exactly(tmp_path):
    g = torch.Generator().manual_seed(0)
    rows = [torch.rand(2, 3, 5, 7, generator=g) for _ in range(3)]
    write_png(grid_array(rows), str(tmp_path / "g.png"))
    want = torch.cat([torch.cat(list(r), dim=2) for r in rows], dim=1).permute(1, 2, 0).numpy()
    assert np.array_equal(_read(tmp_path / "g.png"), (want * 255).round().astype(np.uint8))
    arr = np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3)
    write_png(arr, str(tmp_path / "a.png"))
    assert np.array_equal(_read(tmp_path / "a.png"), arr)


def test_labels_wrap_and_cut_with_an_ellipsis():
    assert _wrap("one two three", 7, len, 3) == ["one two", "three"]
    assert _wrap("abcdefghij", 4, len, 3) == ["abcd", "efgh", "ij"]  # a word too long for a line is broken
    assert _wrap("aa bb cc dd ee", 5, len, 2) == ["aa bb", "cc d\u2026"]  # cut to fit with the ellipsis
    assert _wrap("first\nsecond", 20, len, 3) == ["first", "second"]


def test_condition_labels():
    assert condition_labels([0, 2], ["cat", "dog", "fox"]) == ["cat", "fox"]
    assert condition_labels([0, 5], None) == ["class 0", "class 5"]
    assert condition_labels(["a red fox"]) == ["a red fox"]


@pytest.mark.parametrize("points, front", [
    ([(1.0, 0.0)], [0]),
    ([(1.0, 0.0), (2.0, -1.0), (1.5, -2.0)], [0, 1]),  # (1.5, -2) is slower and worse than (2, -1)
    ([(1.0, 1.0), (1.0, 1.0)], [0, 1]),  # equal points: neither beats the other
    ([(1.0, 1.0), (1.0, 2.0)], [1]),  # as fast and better
    ([(2.0, 1.0), (1.0, 1.0)], [0]),  # faster and as good
    ([(3.0, 0.0), (1.0, 5.0), (2.0, 3.0)], [1, 2, 0]),  # ordered by speed
    ([(1.0, 0.0), (0.9, -1.0), (1.2, 0.0)], [2]),
])
def test_pareto_front(points, front):
    assert pareto_front(points) == front


def test_pareto_chart_writes_and_says_when_it_cannot(tmp_path, monkeypatch):
    pts = [("baseline", 1.0, 0.0, 0.0), ("var-d16", 1.8, -13.0, 1.2), ("fastvar", 1.1, -6.0, 0.9), ("x", 1.5, -15.0)]
    assert pareto_chart(pts, str(tmp_path / "c.png"), "speedup", "change", title="t")
    assert Image.open(tmp_path / "c.png").size[0] > 400
    with pytest.raises(ValueError, match="at least one"):
        pareto_chart([], str(tmp_path / "e.png"))
    _hide(monkeypatch, "matplotlib")
    assert pareto_chart(pts, str(tmp_path / "n.png")) is False
    assert not (tmp_path / "n.png").exists()


def test_bench_out_draws_the_pareto_chart(tmp_path):
    var = reference_var("tiny")
    bench.run(var, ["baseline", "skip-last-1", "cfg-only"], dict(B=2, label_B=torch.tensor([1, 2]), g_seed=0, cfg=3.0),
              repeats=1, warmup=0, out_dir=str(tmp_path))
    for name in ("pareto.png", "speed_vs_fidelity.png", "per_scale_time.png", "images.png"):
        assert (tmp_path / name).exists(), name


def test_demo_writes_a_labelled_figure(monkeypatch, tmp_path, capsys):
    """The demo figure has its row labels, and each states every figure once (it once listed the
    consistencies twice)."""
    import stagevar.tools.demo as demo

    seen = {}
    real = demo.image_grid_figure

    def spy(rows, row_labels, *a, **k):
        seen["labels"] = list(row_labels)
        return real(rows, row_labels, *a, **k)

    monkeypatch.setattr(demo, "image_grid_figure", spy)
    out = tmp_path / "d.png"
    assert main(["demo", "--model", "pretrained", "--batch", "2", "--repeats", "1", "--config", "var-d16",
                 "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert f"wrote {out} with matplotlib" in text
    a = _read(out)
    # two rows (baseline, var-d16) of two 48-pixel images, upscaled 3x: the bare grid would be 96 x 96
    assert a.shape[0] > 2 * 144 and a.shape[1] > 2 * 144
    assert _dark(a[:, :100]) > 200  # row labels on the left
    base, acc = seen["labels"]
    for label in (base, acc):
        lines = label.split("\n")
        assert len(lines) == len(set(lines)) and sum("cons." in x for x in lines) == 2, label
    assert acc.startswith("var-d16  ") and "PSNR" in acc and base.startswith("baseline (unpatched)")


def test_quality_reference_replots_saved_rows(tmp_path, monkeypatch, capsys):
    import runpy
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "pareto.png"
    monkeypatch.setattr(sys, "path", list(sys.path))  # the example puts examples/ on it
    monkeypatch.setattr(sys, "argv", ["quality_reference.py", "--from-json",
                                      str(root / "benchmarks" / "quality_reference_64.json"), "--chart", str(out)])
    runpy.run_path(str(root / "examples" / "quality_reference.py"), run_name="__main__")
    semantic = tmp_path / "pareto_semantic.png"
    assert capsys.readouterr().out == f"wrote {out}\nwrote {semantic}\n"
    assert Image.open(out).size[0] > 400 and Image.open(semantic).size[0] > 400


def test_method_label_says_each_figure_once():
    """The demo's and bench's row labels: one format, every figure once."""
    from stagevar.tools.figures import method_label

    assert method_label("baseline", wall_ms=812.4, consistency={"semantic": 0.9}) == (
        "baseline (unpatched)\n812 ms per call\nsemantic cons. 0.90")
    label = method_label("var-d16", 2.0, 19.84, 0.471, {"semantic": 0.8, "texture": 0.5},
                         {"semantic": 0.9, "texture": 0.5}, skipping="[scale skipping ON]")
    assert label == ("var-d16  2.00x faster\nPSNR 19.8 dB, SSIM 0.47\nsemantic cons. 0.80 (-0.10)\n"
                     "texture cons. 0.50 (+0.00)\n[scale skipping ON]")
    assert method_label("slow", 0.8).startswith("slow  1.25x slower")


def test_demo_figure_note_says_what_the_rows_and_judges_are(monkeypatch, tmp_path):
    from stagevar.models import load_pretrained
    from stagevar.tools import demo as demo_mod

    seen = {}

    def capture(rows, row_labels, col_labels, out, title=None, note=None):
        seen.update(note=note, title=title, labels=row_labels)
        return "captured"

    monkeypatch.setattr(demo_mod, "image_grid_figure", capture)
    model = load_pretrained("stagevar-tiny-var")
    kw = dict(B=2, label_B=torch.tensor([0, 1]), g_seed=0, cfg=4.0, top_k=0, top_p=0.0)
    result = demo_mod.demo(model, [stagevar.preset("none")], kw, [0, 1], repeats=1, out=str(tmp_path / "d.png"),
                           title="T", trained=True)
    assert result.backend == "captured" and seen["title"] == "T" and len(seen["labels"]) == 2
    assert seen["note"].startswith("Rows: the unpatched model, then one per config, same seeds.")
    assert seen["note"].endswith(
        " Cons.: the share of the row an independent classifier assigns to the class asked for -- semantic: one that "
        "sees only 8x8 block means (class, colours, layout); texture: one that sees the full image (one image per "
        "class: a rough sign; see BENCHMARKS.md for the full evaluation).") and "Random weights" not in seen["note"]


def test_row_label_lines_are_one_line_apart():
    from stagevar.tools.figures import LABEL_PX, _layout, _line

    lay = _layout(1, 2, (64, 200), ["first line of the label\nsecond\nthird"], ["a", "b"], None, None,
                  lambda s, px, bold: 6 * len(s))
    ys = [y for x, y, t, px, bold, anchor in lay.texts if px == LABEL_PX]
    assert len(ys) >= 2 and all(b - a == _line(LABEL_PX) for a, b in zip(ys, ys[1:]))


def test_labels_at_the_edges_of_the_chart_are_placed_inside_it():
    """A point at the left edge is labelled to its right, one at the right edge to its left: a label
    box outside the axes costs its area outside, wherever it is."""
    pytest.importorskip("matplotlib")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from stagevar.tools.figures import Point, _place_labels

    fig = Figure(figsize=(6, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.set_xlim(0, 10)
    ax.set_ylim(0, 10)
    pts = [Point("a long label on the left", 0.2, 5.0), Point("a long label on the right", 9.8, 2.0)]
    renderer = fig.canvas.get_renderer()
    _place_labels(ax, pts, [0, 1], renderer)
    frame = ax.get_window_extent(renderer).extents
    boxes = {t.get_text(): t.get_window_extent(renderer).extents for t in ax.texts}
    assert sorted(boxes) == ["a long label on the left", "a long label on the right"]
    for b in boxes.values():
        assert frame[0] <= b[0] and b[2] <= frame[2], (b, frame)
