"""Seeded synthetic surgical-marker strokes on dermoscopy images, with their exact masks (for the ink detector's
benchmark and unit tests).

A stroke is dye on skin, drawn by Beer-Lambert: each channel is multiplied by the ink's transmittance raised to
its local density, ``out_c = skin_c · T_c ** d`` (d in [0, 1.2], soft edges), so the skin's texture, shading and
white balance show through as they do under real marker ink (Winkler et al. 2019, JAMA Dermatol 155:1135, use
gentian-violet surgical markers). Colours (transmittance R, G, B at full density, measured by eye on
HAM10000 / ISIC marks): purple (0.50, 0.22, 0.62), blue (0.22, 0.40, 0.78), black (0.16, 0.15, 0.18).
Shapes: line (straight, length 25–50 % of the side), curve (a quadratic Bézier arc, 30–60 %), circle (an
ellipse round the lesion, 240–360°, outside it) and dots (3–6 round dots, diameter 1–1.5 × the width).
Density (the exponent d) 0.45–1.1 per stroke, ±15 % along it; edges blurred by 8 % of the width; noise σ 2. Every
placement keeps the stroke at least `margin` (4 % of the side) away from the lesion mask; up to 60 tries, then
the shape falls back to a line, then dots, then one dot where most room is (`Stroke.shape` says what was drawn).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage as ndi

COLOURS: dict[str, tuple[float, float, float]] = {
    "purple": (0.50, 0.22, 0.62),
    "blue": (0.22, 0.40, 0.78),
    "black": (0.16, 0.15, 0.18),
}
SHAPES = ("line", "curve", "circle", "dots")


@dataclass
class Stroke:
    """What was drawn: the image (uint8 H×W×3), the stroke's bool mask (H×W, density > 0.5) and its parameters
    (width in pixels of this image, colour, shape actually drawn, density)."""

    image: np.ndarray
    mask: np.ndarray
    width: float
    colour: str
    shape: str
    density: float


def _polyline(pts: np.ndarray, hw: tuple[int, int], width: float, ss: int) -> np.ndarray:
    """float mask in [0, 1] of a polyline of `width` px, drawn at `ss`× and averaged down (anti-aliased)."""
    h, w = hw
    im = Image.new("L", (w * ss, h * ss), 0)
    d = ImageDraw.Draw(im)
    p = [(float(x) * ss, float(y) * ss) for x, y in pts]
    lw = max(1, round(width * ss))
    d.line(p, fill=255, width=lw, joint="curve")
    r = lw / 2
    for x, y in (p[0], p[-1]):  # round caps
        d.ellipse([x - r, y - r, x + r, y + r], fill=255)
    return np.asarray(im.resize((w, h), Image.BOX), np.float32) / 255.0


def _dots(centres: np.ndarray, diam: np.ndarray, hw: tuple[int, int], ss: int) -> np.ndarray:
    h, w = hw
    im = Image.new("L", (w * ss, h * ss), 0)
    d = ImageDraw.Draw(im)
    for (x, y), dm in zip(centres, diam):
        r = dm * ss / 2
        d.ellipse([x * ss - r, y * ss - r, x * ss + r, y * ss + r], fill=255)
    return np.asarray(im.resize((w, h), Image.BOX), np.float32) / 255.0


def _length(pts: np.ndarray) -> float:
    return float(np.hypot(*np.diff(pts, axis=0).T).sum())


def _shape(shape: str, rng: np.random.Generator, hw: tuple[int, int], width: float, lesion: np.ndarray,
           free: np.ndarray) -> tuple[np.ndarray, float]:
    """(float mask in [0, 1], its expected area if nothing were clipped by the image's edge)."""
    h, w = hw
    n = min(h, w)
    if shape == "line":
        L = rng.uniform(0.25, 0.5) * n
        c = rng.uniform([0.1 * w, 0.1 * h], [0.9 * w, 0.9 * h])
        a = rng.uniform(0, math.pi)
        u = np.array([math.cos(a), math.sin(a)]) * L / 2
        pts = np.array([c - u, c + u])
        return _polyline(pts, hw, width, 4), width * _length(pts)
    if shape == "curve":
        L = rng.uniform(0.3, 0.6) * n
        c = rng.uniform([0.1 * w, 0.1 * h], [0.9 * w, 0.9 * h])
        a = rng.uniform(0, math.pi)
        u = np.array([math.cos(a), math.sin(a)]) * L / 2
        nrm = np.array([-u[1], u[0]]) * rng.uniform(0.3, 0.8) * rng.choice([-1, 1])
        t = np.linspace(0, 1, 40)[:, None]
        p0, p1, p2 = c - u, c + nrm, c + u
        pts = (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t ** 2 * p2
        return _polyline(pts, hw, width, 4), width * _length(pts)
    if shape == "circle":
        yy, xx = np.nonzero(lesion) if lesion.any() else (np.array([h / 2]), np.array([w / 2]))
        cy, cx = yy.mean(), xx.mean()
        ry = (yy.max() - yy.min()) / 2 + 1 if lesion.any() else 0.1 * n
        rx = (xx.max() - xx.min()) / 2 + 1 if lesion.any() else 0.1 * n
        gap = rng.uniform(0.06, 0.12) * n + width
        ry, rx = ry + gap, rx + gap
        span = rng.uniform(240, 360)
        a0 = rng.uniform(0, 360)
        t = np.deg2rad(np.linspace(a0, a0 + span, 90))
        wob = 1 + 0.04 * np.sin(3 * t + rng.uniform(0, 6.3))  # hand-drawn
        pts = np.c_[cx + rx * wob * np.cos(t), cy + ry * wob * np.sin(t)]
        return _polyline(pts, hw, width, 4), width * _length(pts)
    k = int(rng.integers(3, 7))
    diam = width * rng.uniform(1.0, 1.5, k)
    ok = np.argwhere(free > diam.max() / 2 + 1)  # centres far enough from the lesion and the edge
    if len(ok) == 0:
        return np.zeros(hw, np.float32), 1.0
    centres = ok[rng.integers(0, len(ok), k)][:, ::-1].astype(float)
    return _dots(centres, diam, hw, 4), float(np.sum(np.pi * diam ** 2 / 4))


def draw_stroke(image: np.ndarray, lesion: np.ndarray, rng: np.random.Generator, width: float,
                colour: str = "purple", shape: str = "curve", margin: float = 0.04) -> Stroke:
    """Draw one marker stroke on `image` (uint8 H×W×3, not modified) away from `lesion` (bool H×W).

    width: stroke width (dot diameter) in pixels of this image (e.g. 6–20 at 224 px). colour: a key of
    `COLOURS`; shape: one of `SHAPES`. The stroke keeps `margin` × the short side away from the lesion, and at
    least 80 % of it lies inside the image (dots: wholly inside). Raises ValueError on an unknown colour or shape."""
    if colour not in COLOURS:
        raise ValueError(f"draw_stroke: colour must be one of {sorted(COLOURS)}, got {colour!r}")
    if shape not in SHAPES:
        raise ValueError(f"draw_stroke: shape must be one of {SHAPES}, got {shape!r}")
    h, w = image.shape[:2]
    n = min(h, w)
    keep_out = ndi.binary_dilation(lesion, iterations=max(1, round(margin * n))) if lesion.any() else lesion
    inner = np.zeros((h, w), bool)
    inner[1:-1, 1:-1] = True
    free = ndi.distance_transform_edt(inner & ~keep_out)  # distance to the lesion zone or the edge
    drawn, m = shape, None
    for attempt in range(60):
        if attempt == 40 and shape in ("circle", "curve"):
            drawn = "line"
        if attempt == 50:
            drawn = "dots"
        cand, expected = _shape(drawn, rng, (h, w), width, lesion, free)
        area = cand.sum()
        if area < 0.8 * expected or (cand * keep_out).sum() > 0:
            continue
        m = cand
        break
    if m is None:  # nothing fits (a lesion filling the image): one dot where there is most room
        y, x = np.unravel_index(int(np.argmax(free)), free.shape)
        m = _dots(np.array([[x, y]], float), np.array([min(width, 2 * free[y, x])]), (h, w), 4) * ~keep_out
        drawn = "dots"
    dens = float(rng.uniform(0.45, 1.1))
    # density varies along the stroke (pressure, drying) and the edges are soft
    var = ndi.gaussian_filter(rng.normal(0, 1, (h, w)), 0.05 * n)
    var = 1 + 0.15 * var / (var.std() + 1e-9)
    d = ndi.gaussian_filter(m, max(0.3, 0.08 * width)) * dens * np.clip(var, 0.7, 1.3)
    t = np.asarray(COLOURS[colour], np.float32)
    out = image.astype(np.float32) * t[None, None, :] ** d[..., None]
    out += rng.normal(0, 2.0, out.shape) * (d[..., None] > 0.05)
    return Stroke(out.clip(0, 255).astype(np.uint8), m > 0.5, float(width), colour, drawn, dens)
