"""Near-duplicate detection of `cli.py scan` on real images: why a 64-bit pHash match is confirmed by a 256-bit
detail hash, and where the detail threshold (48 of 256 bits) sits.

    python benchmarks/near_duplicates.py [--n-copies 200]

Data: ../shared/data/{ham10000_224, cxr_covid_v7} next to the repository (override the root with
AUDIT_SHARED_DATA); exits cleanly (code 0, a message) when absent. Every image goes onto the scan's default grid
(224 px stretch, `scan_input_spec({})`), then:
  1. HAM10000 (5,984 images, one per lesion, so every pair is two different lesions): all pairs within the
     64-bit pHash threshold (6 bits) and their detail distances. In dermoscopy many different lesions share
     one layout, a dark blob in the middle of skin, which is all the 64-bit hash sees.
  2. The chest radiographs' pHash candidate pairs (each checked by eye: the same radiograph under two names).
  3. Copies of `--n-copies` random HAM10000 images, made as near-duplicates are: JPEG re-save, rescale,
     brightness, contrast, noise, a 4 % or 8 % crop, a 4 % crop with a text label burned in. For each: the
     share found by the pHash (≤ 6) and the share of those the detail hash confirms (≤ 48).
Prints markdown tables and replaces the block between the near_duplicates markers in docs/scan.md.
"""
from __future__ import annotations

import argparse
import io
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw, ImageEnhance

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from audit.preprocess import image_to_grid, load_rgb  # noqa: E402
from audit.scan import (DETAIL_BITS, DETAIL_THRESHOLD, detail_hash_images, hamming,  # noqa: E402
                        near_duplicate_pairs, phash_images, scan_input_spec)

PHASH_THRESHOLD = 6
BEGIN, END = "<!-- near_duplicates:begin (written by benchmarks/near_duplicates.py) -->", "<!-- near_duplicates:end -->"


def data_dir() -> Path:
    env = os.environ.get("AUDIT_SHARED_DATA")
    return Path(env) if env else ROOT / ".." / "shared" / "data"


def grid(paths: list[Path]) -> np.ndarray:
    spec = scan_input_spec({})
    return np.stack([image_to_grid(load_rgb(p), spec) for p in paths])


def candidates(imgs: np.ndarray) -> tuple[list[tuple[int, int, int]], np.ndarray]:
    """pHash candidate pairs (i, j, bits) and their detail distances, as the scan finds them."""
    found = near_duplicate_pairs(phash_images(imgs), detail_hash_images(imgs), np.zeros(len(imgs)),
                                 PHASH_THRESHOLD, cross_only=False)
    return [(i, j, d) for i, j, d, _ in found], np.array([dd for *_, dd in found], dtype=np.int64)


