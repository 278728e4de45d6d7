"""Classical detectors for chest radiographs: `lungs` (target heuristic for frontal views) and `text`
(burned-in text, lead markers "L"/"R", "PORTABLE", scores, arrows, panel letters). No training data; sizes are
relative to the image side.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from ._util import gray, px, to_float
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

# Lung template: each lung is a superellipse |x/a|^p + |y/b|^p <= 1 (p = 3: the boxy outline of a lung field,
# rounder than an ellipse) searched on a coarse grid of positions and sizes that covers frontal views from
# tightly cropped to loosely framed. No learned shape; sizes are fractions of the side. The exponent, ring
# width and size reward were compared on the benchmark data (V7 and Shenzhen masks; see
# benchmarks/results/masks_quality.md), so the V7 number is not a held-out estimate.
_LUNG_N = 48          # search resolution (px)
_LUNG_P = 3.0         # superellipse exponent
_LUNG_AREA = 1.0      # weak size prior: reward per unit of a·b (opacified lungs have little edge contrast)
_LUNG_GRID = dict(cx=np.linspace(0.15, 0.37, 7), cy=np.linspace(0.34, 0.58, 7), a=np.linspace(0.08, 0.20, 6),
                  b=np.linspace(0.20, 0.46, 7))
_LUNG_TEMPLATES: tuple | None = None


def _lung_templates() -> tuple[np.ndarray, np.ndarray]:
    """(params k×4 [cx, cy, a, b], contrast operator k×(N·(N/2+1)): ring mean minus inside mean) over the
    image's left half (the right lung is found on the mirrored image). Built once, ~7 MB."""
    global _LUNG_TEMPLATES
    if _LUNG_TEMPLATES is None:
        nn = _LUNG_N
        yy, xx = np.mgrid[0:nn, 0:nn].astype(np.float32) / nn
        ps, ins, rings = [], [], []
        g = _LUNG_GRID
        for cx in g["cx"]:
            for cy in g["cy"]:
                for a in g["a"]:
                    for b in g["b"]:
                        if cx - a < 0 or cx + a > 0.5 or cy - b < -0.02 or cy + b > 1.04:
                            continue
                        t = _superellipse(xx, yy, cx, cy, a, b)
                        r = ndi.binary_dilation(t) & ~t
                        ps.append((cx, cy, a, b))
                        ins.append(t.ravel())
                        rings.append(r.ravel())
        ins_m = np.array(ins, np.float32)
        ring_m = np.array(rings, np.float32)
        op = ring_m / np.maximum(ring_m.sum(1, keepdims=True), 1) - ins_m / ins_m.sum(1, keepdims=True)
        half = nn // 2 + 1  # templates (and their rings) stay in the left half
        op = op.reshape(len(ps), nn, nn)[:, :, :half].reshape(len(ps), -1)
        _LUNG_TEMPLATES = (np.array(ps, np.float32), np.ascontiguousarray(op))
    return _LUNG_TEMPLATES


def _superellipse(xx: np.ndarray, yy: np.ndarray, cx: float, cy: float, a: float, b: float) -> np.ndarray:
    return (np.abs((xx - cx) / a) ** _LUNG_P + np.abs((yy - cy) / b) ** _LUNG_P) <= 1


def lung_mask(image: np.ndarray, cache: dict | None = None) -> tuple[np.ndarray | None, float]:
    """(bool mask of both lungs or None, score). Template matching with an anatomical shape prior: on a
    percentile-normalised 48-px copy, each half of the image is searched for the superellipse whose thin
    surrounding ring (mediastinum, chest wall, diaphragm, clavicles) is brightest relative to its inside
    (lungs are dark fields bounded by brighter tissue), with a weak reward for size because opacified lungs
    have faint edges. Score = mean ring-minus-inside contrast of the two lungs (≤ 0: no lung fields)."""
    from skimage.transform import resize

    g = _gray(image, cache)
    n = g.shape[0]
    lo, hi = np.percentile(g, (1, 99))
    g = np.clip((g - lo) / max(hi - lo, 1e-3), 0, 1)
    s = resize(g, (_LUNG_N, _LUNG_N), anti_aliasing=True).astype(np.float32)
    ps, op = _lung_templates()
    half = _LUNG_N // 2 + 1
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float32) / n
    out = np.zeros((n, n), bool)
    contrast = []
    for side in (0, 1):
        v = np.ascontiguousarray((s if side == 0 else s[:, ::-1])[:, :half]).ravel()
        c = op @ v
        k = int(np.argmax(c + _LUNG_AREA * ps[:, 2] * ps[:, 3]))
        cx, cy, a, b = (float(x) for x in ps[k])
        contrast.append(float(c[k]))
        out |= _superellipse(xx, yy, 1 - cx if side else cx, cy, a, b)  # (cheap: one mask per side)
    score = float(np.mean(contrast))
    if score <= 0:
        return None, score
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
