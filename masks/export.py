"""Export a preset's region masks for checking by eye: per-image PNGs, a contact sheet, and regions.csv.

Layout of ``out_dir``::

    <image_id>/<region>.png   0/255 uint8 at the model input size (only for regions that are not missing)
    contact_sheet.png         thumbnails with each region's outline in its own colour (legend at the top)
    regions.csv               one row per image: image_id, status, per region <r>_area (fraction of the
                              grid, NaN when missing), <r>_score (detector score, NaN otherwise),
                              <r>_present, <r>_note
"""
from __future__ import annotations

import math
import re
import warnings
from pathlib import Path
from typing import Callable, Mapping

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw
from scipy import ndimage as ndi

from audit.errors import MaskWarning
from audit.preprocess import InputSpec, image_to_grid, load_rgb

from .registry import RegionResult, build_regions

PALETTE = [(255, 40, 40), (40, 220, 40), (60, 120, 255), (255, 200, 0), (255, 0, 255), (0, 230, 230),
           (255, 128, 0), (160, 90, 255), (255, 255, 255), (120, 255, 160), (255, 120, 170)]
THUMB = 160
MAX_SHEET = 64  # thumbnails on the contact sheet


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(name))[:120] or "image"


def outline(mask: np.ndarray) -> np.ndarray:
    """bool: the inner boundary pixels of a bool mask (1 px)."""
    return mask & ~ndi.binary_erosion(mask, border_value=0)


def overlay(grid_img: np.ndarray, results: Mapping[str, RegionResult], colors: Mapping[str, tuple]) -> np.ndarray:
    """uint8 S×S×3: the image with each present region's outline drawn in its colour (2 px)."""
    out = np.array(grid_img, copy=True)
    for name, r in results.items():
        if r.mask is None:
            continue
        o = outline(r.mask)
        o = ndi.binary_dilation(o) & r.mask | o
        out[o] = colors[name]
    return out


def export_masks(preset: dict, manifest: pd.DataFrame, out_dir: Path, spec: InputSpec, limit: int | None = None,
                 progress: Callable[[int, int], None] | None = None) -> pd.DataFrame:
    """Compute the preset's regions for (the first ``limit`` rows of) ``manifest`` and write them to ``out_dir``.

    preset: the parsed preset (``load_preset``); its ``regions:`` section is used. manifest: canonical rows
    (``audit.manifest.load_manifest``). progress: called as progress(done, total) after each image.
    An unreadable image is recorded (status "unreadable image: ...") with a MaskWarning, never raised. An
    interrupted run (Ctrl-C, a failing provider outside the registry's guard) still writes regions.csv and the
    contact sheet for the images done. Returns the regions.csv table.
    """
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit: expected a positive integer or None, got {limit!r}")
    rs = build_regions((preset or {}).get("regions"))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    df = manifest if limit is None else manifest.iloc[:limit]
    colors = {n: PALETTE[i % len(PALETTE)] for i, n in enumerate(rs.names)}
    rows, thumbs = [], []
    total = len(df)
    try:
        for i, row in enumerate(df.to_dict("records")):
            iid = str(row.get("image_id", i))
            rec: dict = {"image_id": iid}
            info: dict = {}
            try:
                img = load_rgb(row["image"], spec.scale16, info, dicom_window=spec.dicom_window,
                               dicom_fields=spec.dicom_fields)
            except Exception as e:  # unreadable image: record and go on
                msg = f"unreadable image: {type(e).__name__}: {e}"
                warnings.warn(f"{iid}: {msg}", MaskWarning, stacklevel=2)
                rec["status"] = msg
                for n in rs.names:
                    rec.update({f"{n}_area": math.nan, f"{n}_score": math.nan, f"{n}_present": None,
                                f"{n}_note": msg})
                rows.append(rec)
                if progress:
                    progress(i + 1, total)
                continue
            grid = image_to_grid(img, spec)
            # a DICOM's header columns (dicom_BurnedInAnnotation) can give a region's known presence, as in the audit
            res = rs.compute(grid, {**info["dicom"], **row} if info.get("dicom") else row, spec, img.shape[:2])
            d = out_dir / _safe(iid)
            d.mkdir(parents=True, exist_ok=True)
            rec["status"] = "ok"
            for n, r in res.items():
                if r.mask is not None:
                    Image.fromarray(r.mask.astype(np.uint8) * 255).save(d / f"{n}.png")
                rec[f"{n}_area"] = float(r.mask.mean()) if r.mask is not None else math.nan
                rec[f"{n}_score"] = r.score
                rec[f"{n}_present"] = r.present
                rec[f"{n}_note"] = r.note
            rows.append(rec)
            if len(thumbs) < MAX_SHEET:
                ov = Image.fromarray(overlay(grid, res, colors)).resize((THUMB, THUMB), Image.NEAREST)
                thumbs.append((iid, ov))
            if progress:
                progress(i + 1, total)
    finally:  # interrupted or failed: what was computed is still written
        table = pd.DataFrame(rows)
        table.to_csv(out_dir / "regions.csv", index=False)
        contact_sheet(thumbs, colors).save(out_dir / "contact_sheet.png")
    return table


def contact_sheet(thumbs: list[tuple[str, Image.Image]], colors: Mapping[str, tuple], cols: int = 8) -> Image.Image:
    """A grid of (caption, thumbnail) with a colour legend of the regions on top."""
    cols = max(1, min(cols, len(thumbs) or 1))
    rows = max(1, math.ceil(len(thumbs) / cols))
    cap, legend_h = 12, 16
    sheet = Image.new("RGB", (cols * THUMB, legend_h + rows * (THUMB + cap)), (20, 20, 20))
    dr = ImageDraw.Draw(sheet)
    x = 4
    for n, c in colors.items():
        dr.rectangle([x, 4, x + 9, 13], fill=c)
        dr.text((x + 12, 2), n, fill=(230, 230, 230))
        x += 16 + 7 * len(n)
    for k, (iid, im) in enumerate(thumbs):
        r, c = divmod(k, cols)
        y0 = legend_h + r * (THUMB + cap)
        sheet.paste(im, (c * THUMB, y0))
        dr.text((c * THUMB + 2, y0 + THUMB), iid[:26], fill=(200, 200, 200))
    return sheet
