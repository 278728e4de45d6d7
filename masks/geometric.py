"""Geometric regions on the model grid: a border band and the four corner squares (no detection, score NaN)."""
from __future__ import annotations

import math

import numpy as np

from .registry import RegionContext, RegionResult, register_region


def _px(frac_or_px: float, s: int, name: str) -> int:
    """A size given as a fraction of the side (< 1) or in pixels (≥ 1) → pixels, at least 1."""
    v = float(frac_or_px)
    if v <= 0:
        raise ValueError(f"{name}: expected a positive size, got {frac_or_px!r}")
    return max(1, int(round(v * s))) if v < 1 else int(round(v))


def border_mask(s: int, width: float = 0.08) -> np.ndarray:
    """bool s×s band of `width` (fraction of the side if < 1, else pixels) along the four edges."""
    w = min(_px(width, s, "border.width"), (s + 1) // 2)
    m = np.zeros((s, s), bool)
    m[:w] = m[-w:] = True
    m[:, :w] = m[:, -w:] = True
    return m


def corners_mask(s: int, size: float = 0.12) -> np.ndarray:
    """bool s×s with four `size`×`size` squares in the corners (fraction of the side if < 1, else pixels)."""
    k = min(_px(size, s, "corners.size"), (s + 1) // 2)
    m = np.zeros((s, s), bool)
    m[:k, :k] = m[:k, -k:] = m[-k:, :k] = m[-k:, -k:] = True
    return m


@register_region("border", kind="artifact", params={"width": 0.08}, detector=False)
def border(image: np.ndarray, ctx: RegionContext) -> RegionResult:
    """Band along the image edges, `width` = fraction of the side (default 0.08) or pixels."""
    return RegionResult(border_mask(image.shape[0], ctx.params["width"]), math.nan, None, "geometry")


@register_region("corners", kind="artifact", params={"size": 0.12}, detector=False)
def corners(image: np.ndarray, ctx: RegionContext) -> RegionResult:
    """Four corner squares of side `size` (fraction of the side, default 0.12, or pixels)."""
    return RegionResult(corners_mask(image.shape[0], ctx.params["size"]), math.nan, None, "geometry")


@register_region("device", kind="artifact", default_source="file", detector=False)
def device(image: np.ndarray, ctx: RegionContext) -> RegionResult:  # noqa: ARG001 (provider signature)
    """Devices/markup over the anatomy (tubes, leads, pacemakers): from a mask file only (e.g. V7 value 127)."""
    return RegionResult(None, math.nan, None, "no device detector: give a mask file (source: file, values: [...])")
