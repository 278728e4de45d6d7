"""`cli.py compare --run-dir A --run-dir B` on real HAM10000 images (skips when ../shared/data is absent).

Two untrained timm `test_resnet` models (different seeds, 64 px) are audited through the CLI on the same 24
melanoma / nevus images with configs/ham10000.yaml, then compared; a second compare reuses both audits' caches.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
HAM = Path(os.environ.get("AUDIT_SHARED_DATA", REPO / ".." / "shared" / "data")).resolve() / "ham10000_224"


def _run(folder: Path, seed: int) -> Path:
    import timm
    torch.manual_seed(seed)
    folder.mkdir(parents=True)
    m = timm.create_model("test_resnet", pretrained=False, num_classes=2)
    torch.save(m.state_dict(), folder / "checkpoint.pt")
    (folder / "config.yaml").write_text(yaml.safe_dump({
        "model": {"name": "test_resnet", "source": "timm", "num_classes": 2}, "classes": ["mel", "nv"],
        "input": {"size": 64}, "positive_class": "mel"}))
    return folder


def test_compare_two_runs_on_ham10000(tmp_path, monkeypatch):
    if not (HAM / "labels.csv").exists():
        pytest.skip(f"real data not available: {HAM} (set AUDIT_SHARED_DATA to the shared data folder)")
    import cli
    df = pd.read_csv(HAM / "labels.csv")
    df = pd.concat([g.head(12) for _, g in df[df["dx"].isin(["mel", "nv"])].groupby("dx")])
    df["image"] = [str(HAM / p) for p in df["image"]]
    df["mask"] = [str(HAM / p) for p in df["mask"]]
    df["split"] = "test"
    man = tmp_path / "manifest.csv"
    df.to_csv(man, index=False)
    a, b = _run(tmp_path / "runs" / "a", 0), _run(tmp_path / "runs" / "b", 1)
    monkeypatch.chdir(tmp_path)                                # the audits go to ./reports/<run-name>/
    argv = ["compare", "--run-dir", str(a), "--run-dir", str(b), "--data", str(man), "--config",
            str(REPO / "configs" / "ham10000.yaml"), "--workers", "0", "--out", "cmp", "--quiet", "--gallery-n", "2"]
    # the preset's compare.gates apply, each overridden here by a margin no pair of models can miss
    wide = ["--gate", "max_accuracy_drop=1.0", "--gate", "max_sensitivity_drop=1.0", "--gate", "max_lift_increase=1000"]
    assert cli.main(argv + wide) == 0
    d = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert d["data"]["n"] == 24 and d["data"]["positive"] == "mel" and d["verdict"] == "pass"
    assert {g["name"].split("[")[0] for g in d["gates"]} == {"max_accuracy_drop", "max_sensitivity_drop",
                                                             "max_lift_increase"}
    assert d["data"]["regions"]["lesion"] == "target" and "lift[ruler]" in {f["key"] for f in d["figures"]}
    fig = {f["key"]: f for f in d["figures"]}
    per_a = pd.read_csv(tmp_path / "reports" / "a" / "per_image.csv")
    assert fig["accuracy"]["baseline"]["value"] == pytest.approx(per_a["correct"].mean())
    assert (tmp_path / "cmp" / "compare.html").is_file()
    # again: both audits come from their caches, the figures are the same; the preset's own margins decide
    rc = cli.main(argv)
    assert rc == (0 if json.loads((tmp_path / "cmp" / "compare.json").read_text())["verdict"] == "pass" else 1)
    s = json.loads((tmp_path / "reports" / "b" / "summary.json").read_text())
    assert s["cache"]["from_cache"] == 24 and s["cache"]["computed"] == 0
    assert json.loads((tmp_path / "cmp" / "compare.json").read_text())["figures"] == d["figures"]
