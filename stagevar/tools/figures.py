"""Figures that explain themselves: labelled image grids and speed-vs-quality (Pareto) charts.

:func:`image_grid_figure` lays image rows out with a label per row (method, speedup, quality)
and per column (class or prompt) and a title; it draws with matplotlib when installed, else with
PIL, else writes the bare grid (a PNG writer of its own, so it needs neither). :func:`pareto_chart`
plots one point per method, speedup against quality, and marks the methods no other beats on
both (:func:`pareto_front`); it needs matplotlib.
"""
from __future__ import annotations

import math
import struct
import textwrap
import zlib
from dataclasses import dataclass
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import torch

__all__ = ["image_grid_figure", "method_label", "grid_array", "write_png", "condition_labels", "Point", "pareto_front",
           "pareto_chart", "BACKENDS"]

BACKENDS = ("auto", "matplotlib", "pil", "plain")

MIN_CELL = 128  # images are upscaled (nearest neighbour, whole factors) until their longer side reaches this
TITLE_PX, LABEL_PX, COL_PX, NOTE_PX = 17, 14, 12, 13  # text sizes in pixels
GAP = 4  # pixels between images
PAD = 10  # pixels around the grid and between text blocks


# ----------------------------------------------------------------------------------------------
# the grid itself, and a PNG writer that needs no imaging library

def grid_array(rows: Sequence[torch.Tensor], scale: int = 1, gap: int = 0) -> np.ndarray:
    """Image rows as one ``(H_total, W_total, 3)`` uint8 array.

    ``rows``: tensors ``(B, 3, H, W)`` in [0, 1], the same shape; row ``r`` of the result holds
    ``rows[r]``'s images left to right, each upscaled ``scale`` times by nearest neighbour, with
    ``gap`` white pixels between images.
    """
    imgs = torch.stack([torch.as_tensor(r).detach().float().clamp(0, 1).cpu() for r in rows])  # (R, B, 3, H, W)
    imgs = imgs.repeat_interleave(scale, dim=-2).repeat_interleave(scale, dim=-1)
    R, B, _, h, w = imgs.shape
    out = torch.ones(3, R * h + (R - 1) * gap, B * w + (B - 1) * gap)
    for r in range(R):
        for b in range(B):
            out[:, r * (h + gap):r * (h + gap) + h, b * (w + gap):b * (w + gap) + w] = imgs[r, b]
    return (out.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def write_png(arr: np.ndarray, path: str) -> None:
    """Write an ``(H, W, 3)`` uint8 array as an RGB PNG (zlib only: works without PIL)."""
    h, w, _ = arr.shape
    raw = np.concatenate([np.zeros((h, 1), np.uint8), np.ascontiguousarray(arr, np.uint8).reshape(h, w * 3)], 1)

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
                + chunk(b"IDAT", zlib.compress(raw.tobytes(), 6)) + chunk(b"IEND", b""))


# ----------------------------------------------------------------------------------------------
# the labelled figure

def condition_labels(conditions: Sequence, class_names: Optional[Sequence[str]] = None) -> List[str]:
    """Column labels for generation conditions: class labels by name (``class_names``) or as
    ``"class i"``, prompts as their text."""
    def one(c) -> str:
        if isinstance(c, str):
            return c
        c = int(c)
        return class_names[c] if class_names and 0 <= c < len(class_names) else f"class {c}"

    return [one(c) for c in conditions]


_Measure = Callable[[str, int, bool], float]  # (text, font size px, bold) -> width px


def method_label(name: str, speedup: Optional[float] = None, psnr: Optional[float] = None,
                 ssim: Optional[float] = None, consistency: Optional[Dict[str, float]] = None,
                 base_consistency: Optional[Dict[str, float]] = None, wall_ms: Optional[float] = None,
                 skipping: str = "") -> str:
    """One row label of an image figure (the demo's and ``stagevar bench``'s): the unpatched call
    (``speedup`` None: its time per call) or a method (speedup, PSNR/SSIM to the unpatched image),
    then each view's class consistency (with its change against ``base_consistency``)."""
    if speedup is None:
        lines = [f"{name} (unpatched)"] + ([f"{wall_ms:.0f} ms per call"] if wall_ms is not None else [])
    else:
        pace = f"{speedup:.2f}x faster" if speedup >= 1 else f"{1 / speedup:.2f}x slower"
        lines = [f"{name}  {pace}"]
        if psnr is not None and ssim is not None:
            lines.append(f"PSNR {psnr:.1f} dB, SSIM {ssim:.2f}")
    for view, v in (consistency or {}).items():
        change = f" ({v - base_consistency[view]:+.2f})" if base_consistency and view in base_consistency else ""
        lines.append(f"{view} cons. {v:.2f}{change}")
    if skipping:
        lines.append(skipping)
    return "\n".join(lines)


