"""Classical detectors for chest radiographs: `lungs` (target heuristic for frontal views) and `text`
(burned-in text, lead markers "L"/"R", "PORTABLE", scores, arrows, panel letters). No training data; sizes are
relative to the image side.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from ._util import gray, otsu, px, to_float
from .registry import RegionContext, RegionResult, register_region


def _gray(image: np.ndarray, cache: dict | None) -> np.ndarray:
    key = ("gray", image.shape, image.ctypes.data)
    if cache is not None and key in cache:
        return cache[key]
    g = gray(to_float(image))
    if cache is not None:
        cache[key] = g
    return g


# --------------------------------------------------------------------------------------------- lungs

def lung_mask(image: np.ndarray, cache: dict | None = None) -> tuple[np.ndarray | None, float]:
    """(bool mask of both lungs or None, score). Lungs are the two large dark fields inside the brighter body:
    percentile-normalise, smooth, Otsu inside the central window, drop components hugging the image edge,
    keep the largest component on each side of the midline, fill holes and smooth."""
    g = _gray(image, cache)
    n = g.shape[0]
    lo, hi = np.percentile(g, (1, 99))
    g = np.clip((g - lo) / max(hi - lo, 1e-3), 0, 1)
    g = ndi.gaussian_filter(g, max(0.7, 0.012 * n))
    c0, c1 = px(0.1, n), n - px(0.1, n)
    t = otsu(g[c0:c1, c0:c1])
    dark = g < t
    dark = ndi.binary_opening(dark, iterations=px(0.012, n))
    lab, k = ndi.label(dark)
    if k == 0:
        return None, 0.0
    idx = np.arange(1, k + 1)
    area = ndi.sum_labels(np.ones_like(g), lab, idx) / (n * n)
    yy, xx = np.mgrid[0:n, 0:n]
    cy = ndi.mean(yy, lab, idx) / n
    cx = ndi.mean(xx, lab, idx) / n
    edge = np.zeros((n, n), bool)
    e = px(0.02, n)
    edge[:e] = edge[-e:] = True
    edge[:, :e] = edge[:, -e:] = True
    edge_share = ndi.sum_labels(edge, lab, idx) / np.maximum(ndi.sum_labels(np.ones_like(g), lab, idx), 1)
    # perimeter share on the edge: background air hugs the edge, lungs at most touch it
    ok = (area > 0.01) & (cy > 0.15) & (cy < 0.8) & (edge_share < 0.08)
    out = np.zeros((n, n), bool)
    picked = 0
    for side in (cx < 0.5, cx >= 0.5):
        cand = idx[ok & side]
        if cand.size:
            best = cand[int(np.argmax(area[cand - 1]))]
            out |= lab == best
            picked += 1
    if not out.any():
        return None, 0.0
    out = ndi.binary_fill_holes(out)
    out = ndi.binary_closing(out, iterations=px(0.03, n), border_value=0) | out
    out = ndi.binary_fill_holes(out)
    inside = float(g[out].mean())
    score = (1.0 - inside) * picked / 2
    return out, score


@register_region("lungs", kind="target", params={"min_area": 0.05})
def lungs(image: np.ndarray, ctx: RegionContext) -> RegionResult:
    """Lung-field heuristic for frontal chest radiographs (used when no lung mask is given)."""
    m, score = lung_mask(image, ctx.cache)
    if m is None or m.mean() < ctx.params["min_area"]:
        return RegionResult(None, score, False, "heuristic: no lung fields found")
    return RegionResult(m, score, True, "heuristic")


# --------------------------------------------------------------------------------------------- text

def text_mask(image: np.ndarray, cache: dict | None = None, contrast: float = 0.18, max_h: float = 0.14,
              max_w: float = 0.45, min_area: float = 0.00015, border: float = 0.3) -> tuple[np.ndarray, float]:
    """(bool mask, score) of burned-in text and markers: small, flat, high-contrast components with sharp
    edges, weighted towards the border. Both polarities (white text, black text on a light box)."""
    g = _gray(image, cache)
    n = g.shape[0]
    k = 2 * px(0.035, n, 3) + 1
    opened = ndi.maximum_filter(ndi.minimum_filter(g, size=k), size=k)
    closed = ndi.minimum_filter(ndi.maximum_filter(g, size=k), size=k)
    wth = g - opened  # bright small things
    bth = closed - g  # dark small things
    # sharp edges: strong 1-pixel gradient relative to the local contrast
    gy, gx = np.gradient(g)
    grad = np.hypot(gx, gy)
    best = 0.0
    mask = np.zeros((n, n), bool)
    yy, xx = np.mgrid[0:n, 0:n]
    dist_edge = np.minimum(np.minimum(yy, n - 1 - yy), np.minimum(xx, n - 1 - xx)) / n
    for th, polarity in ((wth, 1), (bth, -1)):
        cand = th > contrast
        lab, m = ndi.label(cand)
        if m == 0:
            continue
        objs = ndi.find_objects(lab)
        for i, sl in enumerate(objs, start=1):
            hh = sl[0].stop - sl[0].start
            ww = sl[1].stop - sl[1].start
            if hh > max_h * n or ww > max_w * n:
                continue
            if sl[0].start == 0 or sl[1].start == 0 or sl[0].stop == n or sl[1].stop == n:
                continue  # cut by the image edge: background / body outline, not a marker
                continue
            comp = lab[sl] == i
            if not _isolated(g, sl, comp, polarity, contrast, n):
                continue
            a = int(comp.sum())
            if a < max(3, min_area * n * n):
                continue
            vals = th[sl][comp]
            c = float(np.percentile(vals, 90))
            flat = 1.0 - min(1.0, float(np.std(g[sl][comp])) / max(c, 1e-3))  # uniform ink
            sharp = min(1.0, float(grad[sl][comp].max()) / max(c, 1e-3))     # step edge, not a gradient
            d = float(dist_edge[sl][comp].min())
            loc = 1.0 if d < border else 0.4
            s = c * (0.4 + 0.6 * flat) * sharp * loc
            best = max(best, s)
            if s > contrast * 0.35:
                mask[sl] |= comp
    if mask.any():
        mask = ndi.binary_dilation(mask, iterations=px(0.01, n))
    return mask, best


def _isolated(g: np.ndarray, sl, comp: np.ndarray, polarity: int, contrast: float, n: int) -> bool:
    """True when the object, thresholded halfway between itself and its surround, stays inside a window of
    twice its size (a marker), False when it runs on (the tip of a larger structure)."""
    hh = sl[0].stop - sl[0].start
    ww = sl[1].stop - sl[1].start
    m = max(hh, ww, 3)
    y0, y1 = max(0, sl[0].start - m), min(n, sl[0].stop + m)
    x0, x1 = max(0, sl[1].start - m), min(n, sl[1].stop + m)
    win = g[y0:y1, x0:x1] * polarity
    obj = float(np.median(g[sl][comp])) * polarity
    level = obj - 0.5 * contrast
    lab, _ = ndi.label(win > level)
    inner = np.zeros(win.shape, bool)
    inner[sl[0].start - y0: sl[0].stop - y0, sl[1].start - x0: sl[1].stop - x0] = comp
    ids = np.unique(lab[inner & (lab > 0)])
    if ids.size == 0:
        return True
    reg = np.isin(lab, ids)
    edge = np.zeros(win.shape, bool)
    edge[0] |= sl[0].start - y0 > 0
    edge[-1] |= y1 - sl[0].stop > 0
    edge[:, 0] |= sl[1].start - x0 > 0
    edge[:, -1] |= x1 - sl[1].stop > 0
    return not (reg & edge).any() or reg.sum() <= 6 * comp.sum()


@register_region("text", kind="artifact", params={"threshold": 0.1, "contrast": 0.18})
def text(image: np.ndarray, ctx: RegionContext) -> RegionResult:
    """Burned-in text and lead markers on radiographs."""
    m, score = text_mask(image, ctx.cache, contrast=ctx.params["contrast"])
    present = score >= ctx.params["threshold"] and m.any()
    return RegionResult(m if present else None, score, bool(present),
                        "heuristic" if present else "heuristic: not detected")
