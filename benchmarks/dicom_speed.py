"""DICOM decode + audit against PNG decode + audit of the same pixels, in one run, as ratios.

    nice -n 10 python benchmarks/dicom_speed.py [--n 48] [--side 1024] [--repeats 3] [--out docs/dicom.md]

The same N grayscale 8-bit radiograph-sized images (the shared cxr_covid_v7 radiographs resized to side×side
when ../shared/data is there, else seeded synthetic images) are written three ways into a temporary folder: PNG,
DICOM uncompressed (explicit VR little endian) and DICOM JPEG 2000 lossless (encoded by pylibjpeg-openjpeg
through pydicom's `Dataset.compress`). For each: (1) decode only: `load_rgb` + `image_to_grid` over all files;
(2) the whole audit (`cli.py audit`, random-weight torchvision ResNet-18 at 224 px, --no-cache --no-report,
workers 0), best of `repeats`. Ratios are DICOM ÷ PNG. Target: uncompressed ≤ 1.2× for the audit. The table is
written between the markers of docs/dicom.md.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = Path(os.environ.get("AUDIT_SHARED_DATA", ROOT / ".." / "shared" / "data"))
BEGIN, END = "<!-- dicom_speed:begin -->", "<!-- dicom_speed:end -->"


def images(n: int, side: int) -> tuple[list[np.ndarray], str]:
    from audit.preprocess import load_rgb
    lab = DATA / "cxr_covid_v7" / "labels.csv"
    if lab.is_file():
        paths = pd.read_csv(lab)["image"].tolist()
        out = [np.asarray(Image.fromarray(load_rgb(DATA / "cxr_covid_v7" / paths[i % len(paths)])[..., 0])
                          .resize((side, side), Image.BILINEAR)) for i in range(n)]
        return out, f"cxr_covid_v7 radiographs resized to {side}×{side}"
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:side, :side] / side
    return [np.clip(128 + 60 * np.sin(6 * xx + i) * np.cos(4 * yy) + rng.normal(0, 8, (side, side)), 0, 255)
            .astype(np.uint8) for i in range(n)], f"synthetic {side}×{side}"


def write_sets(imgs: list[np.ndarray], root: Path) -> dict[str, Path]:
    from pydicom import dcmread
    from pydicom.uid import JPEG2000Lossless

    from audit.dicom import write_dicom
    sets = {}
    for kind in ("png", "dicom", "dicom_j2k"):
        d = root / kind
        d.mkdir()
        rows = []
        for i, a in enumerate(imgs):
            if kind == "png":
                p = d / f"{i:03d}.png"
                Image.fromarray(a).save(p)
            else:
                p = write_dicom(d / f"{i:03d}.dcm", a)
                if kind == "dicom_j2k":
                    ds = dcmread(p)
                    ds.compress(JPEG2000Lossless)
                    ds.save_as(p)
            rows.append({"image": p.name, "label": "ab"[i % 2], "split": "test"})
        pd.DataFrame(rows).to_csv(d / "manifest.csv", index=False)
        sets[kind] = d / "manifest.csv"
    return sets


def run_dir(root: Path) -> Path:
    import torchvision
    rd = root / "run"
    rd.mkdir()
    torch.manual_seed(0)
    torch.save({"model": torchvision.models.resnet18(num_classes=2).state_dict()}, rd / "checkpoint.pt")
    (rd / "config.yaml").write_text(yaml.safe_dump({
        "model": {"name": "resnet18", "source": "torchvision", "num_classes": 2}, "classes": ["a", "b"],
        "input": {"size": 224, "dicom_window": "full"}}))
    return rd


def decode_time(manifest: Path, repeats: int) -> float:
    from audit.preprocess import InputSpec, image_to_grid, load_rgb
    spec = InputSpec(size=224, dicom_window="full")
    paths = [manifest.parent / p for p in pd.read_csv(manifest)["image"]]
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        for p in paths:
            image_to_grid(load_rgb(p, dicom_window="full"), spec)
        best = min(best, time.perf_counter() - t)
    return best


def audit_time(rd: Path, manifest: Path, out: Path, repeats: int) -> float:
    import cli
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        assert cli.main(["audit", "--run-dir", str(rd), "--data", str(manifest), "--out", str(out), "--workers", "0",
                         "--quiet", "--no-report", "--no-cache", "--n-boot", "50"]) == 0
        best = min(best, time.perf_counter() - t)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=48)
    ap.add_argument("--side", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=str(ROOT / "docs" / "dicom.md"))
    a = ap.parse_args()
    torch.set_num_threads(2)
    imgs, what = images(a.n, a.side)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        sets = write_sets(imgs, root)
        sizes = {k: sum(f.stat().st_size for f in m.parent.iterdir() if f.suffix in (".png", ".dcm")) / 2 ** 20
                 for k, m in sets.items()}
        rd = run_dir(root)
        audit_time(rd, sets["png"], root / "warmup", 1)  # imports, first model load, allocator warm-up: not timed
        dec = {k: decode_time(m, a.repeats) for k, m in sets.items()}
        aud = {k: float("inf") for k in sets}
        for _ in range(a.repeats):  # interleaved, so that drift in the machine's load hits every input alike
            for k, m in sets.items():
                aud[k] = min(aud[k], audit_time(rd, m, root / f"out_{k}", 1))
        p_ref = pd.read_csv(root / "out_png" / "per_image.csv")[["p_a", "p_b"]].to_numpy()
        same = {k: bool(np.array_equal(pd.read_csv(root / f"out_{k}" / "per_image.csv")[["p_a", "p_b"]].to_numpy(),
                                       p_ref)) for k in sets}
    names = {"png": "PNG (8-bit)", "dicom": "DICOM uncompressed", "dicom_j2k": "DICOM JPEG 2000 lossless"}
    lines = [f"{a.n} images ({what}), best of {a.repeats} (interleaved, after one untimed audit); audit: random-weight ResNet-18 at 224 px, --no-cache "
             f"--no-report, workers 0, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}"
             f"; `python benchmarks/dicom_speed.py --n {a.n} --side {a.side}`", "",
             "| input | files (MiB) | decode + grid (ms/image) | ÷ PNG | decode + audit (s) | ÷ PNG | same probabilities as PNG |",
             "|---|---:|---:|---:|---:|---:|---|"]
    for k in sets:
        lines.append(f"| {names[k]} | {sizes[k]:.1f} | {1000 * dec[k] / a.n:.1f} | {dec[k] / dec['png']:.2f}× | "
                     f"{aud[k]:.2f} | {aud[k] / aud['png']:.2f}× | {'yes' if same[k] else 'NO'} |")
    table = "\n".join(lines)
    print(table)
    out = Path(a.out)
    text = out.read_text() if out.is_file() else f"{BEGIN}\n{END}\n"
    if BEGIN in text and END in text:
        text = text[: text.index(BEGIN) + len(BEGIN)] + "\n" + table + "\n" + text[text.index(END):]
        out.write_text(text)


if __name__ == "__main__":
    main()