def _wrap(text: str, width: float, measure: Callable[[str], float], max_lines: int) -> List[str]:
    """``text`` (its own line breaks kept) broken at spaces, and inside words too long for a line,
    into lines ``measure`` finds at most ``width`` wide; past ``max_lines`` the last is cut with an
    ellipsis."""
    lines: List[str] = []
    for part in text.split("\n"):
        line: Optional[str] = None
        for word in part.split(" "):
            if line is not None and measure(line + " " + word) <= width:
                line += " " + word
                continue
            if line is not None:
                lines.append(line)
            line = word
            while len(line) > 1 and measure(line) > width:
                cut = 1
                while cut < len(line) - 1 and measure(line[:cut + 1]) <= width:
                    cut += 1
                lines.append(line[:cut])
                line = line[cut:]
        lines.append(line or "")
    if len(lines) > max_lines:
        lines, last = lines[:max_lines], lines[max_lines - 1]
        while last and measure(last + "\u2026") > width:
            last = last[:-1]
        lines[-1] = last.rstrip() + "\u2026"
    return lines


@dataclass
class _Layout:
    """Where everything goes, in pixels from the top left."""
    width: int
    height: int
    grid_xy: Tuple[int, int]  # the grid's top-left corner
    texts: List[Tuple[float, int, str, int, bool, str]]  # (x, top, text, size px, bold, "l" left / "c" centred on x)


def _line(px: int) -> int:
    return round(px * 1.3)


