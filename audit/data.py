"""Manifest rows → batches on the model grid, decoded (and region masks built) in DataLoader workers.

Each item is a dict: idx (row index), ok (bool), error (str), img (uint8 S×S×3 tensor), src_hw, src_info (the
file's format and mode, see `load_rgb`), and — when a region function is given — masks {region: bool S×S tensor}
for the regions that could be built; `collate` stacks them into a `Batch`. A failing image never raises: it
comes back with ok=False and the reason, and the batch goes on without it.
"""
from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from typing import Callable, Collection

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset

from .preprocess import InputSpec, bit_depth, format_record, image_to_grid, load_rgb

RegionFn = Callable[[np.ndarray, dict, InputSpec, tuple], dict]


class ManifestDataset(Dataset):
    """rows: the manifest DataFrame; region_fn(grid_img, row, spec, src_hw) → {name: RegionResult-like}."""

    def __init__(self, rows: pd.DataFrame, spec: InputSpec, region_fn: RegionFn | None = None):
        self.records = rows.to_dict("records")
        self.spec = spec
        self.region_fn = region_fn

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> dict:
        row = self.records[i]
        item: dict = {"idx": i, "ok": False, "error": "", "t_decode": 0.0, "t_regions": 0.0}
        t0 = time.perf_counter()
        try:
            info: dict = {}
            rgb = load_rgb(row["image"], self.spec.scale16, info, self.spec.dicom_window, self.spec.dicom_fields)
            grid = image_to_grid(rgb, self.spec)
        except FileNotFoundError:
            item["error"] = f"image not found: {row['image']}"
            return item
        except Exception as e:  # PIL raises several types for broken files
            item["error"] = f"unreadable image {row['image']}: {type(e).__name__}: {str(e).splitlines()[0][:200]}"
            return item
        item.update(ok=True, img=torch.from_numpy(np.array(grid, copy=True)), src_hw=tuple(rgb.shape[:2]),
                    src_info=info)
        t1 = time.perf_counter()
        item["t_decode"] = t1 - t0
        if self.region_fn is not None:
            masks, scores, notes, present = {}, {}, {}, {}
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                try:
                    # header columns (dicom_BurnedInAnnotation) can give a region's known presence
                    res = self.region_fn(grid, {**info["dicom"], **row} if info.get("dicom") else row, self.spec,
                                         tuple(rgb.shape[:2]))
                except Exception as e:  # a region failure must not lose the image
                    res = {}
                    notes["_regions"] = f"{type(e).__name__}: {e}"
            for name, r in res.items():
                if r.mask is not None:
                    masks[name] = torch.from_numpy(np.ascontiguousarray(r.mask.astype(bool)))
                scores[name] = float(r.score) if r.score is not None else float("nan")
                if r.present is not None:
                    present[name] = bool(r.present)
                if r.note:
                    notes[name] = r.note
            item.update(masks=masks, scores=scores, notes=notes, present=present,
                        warnings=[str(w.message) for w in caught][:5])
            item["t_regions"] = time.perf_counter() - t1
        return item


@dataclass
class Batch:
    """One batch of readable images on the model grid, as the DataLoader hands it to the audit and the scan.

    idx: the manifest row indices of the readable images (in the dataset's order); img: uint8 N×S×S×3 (None
    when no image of the batch could be read); src_hw / src_info: each image's source size and file format;
    failed: (row index, one-line reason) of the unreadable ones; t_decode / t_regions: seconds spent in the
    workers. With a region function: masks (per image {region: bool S×S tensor}), scores, notes, present and
    warnings, one entry per readable image; None without one."""

    idx: list[int]
    img: torch.Tensor | None
    src_hw: list[tuple[int, int]]
    src_info: list[dict]
    failed: list[tuple[int, str]]
    t_decode: float = 0.0
    t_regions: float = 0.0
    masks: list[dict] | None = None
    scores: list[dict] | None = None
    notes: list[dict] | None = None
    present: list[dict] | None = None
    warnings: list[list[str]] | None = None

    def source_columns(self, j: int) -> dict:
        """Image j's stored-file columns: bit_depth (8, 16 or 32), a DICOM's `dicom_<Keyword>` header fields, then
        src_height, src_width, src_format, src_mode, src_short_side, src_aspect (`audit.preprocess.format_record`)."""
        return {"bit_depth": bit_depth(self.src_info[j].get("mode")), **format_record(self.src_hw[j], self.src_info[j])}

    def region_columns(self, j: int) -> dict:
        """Image j's region columns as the workers built them: score_<r> (the detector's image-level score, NaN
        for a region without one) for every region, present_<r> where the region's presence is known (a file's
        or a header's word), and region_notes (the regions' notes and the mask warnings raised in the workers,
        "; "-joined) when there are any. {} without a region function."""
        if self.scores is None:
            return {}
        rec = {f"score_{r}": s for r, s in self.scores[j].items()}
        rec.update({f"present_{r}": pr for r, pr in self.present[j].items()})
        notes = [f"{k}: {v}" for k, v in self.notes[j].items()]
        notes += [w for w in self.warnings[j] if not any(n.split(": ", 1)[-1] in w for n in notes)]
        if notes:
            rec["region_notes"] = "; ".join(notes)
        return rec

    def pin_memory(self) -> "Batch":
        """Called by the DataLoader with pin_memory=True: the images go to page-locked memory."""
        if self.img is not None:
            self.img = self.img.pin_memory()
        return self


def collate(items: list[dict]) -> Batch:
    """Stack the readable images; keep the failures aside."""
    ok = [it for it in items if it["ok"]]
    b = Batch(idx=[it["idx"] for it in ok], img=torch.stack([it["img"] for it in ok]) if ok else None,
              src_hw=[it["src_hw"] for it in ok], src_info=[it["src_info"] for it in ok],
              failed=[(it["idx"], it["error"]) for it in items if not it["ok"]],
              t_decode=sum(it["t_decode"] for it in items), t_regions=sum(it["t_regions"] for it in items))
    if ok and "masks" in ok[0]:
        b.masks = [it["masks"] for it in ok]
        b.scores = [it["scores"] for it in ok]
        b.notes = [it["notes"] for it in ok]
        b.present = [it["present"] for it in ok]
        b.warnings = [it["warnings"] for it in ok]
    return b


def make_loader(rows: pd.DataFrame, spec: InputSpec, batch_size: int, workers: int,
                region_fn: RegionFn | None = None, pin_memory: bool = False) -> DataLoader:
    ds = ManifestDataset(rows, spec, region_fn)
    return DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=workers, collate_fn=collate,
                      pin_memory=pin_memory, persistent_workers=False,
                      prefetch_factor=4 if workers > 0 else None)


def with_row(rec: dict, row: dict, skip: Collection[str] = ()) -> dict:
    """rec, then the manifest row's other columns (its metadata, for --by and discover) after the pass's own:
    a column rec already holds, or one in `skip`, is not copied. Returns rec."""
    for col, v in row.items():
        if col not in rec and col not in skip:
            rec[col] = v
    return rec
