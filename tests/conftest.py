"""Shared fixtures: tiny synthetic images, manifests and run directories (random weights, no downloads)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
SHARED_DATA = Path(os.environ.get("AUDIT_SHARED_DATA", Path(__file__).resolve().parents[1] / ".." / "shared" / "data"))


def write_images(folder: Path, n: int, size=(48, 64), seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(n):
        a = rng.integers(0, 255, (*size, 3), dtype=np.uint8)
        p = folder / f"img{i:03d}.png"
        Image.fromarray(a).save(p)
        names.append(p.name)
    return names


@pytest.fixture
def tiny_run(tmp_path) -> Path:
    """A run dir: torchvision resnet18 (random weights, 3 classes, 64 px input) and a 6-image manifest."""
    names = write_images(tmp_path / "data" / "images", 6)
    classes = ["a", "b", "c"]
    pd.DataFrame({"image": [f"images/{n}" for n in names], "label": [classes[i % 3] for i in range(6)],
                  "split": ["test"] * 4 + ["val"] * 2, "site": ["x", "y"] * 3}).to_csv(
        tmp_path / "data" / "manifest.csv", index=False)
    rd = tmp_path / "run"
    rd.mkdir()
    torch.manual_seed(0)
    import torchvision
    m = torchvision.models.resnet18(num_classes=3)
    torch.save({"model": m.state_dict(), "epoch": 3}, rd / "checkpoint.pt")
    (rd / "config.yaml").write_text(yaml.safe_dump({
        "model": {"name": "resnet18", "source": "torchvision", "num_classes": 3}, "classes": classes,
        "input": {"size": 64}, "data": {"manifest": "../data/manifest.csv"}}))
    return rd


GOLDEN = Path(__file__).parent / "golden"


def assert_golden(name: str, text: str) -> None:
    """One golden rendering per renderer at a fixed width (tests/golden/<name>): the text must equal it.
    After an intended change of the rendering, rewrite the files with UPDATE_GOLDEN=1 and review the diff."""
    path = GOLDEN / name
    text = "\n".join(line.rstrip() for line in text.splitlines()) + "\n"
    if os.environ.get("UPDATE_GOLDEN") == "1":
        path.parent.mkdir(exist_ok=True)
        path.write_text(text, encoding="utf-8")
    assert path.is_file(), f"{path} missing: run the test with UPDATE_GOLDEN=1 once and commit the file"
    want = path.read_text(encoding="utf-8")
    if text != want:
        import difflib
        diff = "".join(difflib.unified_diff(want.splitlines(True), text.splitlines(True), "golden", "rendered", n=1))
        raise AssertionError(f"{name} differs from its golden rendering (UPDATE_GOLDEN=1 if intended):\n{diff}")

