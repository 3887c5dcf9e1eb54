"""A tiny NumPy rasteriser for sweep figures: line plots and labelled image grids (no matplotlib).

Everything returns uint8 RGB images [H, W, 3] for `maestro_jax.video.write_png`. Text uses a
built-in 3 x 5 pixel font (digits, letters shown as capitals, and `.-+_=:/()%?`), scaled by an
integer factor; characters outside it are drawn as '?'.

Line plots put the swept values at evenly spaced x positions, labelled with the values (the same
layout for numeric sweeps such as N_D and for categorical ones such as the ablation modes); the
y axis spans the data with 10 % padding and carries three labelled ticks. NaN points are left out
(the line is broken there).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

# 3 x 5 glyphs, rows top to bottom, '#' = ink.
_GLYPHS = {
    "0": "### #.# #.# #.# ###", "1": ".#. ##. .#. .#. ###", "2": "##. ..# .#. #.. ###",
    "3": "##. ..# .#. ..# ##.", "4": "#.# #.# ### ..# ..#", "5": "### #.. ##. ..# ##.",
    "6": ".## #.. ### #.# ###", "7": "### ..# .#. .#. .#.", "8": "### #.# ### #.# ###",
    "9": "### #.# ### ..# ##.", "A": ".#. #.# ### #.# #.#", "B": "##. #.# ##. #.# ##.",
    "C": ".## #.. #.. #.. .##", "D": "##. #.# #.# #.# ##.", "E": "### #.. ##. #.. ###",
    "F": "### #.. ##. #.. #..", "G": ".## #.. #.# #.# .##", "H": "#.# #.# ### #.# #.#",
    "I": "### .#. .#. .#. ###", "J": "..# ..# ..# #.# .#.", "K": "#.# #.# ##. #.# #.#",
    "L": "#.. #.. #.. #.. ###", "M": "#.# ### ### #.# #.#", "N": "##. #.# #.# #.# #.#",
    "O": ".#. #.# #.# #.# .#.", "P": "##. #.# ##. #.. #..", "Q": ".#. #.# #.# ##. .##",
    "R": "##. #.# ##. #.# #.#", "S": ".## #.. .#. ..# ##.", "T": "### .#. .#. .#. .#.",
    "U": "#.# #.# #.# #.# ###", "V": "#.# #.# #.# #.# .#.", "W": "#.# #.# ### ### #.#",
    "X": "#.# #.# .#. #.# #.#", "Y": "#.# #.# .#. .#. .#.", "Z": "### ..# .#. #.. ###",
    ".": "... ... ... ... .#.", "-": "... ... ### ... ...", "+": "... .#. ### .#. ...",
    "_": "... ... ... ... ###", "=": "... ### ... ### ...", ":": "... .#. ... .#. ...",
    "/": "..# ..# .#. #.. #..", "(": ".#. #.. #.. #.. .#.", ")": ".#. ..# ..# ..# .#.",
    "%": "#.# ..# .#. #.. #.#", "?": "##. ..# .#. ... .#.", " ": "... ... ... ... ...",
}  # fmt: skip
_FONT = {
    ch: np.array([[c == "#" for c in row] for row in rows.split()], bool)
    for ch, rows in _GLYPHS.items()
}

# Series colours (RGB).
COLORS = np.array(
    [[31, 119, 180], [214, 39, 40], [44, 160, 44], [255, 127, 14], [148, 103, 189]], np.uint8
)
_BG, _AXIS, _GRID, _INK = 255, 40, 225, 20


def text_size(text: str, scale: int = 2) -> tuple[int, int]:
    """(height, width) in pixels of `text` drawn at `scale` (4 columns per character)."""
    return 5 * scale, max(len(text) * 4 * scale - scale, 0)


def draw_text(
    img: np.ndarray, x: int, y: int, text: str, color=(_INK, _INK, _INK), scale: int = 2
) -> np.ndarray:
    """Draw `text` with its top-left corner at (x, y) in place (clipped to the image)."""
    h, w = img.shape[:2]
    for i, ch in enumerate(text):
        g = _FONT.get(ch.upper(), _FONT["?"])
        g = np.kron(g, np.ones((scale, scale), bool))
        x0 = x + i * 4 * scale
        ys, xs = np.nonzero(g)
        ys, xs = ys + y, xs + x0
        ok = (ys >= 0) & (ys < h) & (xs >= 0) & (xs < w)
        img[ys[ok], xs[ok]] = color
    return img


def _stamp(img: np.ndarray, x: float, y: float, color, r: int) -> None:
    h, w = img.shape[:2]
    xi, yi = int(round(x)), int(round(y))
    img[max(yi - r, 0) : min(yi + r + 1, h), max(xi - r, 0) : min(xi + r + 1, w)] = color


def draw_line(img: np.ndarray, p0, p1, color, width: int = 1) -> None:
    """A straight segment from p0 = (x, y) to p1, `width` pixels thick, in place."""
    n = int(max(abs(p1[0] - p0[0]), abs(p1[1] - p0[1]))) + 1
    for t in np.linspace(0.0, 1.0, n + 1):
        _stamp(img, p0[0] + t * (p1[0] - p0[0]), p0[1] + t * (p1[1] - p0[1]), color, width // 2)


def format_value(v: float) -> str:
    """Three significant digits, no exponent for the usual metric ranges."""
    if not np.isfinite(v):
        return "nan"
    a = abs(v)
    if a == 0:
        return "0"
    if a >= 1000 or a < 1e-3:
        return f"{v:.2e}"
    digits = max(0, 2 - int(np.floor(np.log10(a))))
    return f"{v:.{digits}f}"


def line_plot(
    x_labels: Sequence[str],
    series: Mapping[str, Sequence[float]],
    *,
    title: str = "",
    x_title: str = "",
    height: int = 260,
    width: int = 400,
    scale: int = 2,
) -> np.ndarray:
    """Metric(s) vs swept parameter: one polyline with square markers per series.

    x_labels: [P] tick labels (the parameter values), series: {name: [P] values} (NaN = gap).
    Returns uint8 [height, width, 3]. A legend is drawn when there is more than one series.
    """
    n = len(x_labels)
    if n == 0 or not series:
        raise ValueError("line_plot needs at least one x value and one series")
    for name, ys in series.items():
        if len(ys) != n:
            raise ValueError(f"series {name!r} has {len(ys)} values for {n} x labels")
    img = np.full((height, width, 3), _BG, np.uint8)
    ch = 5 * scale
    left, right = 6 * 4 * scale + 8, 12
    top = ch + 10 if title else 8
    top += (ch + 6) * (len(series) > 1)
    bottom = ch * (2 if x_title else 1) + 16
    x0, x1, y0, y1 = left, width - right, top, height - bottom
    if x1 - x0 < 10 or y1 - y0 < 10:
        raise ValueError(f"plot of {height} x {width} is too small for its labels")
    vals = np.asarray([v for ys in series.values() for v in ys], np.float64)
    finite = vals[np.isfinite(vals)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    if hi - lo < 1e-12:
        pad = max(abs(hi) * 0.1, 0.5)
    else:
        pad = (hi - lo) * 0.1
    lo, hi = lo - pad, hi + pad
    ypix = lambda v: y1 - (v - lo) / (hi - lo) * (y1 - y0)
    xpix = lambda i: x0 + (i + 0.5) * (x1 - x0) / n
    # grid + y ticks
    for v in np.linspace(lo + pad, hi - pad, 3) if finite.size else [lo, hi]:
        yp = int(round(ypix(v)))
        img[yp, x0:x1] = _GRID
        label = format_value(float(v))
        _, tw = text_size(label, scale)
        draw_text(img, x0 - tw - 6, yp - ch // 2, label, scale=scale)
    # axes
    img[y0 : y1 + 1, x0] = _AXIS
    img[y1, x0 : x1 + 1] = _AXIS
    for i, lab in enumerate(x_labels):
        xp = int(round(xpix(i)))
        img[y1 : y1 + 4, xp] = _AXIS
        _, tw = text_size(str(lab), scale)
        draw_text(img, xp - tw // 2, y1 + 6, str(lab), scale=scale)
    if x_title:
        _, tw = text_size(x_title, scale)
        draw_text(img, (x0 + x1 - tw) // 2, y1 + ch + 12, x_title, scale=scale)
    if title:
        _, tw = text_size(title, scale)
        draw_text(img, (width - tw) // 2, 4, title, scale=scale)
    for k, (name, ys) in enumerate(series.items()):
        color = tuple(int(c) for c in COLORS[k % len(COLORS)])
        pts = [(xpix(i), ypix(float(v))) if np.isfinite(v) else None for i, v in enumerate(ys)]
        for a, b in zip(pts, pts[1:]):
            if a is not None and b is not None:
                draw_line(img, a, b, color, width=2)
        for p in pts:
            if p is not None:
                _stamp(img, p[0], p[1], color, 3)
        if len(series) > 1:
            lx = x0 + 4 + k * ((x1 - x0) // len(series))
            ly = (ch + 10 if title else 8) + 1
            _stamp(img, lx + 3, ly + ch // 2, color, 3)
            draw_text(img, lx + 10, ly, name, scale=scale)
    return img


def image_grid(
    rows: Sequence[np.ndarray],
    row_labels: Sequence[str] | None = None,
    *,
    pad: int = 2,
    scale: int = 2,
) -> np.ndarray:
    """Rows of frames side by side: rows [R] of uint8 [N, h, w, 3] (same h, w; N may differ)
    -> one image with an optional label column on the left. Returns uint8 [H, W, 3]."""
    if not rows:
        raise ValueError("image_grid needs at least one row")
    h, w = rows[0].shape[1:3]
    for r in rows:
        if r.ndim != 4 or r.shape[1:] != (h, w, 3):
            raise ValueError(f"every row must be [N, {h}, {w}, 3], got {r.shape}")
    cols = max(r.shape[0] for r in rows)
    label_w = 0
    if row_labels is not None:
        if len(row_labels) != len(rows):
            raise ValueError(f"{len(row_labels)} labels for {len(rows)} rows")
        label_w = max(text_size(str(s), scale)[1] for s in row_labels) + 2 * pad + 4
    out = np.full((len(rows) * (h + pad) + pad, label_w + cols * (w + pad) + pad, 3), _BG, np.uint8)
    for i, r in enumerate(rows):
        top = pad + i * (h + pad)
        if row_labels is not None:
            draw_text(out, pad + 2, top + max(0, (h - 5 * scale) // 2), str(row_labels[i]),
                      scale=scale)  # fmt: skip
        for j, f in enumerate(r):
            left = label_w + pad + j * (w + pad)
            out[top : top + h, left : left + w] = f
    return out
