"""Build the held-out ISIC 2017 set that `masks_quality.py` scores the dermoscopy detectors on.

    git clone https://github.com/walidbousseta/image_mining && git -C image_mining checkout 04943b8
    python benchmarks/isic_heldout.py --images image_mining/ISIC-2017_*_Data --out OUT

Images: 256×256 copies of the ISIC 2017 challenge images (training, validation and test; stretched to a square
and JPEG-compressed, ~5 KB each) as published in the public GitHub repository walidbousseta/image_mining
(commit 04943b8fcc29c73245d62a016437921e19327dbe, folders ISIC-2017_{Training,Validation,Test_v2}_Data).
They are not part of ../shared/data and are never copied into this repository (ISIC archive licences,
mostly CC BY-NC). Some of the repository's files may be missing or unreadable; those images are skipped.
Labels: Bissoto et al. 2020 (../shared/data/bissoto_artifact_labels/artefacts-annotation/isic_bias.csv).

Writes OUT/labels.csv (image_id, image as an absolute path, Bissoto's flags) for every image of isic_bias.csv
found under DIR, minus the 35 images of isic2017_artifacts, on which the detectors were designed. Then:

    AUDIT_ISIC_HELDOUT=OUT python benchmarks/masks_quality.py
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from masks_quality import data_dir


def _readable(p: Path) -> bool:
    from PIL import Image
    try:
        with Image.open(p) as im:
            im.verify()
        return True
    except Exception:
        return False


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", nargs="+", required=True, help="folders holding ISIC_*.jpg")
    ap.add_argument("--out", required=True)
    ap.add_argument("--data", default=str(data_dir()), help="shared data root (default: as masks_quality.py)")
    a = ap.parse_args(argv)
    d = Path(a.data)
    lab = pd.read_csv(d / "bissoto_artifact_labels" / "artefacts-annotation" / "isic_bias.csv", sep=";", index_col=0)
    lab["image_id"] = lab["image"].str.replace(".png", "", regex=False)
    found = {p.stem: str(p.resolve()) for folder in a.images for p in Path(folder).glob("ISIC_*.jpg") if _readable(p)}
    design = set(pd.read_csv(d / "isic2017_artifacts" / "labels.csv")["image_id"])
    keep = lab[lab["image_id"].isin(found) & ~lab["image_id"].isin(design)].copy()
    keep["image"] = keep["image_id"].map(found)
    cols = ["image_id", "image", "dark_corner", "hair", "gel_border", "gel_bubble", "ruler", "ink", "patches"]
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    keep[cols].sort_values("image_id").to_csv(out / "labels.csv", index=False)
    print(f"{len(keep)} labelled images ({len(found)} readable images found, {len(design & set(found))} design images left out) "
          f"→ {out / 'labels.csv'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
