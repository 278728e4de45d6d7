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


def filled(tp, d):
    """`d` (a partial summary.json dict, as tests write them) with every required key the record type `tp` lacks
    filled with a blank (null number, 0, "", false, [], {}, an undefined estimate), recursively: tests state only
    the figures they are about and still pass a typed summary to the code."""
    import types
    import typing
    from dataclasses import MISSING, fields, is_dataclass

    from audit.stats import Estimate
    from audit.summary_types import Record

    def blank(t):
        origin = typing.get_origin(t)
        if origin in (typing.Union, types.UnionType):
            return None
        if origin is list or t is list:
            return []
        if origin is dict or t is dict:
            return {}
        if t is Estimate:
            return {"value": None}
        if isinstance(t, type) and is_dataclass(t) and issubclass(t, Record):
            return filled(t, {})
        return {float: None, int: 0, str: "", bool: False}[t]

    def fill(t, v):
        origin, args = typing.get_origin(t), typing.get_args(t)
        if origin in (typing.Union, types.UnionType):
            inner = [a for a in args if a is not type(None)]
            return v if v is None or len(inner) != 1 else fill(inner[0], v)
        if origin is list and isinstance(v, list):
            return [fill(args[0], x) for x in v]
        if origin is dict and isinstance(v, dict):
            return {k: fill(args[1], x) for k, x in v.items()}
        if isinstance(t, type) and is_dataclass(t) and issubclass(t, Record) and isinstance(v, dict):
            return filled(t, v)
        return v

    hints, out = tp.hints(), dict(d)
    for f in fields(tp):
        if f.name in out:
            out[f.name] = fill(hints[f.name], out[f.name])
        elif f.default is MISSING and f.default_factory is MISSING:
            out[f.name] = blank(hints[f.name])
    return out


def typed_summary(d: dict):
    """A partial summary.json dict → `AuditSummary` (missing required keys blank: see `filled`)."""
    from audit.summary_types import AuditSummary
    return AuditSummary.from_json(filled(AuditSummary, d))
