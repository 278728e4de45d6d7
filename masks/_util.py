"""Small image helpers shared by the detectors (float images in [0, 1], sizes relative to the side)."""
from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi


def to_float(image: np.ndarray) -> np.ndarray:
    """uint8 H×W×3 → float32 H×W×3 in [0, 1]."""
    return np.asarray(image, dtype=np.float32) / 255.0


def gray(rgb: np.ndarray) -> np.ndarray:
    """float H×W×3 → float32 luminance H×W (ITU-R 601)."""
    return (0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]).astype(np.float32)


def hsv(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """float H×W×3 → (hue in [0,1), saturation, value), vectorised and cheaper than skimage.color.rgb2hsv."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    mx = rgb.max(axis=2)
    mn = rgb.min(axis=2)
    d = mx - mn
    s = np.where(mx > 1e-6, d / np.maximum(mx, 1e-6), 0.0)
    dd = np.maximum(d, 1e-6)
    h = np.where(mx == r, ((g - b) / dd) % 6.0, np.where(mx == g, (b - r) / dd + 2.0, (r - g) / dd + 4.0))
    h = np.where(d > 1e-6, h / 6.0, 0.0)
    return h.astype(np.float32), s.astype(np.float32), mx.astype(np.float32)


def px(frac: float, s: int, minimum: int = 1) -> int:
    """A size relative to the side `s` → pixels (at least `minimum`)."""
    return max(minimum, int(round(frac * s)))


def disk(r: int) -> np.ndarray:
    y, x = np.ogrid[-r:r + 1, -r:r + 1]
    return x * x + y * y <= r * r


def touches_border(labels: np.ndarray) -> np.ndarray:
    """Label ids (excluding 0) present on the outermost rows/columns."""
    e = np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])
    return np.unique(e[e > 0])


def otsu(values: np.ndarray, bins: int = 128) -> float:
    """Otsu threshold of a 1-D sample (NaN-free)."""
    v = np.asarray(values, dtype=np.float64).ravel()
    if v.size == 0:
        return 0.5
    lo, hi = float(v.min()), float(v.max())
    if hi - lo < 1e-9:
        return lo
    hist, edges = np.histogram(v, bins=bins, range=(lo, hi))
    centers = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centers)
    mu0 = m0 / np.maximum(w0, 1)
    mu1 = (m0[-1] - m0) / np.maximum(w1, 1)
    between = w0 * w1 * (mu0 - mu1) ** 2
    return float(centers[int(np.argmax(between[:-1]))])


def fill_holes(m: np.ndarray) -> np.ndarray:
    return ndi.binary_fill_holes(m)


def largest(m: np.ndarray) -> np.ndarray:
    lab, n = ndi.label(m)
    if n == 0:
        return m.copy()
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    return lab == int(np.argmax(sizes))


def corner_weight(s: int) -> np.ndarray:
    """float s×s: distance from the centre normalised so that the inscribed circle is 1 (corners ≈ 1.41)."""
    y, x = np.mgrid[0:s, 0:s].astype(np.float32)
    c = (s - 1) / 2
    return np.sqrt((x - c) ** 2 + (y - c) ** 2) / (s / 2)