def _layout(n_rows: int, n_cols: int, cell: Tuple[int, int], row_labels: Sequence[str],
            col_labels: Sequence[str], title: Optional[str], note: Optional[str], measure: _Measure) -> _Layout:
    (cw, ch), texts = cell, []
    rows = [_wrap(t, 420, lambda s: measure(s, LABEL_PX, True), max(1, ch // _line(LABEL_PX))) for t in row_labels]
    left = math.ceil(2 * PAD + max(measure(s, LABEL_PX, True) for r in rows for s in r))
    grid_w, grid_h = n_cols * cw + (n_cols - 1) * GAP, n_rows * ch + (n_rows - 1) * GAP
    width = left + grid_w + PAD
    y = PAD
    for t in _wrap(title, width - 2 * PAD, lambda s: measure(s, TITLE_PX, True), 3) if title else []:
        texts.append((PAD, y, t, TITLE_PX, True, "l"))
        y += _line(TITLE_PX)
    cols = [_wrap(t, cw, lambda s: measure(s, COL_PX, False), 3) for t in col_labels]
    most = max(len(c) for c in cols)
    for b, lines in enumerate(cols):  # bottom-aligned on the grid
        y0 = y + PAD // 2 + (most - len(lines)) * _line(COL_PX)
        texts += [(left + b * (cw + GAP) + cw / 2, y0 + i * _line(COL_PX), t, COL_PX, False, "c")
                  for i, t in enumerate(lines)]
    top = y + PAD // 2 + most * _line(COL_PX) + PAD // 2
    for r, lines in enumerate(rows):  # centred on the row; the first line (method, speedup) bold
        y0 = top + r * (ch + GAP) + (ch - len(lines) * _line(LABEL_PX)) // 2
        texts += [(PAD, y0 + i * _line(LABEL_PX), t, LABEL_PX, i == 0, "l") for i, t in enumerate(lines)]
    y = top + grid_h + PAD
    notes = _wrap(note, width - 2 * PAD, lambda s: measure(s, NOTE_PX, False), 6) if note else []
    for t in notes:
        texts.append((PAD, y, t, NOTE_PX, False, "l"))
        y += _line(NOTE_PX)
    return _Layout(width, y + (PAD if notes else 0), (left, top), texts)


def matplotlib_figure():
    """matplotlib's Figure (drawn without pyplot: no global state, the user's backend untouched), or None."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        return None
    return Figure


def _pil():
    try:
        from PIL import Image, ImageDraw, ImageFont
    except ImportError:
        return None
    return Image, ImageDraw, ImageFont


def _draw_matplotlib(Figure, grid: np.ndarray, lay_for, path: str) -> None:
    from matplotlib.font_manager import FontProperties
    from matplotlib.textpath import TextPath

    def measure(s: str, px: int, bold: bool) -> float:
        if not s.strip():
            return 0.0
        prop = FontProperties(weight="bold" if bold else "normal")
        return TextPath((0, 0), s, size=px, prop=prop).get_extents().width

    lay, dpi = lay_for(measure), 100
    fig = Figure(figsize=(lay.width / dpi, lay.height / dpi), dpi=dpi, facecolor="white")
    # figimage places pixels 1:1 from the bottom left; text positions are figure fractions
    fig.figimage(grid, xo=lay.grid_xy[0], yo=lay.height - lay.grid_xy[1] - grid.shape[0], origin="upper")
    for x, y, t, px, bold, anchor in lay.texts:
        fig.text(x / lay.width, 1 - y / lay.height, t, fontsize=px * 72 / dpi, va="top",
                 ha="center" if anchor == "c" else "left", fontweight="bold" if bold else "normal")
    fig.savefig(path, dpi=dpi, facecolor="white")


def _draw_pil(pil, grid: np.ndarray, lay_for, path: str) -> None:
    Image, ImageDraw, ImageFont = pil
    fonts = {}

    def font(px: int):
        if px not in fonts:
            try:
                fonts[px] = ImageFont.load_default(size=px)
            except TypeError:  # Pillow < 10.1: its small bitmap font only
                fonts[px] = ImageFont.load_default()
        return fonts[px]

    lay = lay_for(lambda s, px, bold: font(px).getlength(s))  # Pillow's font has no bold face
    img = Image.new("RGB", (lay.width, lay.height), "white")
    img.paste(Image.fromarray(grid), lay.grid_xy)
    draw = ImageDraw.Draw(img)
    for x, y, t, px, bold, anchor in lay.texts:
        draw.text((x, y), t, fill="black", font=font(px), anchor="ma" if anchor == "c" else "la")
    img.save(path)


def image_grid_figure(rows: Sequence[torch.Tensor], row_labels: Sequence[str], col_labels: Sequence[str],
                      path: str, title: Optional[str] = None, note: Optional[str] = None,
                      backend: str = "auto") -> str:
    """Write image rows as one labelled PNG and return the backend that wrote it.

    Args:
        rows: tensors ``(B, 3, H, W)`` in [0, 1], one per row, all the same shape; images are
            upscaled by nearest neighbour (whole factors) until the longer side is at least
            :data:`MIN_CELL` pixels, so that labels fit and pixels stay visible.
        row_labels: one per row, left of it (``"\\n"`` starts a line; the first line is bold).
        col_labels: one per image column, above it (wrapped to the image width, at most 3 lines).
        title: above everything (model, batch, machine); note: below the grid (how to read it).
        backend: ``"matplotlib"``, ``"pil"`` (``ImportError`` if not installed), ``"plain"`` (the
            upscaled grid without text; needs no library) or ``"auto"``: the first installed.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend {backend!r}: choose one of {', '.join(BACKENDS)}")
    if len(row_labels) != len(rows) or len(col_labels) != rows[0].shape[0]:
        raise ValueError(f"{len(row_labels)} row labels for {len(rows)} rows and {len(col_labels)} column labels "
                         f"for {rows[0].shape[0]} images per row")
    h, w = rows[0].shape[-2:]
    scale = max(1, -(-MIN_CELL // max(h, w)))
    grid = grid_array(rows, scale=scale, gap=GAP)

    def lay_for(measure: _Measure) -> _Layout:
        return _layout(len(rows), rows[0].shape[0], (w * scale, h * scale), row_labels, col_labels, title, note,
                       measure)

    for name, installed, draw, package in (("matplotlib", matplotlib_figure, _draw_matplotlib, "matplotlib"),
                                           ("pil", _pil, _draw_pil, "pillow")):
        if backend not in ("auto", name):
            continue
        lib = installed()
        if lib is not None:
            draw(lib, grid, lay_for, path)
            return name
        if backend == name:
            raise ImportError(f"backend {name!r} is not installed: pip install {package}")
    write_png(grid, path)
    return "plain"


# ----------------------------------------------------------------------------------------------
# speed against quality

class Point(NamedTuple):
    """One method on a speed-quality chart: both coordinates are better when larger."""
    label: str
    x: float  # speedup
    y: float  # quality, or its change against the baseline
    se: Optional[float] = None  # standard error of y, drawn as a +-1 SE bar


def pareto_front(points: Sequence[Tuple[float, float]]) -> List[int]:
    """Indices of the points no other point dominates (at least as large in both coordinates and
    larger in one), ordered by x; equal points are all kept."""
    front = [i for i, (x, y) in enumerate(points)
             if not any(x2 >= x and y2 >= y and (x2 > x or y2 > y) for x2, y2 in points)]
    return sorted(front, key=lambda i: (points[i][0], -points[i][1]))


def pareto_chart(points: Sequence[Sequence], path: str, xlabel: str = "speedup (x)", ylabel: str = "quality",
                 title: Optional[str] = None) -> bool:
    """Plot speed against quality, one labelled point per method, the Pareto front marked.

    ``points``: :class:`Point` or tuples ``(label, x, y[, se])``. Front points are drawn strong and
    joined by a line, the others faded; ``se`` adds a +-1 SE bar. Labels go where they cover the
    fewest other labels, points and bars. Returns False (writing nothing) when matplotlib is not
    installed.
    """
    Figure = matplotlib_figure()
    if Figure is None:
        return False
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    pts = [Point(*p) for p in points]
    if not pts:
        raise ValueError("pareto_chart needs at least one point")
    front = pareto_front([(p.x, p.y) for p in pts])
    fig = Figure(figsize=(7.5, 5.6), dpi=110, facecolor="white")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.grid(alpha=0.3)
    ax.axvline(1.0, color="0.6", lw=0.8, ls=":")
    ax.plot([pts[i].x for i in front], [pts[i].y for i in front], color="tab:blue", lw=1.5, zorder=2,
            label="Pareto front: no other method is both faster and better")
    se_label = "+-1 standard error"
    for i, p in enumerate(pts):
        on = i in front
        style = dict(color="tab:blue" if on else "0.55", alpha=1.0 if on else 0.6, zorder=3 if on else 1)
        if p.se:
            ax.errorbar(p.x, p.y, yerr=p.se, fmt="none", capsize=3, lw=1, label=se_label, **style)
            se_label = None
        ax.scatter([p.x], [p.y], s=55 if on else 28, edgecolors="black" if on else "none", **style)
    ax.set_xlabel("\n".join(textwrap.wrap(xlabel, 90)))
    ax.set_ylabel("\n".join(textwrap.wrap(ylabel, 55)))
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=2, frameon=False)
    if title:
        ax.set_title("\n".join(textwrap.wrap(title, 80)), fontsize=9.5)
    ax.margins(x=0.14, y=0.08)
    fig.tight_layout()
    _place_labels(ax, pts, front, fig.canvas.get_renderer())
    fig.savefig(path, facecolor="white")
    return True


_OFFSETS = [(6, 4, "left", "bottom"), (6, -4, "left", "top"), (-6, 4, "right", "bottom"),
            (-6, -4, "right", "top"), (0, 9, "center", "bottom"), (0, -9, "center", "top")]


def _place_labels(ax, pts: List[Point], front: List[int], renderer) -> None:
    """Annotate each point at the offset (of :data:`_OFFSETS`) whose label box overlaps least what
    is already there: markers, error bars, the front line, labels placed before (front first)."""
    def box(x0, y0, x1, y1):
        return (min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))

    def overlap(a, b) -> float:
        return max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))

    to_px = ax.transData.transform
    taken = []
    for p in pts:
        (x, y), = to_px([(p.x, p.y)])
        taken.append(box(x - 5, y - 5, x + 5, y + 5))
        if p.se:
            (_, lo), (_, hi) = to_px([(p.x, p.y - p.se), (p.x, p.y + p.se)])
            taken.append(box(x - 4, lo, x + 4, hi))
    line = to_px([(pts[i].x, pts[i].y) for i in front])
    for (xa, ya), (xb, yb) in zip(line[:-1], line[1:]):
        taken += [box(xa + t * (xb - xa) - 2, ya + t * (yb - ya) - 2, xa + t * (xb - xa) + 2, ya + t * (yb - ya) + 2)
                  for t in np.linspace(0, 1, 25)]
    frame = ax.get_window_extent(renderer).extents
    for i in front + [i for i in range(len(pts)) if i not in front]:
        on, best = i in front, None
        for dx, dy, ha, va in _OFFSETS:
            t = ax.annotate(pts[i].label, (pts[i].x, pts[i].y), xytext=(dx, dy), textcoords="offset points",
                            ha=ha, va=va, fontsize=8.5, color="black" if on else "0.35",
                            fontweight="bold" if on else "normal")
            b = tuple(t.get_window_extent(renderer).extents)
            area = (b[2] - b[0]) * (b[3] - b[1])
            cost = sum(overlap(b, o) for o in taken) + 3 * (area - overlap(b, frame))
            if best is None or cost < best[0]:
                if best is not None:
                    best[1].remove()
                best = (cost, t, b)
            else:
                t.remove()
        taken.append(best[2])