def copy_of(a: np.ndarray, kind: str, rng: np.random.Generator) -> np.ndarray:
    im = Image.fromarray(a)
    w, h = im.size
    if kind == "JPEG re-save, quality 60":
        b = io.BytesIO()
        im.save(b, "JPEG", quality=60)
        return np.asarray(Image.open(b).convert("RGB"))
    if kind == "rescaled to 55 % and back":
        return np.asarray(im.resize((w * 55 // 100, h * 55 // 100), Image.BILINEAR).resize((w, h), Image.BILINEAR))
    if kind == "brightness ×1.15":
        return np.asarray(ImageEnhance.Brightness(im).enhance(1.15))
    if kind == "contrast ×1.2":
        return np.asarray(ImageEnhance.Contrast(im).enhance(1.2))
    if kind == "Gaussian noise σ = 6":
        return np.clip(a + rng.normal(0, 6, a.shape), 0, 255).astype(np.uint8)
    crop = {"crop 4 %": 0.02, "crop 8 %": 0.04, "crop 4 % + text label": 0.02}[kind]
    dx, dy = int(w * crop), int(h * crop)
    out = im.crop((dx, dy, w - dx, h - dy)).resize((w, h), Image.BILINEAR)
    if kind.endswith("text label"):
        ImageDraw.Draw(out).text((w // 2 - 20, h - 24), "day 1", fill=(255, 255, 255))
    return np.asarray(out)


KINDS = ["JPEG re-save, quality 60", "rescaled to 55 % and back", "brightness ×1.15", "contrast ×1.2",
         "Gaussian noise σ = 6", "crop 4 %", "crop 8 %", "crop 4 % + text label"]


def pct(x: np.ndarray, q) -> str:
    return "n/a" if len(x) == 0 else " / ".join(f"{v:.0f}" for v in np.percentile(x, q))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-copies", type=int, default=200)
    ap.add_argument("--no-doc", action="store_true", help="print only; leave docs/scan.md as it is")
    args = ap.parse_args(argv)
    base = data_dir()
    ham, cxr = base / "ham10000_224", base / "cxr_covid_v7"
    if not (ham / "labels.csv").exists() or not (cxr / "labels.csv").exists():
        print(f"near_duplicates: {ham} or {cxr} not found (set AUDIT_SHARED_DATA); nothing to do")
        return 0
    lines = [f"Command: `python benchmarks/near_duplicates.py --n-copies {args.n_copies}`. Distances in bits: "
             f"pHash of 64 (candidate at ≤ {PHASH_THRESHOLD}), detail hash of {DETAIL_BITS} (confirmed at ≤ "
             f"{DETAIL_THRESHOLD}).", ""]

    hl = pd.read_csv(ham / "labels.csv")
    himgs = grid([ham / p for p in hl["image"]])
    pairs, d = candidates(himgs)
    lines += ["| real pairs | pHash candidates | detail distance min / 5th pct / median | confirmed |",
              "|---|---|---|---|",
              f"| HAM10000 224 px, {len(hl)} images, one per lesion: every pair is two lesions | {len(pairs)} | "
              f"{pct(d, [0, 5, 50])} | {int((d <= DETAIL_THRESHOLD).sum())} |"]
    cl = pd.read_csv(cxr / "labels.csv")
    cimgs = grid([cxr / p for p in cl["image"]])
    cpairs, cd = candidates(cimgs)
    names = cl["image"].map(lambda p: Path(p).stem).to_numpy()
    detail = "; ".join(f"{names[i]} ~ {names[j]}: {b} / {x}" for (i, j, b), x in zip(cpairs, cd))
    lines += [f"| cxr_covid_v7, {len(cl)} radiographs; the candidates, each the same radiograph by eye (pHash / "
              f"detail: {detail}) | {len(cpairs)} | {pct(cd, [0, 5, 50])} | {int((cd <= DETAIL_THRESHOLD).sum())} |",
              ""]

    rng = np.random.default_rng(0)
    pick = rng.choice(len(himgs), size=min(args.n_copies, len(himgs)), replace=False)
    lines += [f"| copy of {len(pick)} HAM10000 images | pHash distance median / 95th pct / max | found (pHash ≤ "
              f"{PHASH_THRESHOLD}) | detail distance of those median / 95th pct / max | confirmed of found |",
              "|---|---|---|---|---|"]
    for kind in KINDS:
        copies = np.stack([copy_of(himgs[i], kind, rng) for i in pick])
        hp = hamming(phash_images(himgs[pick]), phash_images(copies))
        hdd = hamming(detail_hash_images(himgs[pick]), detail_hash_images(copies)).sum(-1)
        found = hp <= PHASH_THRESHOLD
        conf = found & (hdd <= DETAIL_THRESHOLD)
        lines.append(f"| {kind} | {pct(hp, [50, 95, 100])} | {found.mean():.0%} | {pct(hdd[found], [50, 95, 100])} | "
                     f"{conf.sum()}/{found.sum()} |")
    body = "\n".join(lines)
    print(body)
    doc = ROOT / "docs" / "scan.md"
    if not args.no_doc and doc.exists():
        t = doc.read_text()
        if BEGIN in t and END in t:
            head, rest = t.split(BEGIN, 1)
            doc.write_text(head + BEGIN + "\n" + body + "\n" + END + rest.split(END, 1)[1])
    return 0


if __name__ == "__main__":
    sys.exit(main())
