"""Image format by label: file type, colour mode / bit depth, resolution and aspect of the stored images.

A format that follows the label (one source sends its cases as JPEG, another as 16-bit PNG; one hospital's
scanner writes small images) is a shortcut a model can learn from compression, interpolation or intensity
statistics instead of the anatomy (DeGrave et al. 2021, Nat Mach Intell 3:610, on COVID-19 radiograph sets).
The scan reads these attributes while decoding (`audit.preprocess.load_rgb`'s `info`) and tests each against the
label like an artifact: the share of every class per level, and Cramér's V of the level × class table.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from .preprocess import FORMAT_COLUMNS

def format_by_label(per_image: pd.DataFrame, classes: list[str], min_n: int, alpha: float, n_boot: int,
                    seed: int, columns: dict | None = None) -> dict:
    """scan.json's `format`: per attribute with ≥ 2 levels among the labelled images, each level's n, its overall
    share and its share of every class (Wilson CI, `too_small` below min_n images in the class), and Cramér's V
    (bias-corrected, bootstrap CI; `audit.association.cramers_v`) of the level × class table; attributes with one
    level go to `constant` (attribute → level). Images without a label are left out. columns: attribute →
    column to test instead of `FORMAT_COLUMNS` (the DICOM header fields, `audit.dicom.device_by_label`)."""
    from .association import cramers_v, prevalence
    lab = per_image["label"]
    known = lab.notna().to_numpy()
    labs = lab[known].astype(str).to_numpy()
    n_cls = {c: int((labs == c).sum()) for c in classes}
    attrs: dict[str, dict] = {}
    constant: dict[str, str] = {}
    for name, col in (columns or FORMAT_COLUMNS).items():
        if col not in per_image:
            continue
        lv = per_image.loc[known, col].astype(str).to_numpy()
        levels = sorted(set(lv), key=lambda x: (-int((lv == x).sum()), x))
        if len(levels) < 2:
            if levels:
                constant[name] = levels[0]
            continue
        table = [[int(((lv == x) & (labs == c)).sum()) for c in classes] for x in levels]
        attrs[name] = {
            "column": col,
            "levels": {x: {"n": int((lv == x).sum()),
                           "prevalence": prevalence(int((lv == x).sum()), len(lv), min_n, alpha),
                           "by_label": {c: prevalence(table[i][j], n_cls[c], min_n, alpha) for j, c in enumerate(classes)}}
                       for i, x in enumerate(levels)},
            "association": cramers_v(table, seed=seed, n_boot=n_boot, alpha=alpha)}
    return {"attributes": attrs, "constant": constant, "n": int(known.sum()),
            "reference": "DeGrave et al. 2021, Nat Mach Intell 3:610"}


def format_text(fmt: dict, max_levels: int = 6) -> list[str]:
    """Plain lines for what the scan's terminal table cannot hold: the constant attributes and any levels cut."""
    lines = []
    if fmt.get("constant"):
        lines.append("same for every labelled image: " + ", ".join(f"{a} {v}" for a, v in fmt["constant"].items()))
    for a, e in fmt.get("attributes", {}).items():
        if len(e["levels"]) > max_levels:
            rest = list(e["levels"])[max_levels:]
            lines.append(f"{a}: {len(rest)} smaller level(s) not shown "
                         f"({sum(e['levels'][x]['n'] for x in rest)} images; all in scan.json)")
    return lines


def association_strong(cv: dict, above: float = 0.1) -> bool:
    """Whether a format attribute follows the label clearly: the lower end of V's CI above `above`."""
    lo = cv.get("lo")
    return lo is not None and np.isfinite(lo) and lo > above
