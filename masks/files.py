"""Region masks read from files (binary or multi-valued), brought onto the model grid with the image's geometry.

Binary masks: pixel > ``threshold`` (default 127, robust to JPEG; 0 means nonzero). Multi-valued masks:
``values`` lists the pixel values of the region (e.g. the V7 chest masks: 255 = lung, 127 = device/markup).
A mask whose size differs from the image is resized with nearest neighbour (``MaskWarning`` when the aspect
ratio differs). Empty, all-ones or unreadable masks give a ``MaskWarning`` and a missing region (mask=None).
"""
from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Mapping

import numpy as np
from PIL import Image

from audit.errors import MaskError, MaskWarning
from audit.preprocess import InputSpec, mask_to_grid

ASPECT_TOL = 0.02  # relative aspect-ratio difference tolerated without a warning


def read_mask_file(path: str | Path) -> np.ndarray:
    """Decode a mask image to a 2-D integer array (H×W). Colour masks with equal channels keep their values;
    other colour masks are converted to luminance (L). Raises MaskError when the file cannot be read."""
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("1",):
                return np.asarray(im, dtype=np.uint8) * 255
            if im.mode in ("L", "P", "I;16", "I;16B", "I;16L", "I"):
                a = np.asarray(im if im.mode != "P" else im.convert("L"))
                return a.astype(np.int32) if a.dtype != np.uint8 else a
            a = np.asarray(im.convert("RGB"))
            if (a[..., 0] == a[..., 1]).all() and (a[..., 0] == a[..., 2]).all():
                return a[..., 0].copy()
            return np.asarray(im.convert("L"))
    except FileNotFoundError:
        raise MaskError(f"{path}: mask file not found") from None
    except Exception as e:  # PIL raises many types for broken files
        raise MaskError(f"{path}: cannot read mask ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
                        ) from None


def _is_missing(v) -> bool:
    if v is None:
        return True
    if isinstance(v, float) and math.isnan(v):
        return True
    try:
        import pandas as pd
        if v is pd.NA or (not isinstance(v, str) and pd.isna(v)):
            return True
    except (TypeError, ValueError, ImportError):
        pass
    return isinstance(v, str) and not v.strip()


def mask_path(file_opts: dict, row: Mapping) -> str | None:
    """The mask path for a row: ``pattern`` formatted over the row, else the ``column`` (default 'mask')."""
    pat = file_opts.get("pattern")
    if pat:
        try:
            p = Path(str(pat).format(**dict(row)))
        except KeyError as e:
            raise MaskError(f"mask pattern {pat!r} names column {e.args[0]!r}, which the row lacks") from None
        if not p.is_absolute():
            root = file_opts.get("root")
            if root:
                p = Path(root) / p
            elif not _is_missing(row.get("image")):
                p = Path(str(row["image"])).parent / p
        return str(p)
    col = file_opts.get("column", "mask")
    v = row.get(col) if hasattr(row, "get") else None
    return None if _is_missing(v) else str(v)


def region_from_array(raw: np.ndarray, file_opts: dict) -> np.ndarray:
    """bool H×W region from a decoded mask: ``values`` membership, else ``> threshold``."""
    if "values" in file_opts:
        return np.isin(raw, np.asarray(file_opts["values"]))
    return raw > file_opts.get("threshold", 127)


def file_region(cfg, row: Mapping, spec: InputSpec, src_hw: tuple[int, int], cache: dict | None = None):
    """RegionResult for a ``source: file`` region (cfg: a RegionConfig). Never raises for per-image problems."""
    from .types import RegionResult, row_id

    ident = row_id(row)
    name = cfg.name

    artifact = cfg.kind == "artifact"

    def missing(reason: str, warn: bool = True, absent: bool = False):
        msg = f"{ident}: region {name!r}: {reason}"
        if warn:
            warnings.warn(msg, MaskWarning, stacklevel=3)
        return RegionResult(None, math.nan, False if absent and artifact else None, reason)

    try:
        path = mask_path(cfg.file, row)
    except MaskError as e:
        return missing(str(e))
    if path is None:
        col = cfg.file.get("column", "mask")
        if cfg.file.get("absent_when_empty"):
            return missing(f"no mask file for this image (column {col!r} empty: artifact absent)", warn=False,
                           absent=True)
        return missing(f"no mask file for this image (column {col!r} empty)", warn=False)
    cache = {} if cache is None else cache
    key = ("file", path)
    if key not in cache:
        try:
            cache[key] = read_mask_file(path)
        except MaskError as e:
            cache[key] = e
    raw = cache[key]
    if isinstance(raw, Exception):
        return missing(str(raw))
    if raw.ndim != 2 or raw.size == 0:
        return missing(f"{path}: mask has shape {raw.shape}, expected H×W")
    h, w = raw.shape
    sh, sw = src_hw
    if (h, w) != (sh, sw):
        ar_m, ar_i = w / h, sw / sh
        if abs(ar_m - ar_i) / ar_i > ASPECT_TOL:
            warnings.warn(f"{ident}: region {name!r}: mask {path} is {w}×{h} but the image is {sw}×{sh} "
                          f"(aspect ratio differs); resized with nearest neighbour", MaskWarning, stacklevel=2)
    if raw.min() == raw.max():
        what = "empty (all zero)" if raw.max() == 0 else f"constant (every pixel {raw.max()})"
        return missing(f"{path}: mask is {what}", absent=raw.max() == 0)
    reg = region_from_array(raw, cfg.file)
    n = int(reg.sum())
    if n == 0:
        # a multi-valued file simply lacking this value (e.g. no device) is a normal absence for an artifact
        sel = cfg.file.get("values", f"> {cfg.file.get('threshold', 127)}")
        return missing(f"{path}: no pixel with value {sel}", warn=cfg.kind == "target", absent=True)
    if n == reg.size:
        return missing(f"{path}: mask covers the whole image (all ones)")
    g = mask_to_grid(reg, spec, (sh, sw))
    if not g.any():
        return missing(f"{path}: region lies outside the model's field of view (empty after crop)")
    return RegionResult(g.astype(bool, copy=False), math.nan, True if artifact else None, "file")
