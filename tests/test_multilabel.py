"""Multi-label audits: labels per finding, one-pass maps for every finding, per-finding figures, gates, terminal
table, reports, and torchxrayvision run dirs (random weights, nothing downloaded)."""
from __future__ import annotations

import io
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn as nn
import torchvision
import yaml

from audit.cam import grad_cam
from audit.errors import ConfigError, ManifestError, RunDirError
from audit.multilabel import (auroc_estimate, evaluate_multilabel_gates, finding_labels, multilabel_grad_cam,
                              select_findings)
from audit.run import BinaryLogit, load_run
from audit.terminal import findings_table, out_console, print_multilabel_summary
from conftest import assert_golden, write_images

ROOT = Path(__file__).resolve().parents[1]
FINDINGS = [f"f{i}" for i in range(14)]


def reference_grad_cam(model: nn.Module, x: torch.Tensor, module: nn.Module, f: int) -> torch.Tensor:
    """Independent Grad-CAM: plain autograd on the full graph (input and parameters as they are). The layer's output
    is kept and the network goes on with a copy: DenseNet's head applies ReLU in place to it."""
    store = {}

    def keep(_m, _i, o):
        store["A"] = o
        return o.clone()
    h = module.register_forward_hook(keep)
    try:
        model.eval()
        with torch.enable_grad():
            out = model(x)
            A = store["A"]
            g, = torch.autograd.grad(out[:, f].sum(), A)
    finally:
        h.remove()
    w = g.mean(dim=(2, 3), keepdim=True)
    return torch.relu((w * A.detach()).sum(1))


def _densenet(n_out: int = 14, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    m = torchvision.models.densenet121(weights=None, num_classes=n_out).eval()
    with torch.no_grad():  # a trained-looking head: torchvision starts the bias at 0 and small weights
        m.classifier.weight.normal_(0, 0.05)
    return m


# ---------------------------------------------------------------------------------------------------------------
# labels

def test_labels_one_column_per_finding_with_uncertain_options():
    rows = pd.DataFrame({"a": ["1", "0", None, "-1", "1.0"], "b": ["-1", "-1", "0", "", "0.0"]})
    y, unc = finding_labels(rows, ["a", "b"], "ignore")
    np.testing.assert_array_equal(y, [[1, np.nan], [0, np.nan], [np.nan, 0], [np.nan, np.nan], [1, 0]])
    assert unc.tolist() == [1, 2]
    y0, _ = finding_labels(rows, ["a", "b"], "zeros")
    y1, _ = finding_labels(rows, ["a", "b"], "ones")
    assert y0[3, 0] == 0 and y1[3, 0] == 1 and y0[0, 1] == 0 and y1[1, 1] == 1
    assert np.isnan(y1[2, 0])  # a blank stays missing under every option
    with pytest.raises(ManifestError, match=r"m.csv: column 'a' row 3 holds '2'"):
        finding_labels(pd.DataFrame({"a": ["1", "2"]}), ["a"], path="m.csv")
    with pytest.raises(ManifestError, match=r"no label column for finding\(s\) \['c'\]"):
        finding_labels(rows, ["a", "c"])
    assert select_findings(["a", "b", "c"], ["c", "a"]) == [2, 0]
    with pytest.raises(ConfigError, match=r"^findings: \['z'\] not among"):
        select_findings(["a", "b"], ["z"])


# ---------------------------------------------------------------------------------------------------------------
# one pass, every finding

def test_hand_computed_multilabel_maps():
    # A = [x, 2x] (1×1 conv, ReLU), GAP, W = [[1, -1], [0.5, 3]]: w_fk = W_fk / 4 (every cell > 0)
    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(nn.Conv2d(1, 2, 1, bias=False), nn.ReLU())
            self.fc = nn.Linear(2, 2, bias=False)
            with torch.no_grad():
                self.features[0].weight[:] = torch.tensor([1.0, 2.0]).view(2, 1, 1, 1)
                self.fc.weight[:] = torch.tensor([[1.0, -1.0], [0.5, 3.0]])

        def forward(self, x):
            return self.fc(self.features(x).mean(dim=(2, 3)))
    x = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    r = multilabel_grad_cam(Tiny(), x, "features")
    assert r.head == "closed-form"
    assert torch.equal(r.cams[0, 0], torch.zeros(2, 2))          # relu(x/4 − 2x/4) = 0
    np.testing.assert_allclose(r.cams[0, 1].numpy(), 1.625 * x[0, 0].numpy(), rtol=1e-6)


def test_densenet_maps_equal_single_finding_and_autograd_and_binary_audit():
    m = _densenet()
    x = torch.randn(3, 3, 64, 64)
    r = multilabel_grad_cam(m, x, "features")
    assert r.head == "closed-form" and r.cams.shape == (3, 14, 2, 2)
    assert float(r.cams.amax()) > 0, "degenerate test: all-zero maps"
    auto = multilabel_grad_cam(m, x, "features", method="autograd")
    assert auto.head == "autograd"
    for f in range(14):
        single = grad_cam(m, x, "features", target=f).cams
        ref = reference_grad_cam(m, x, m.features, f)
        scale = float(ref.abs().max()) + 1e-12
        np.testing.assert_allclose(r.cams[:, f].numpy() / scale, ref.numpy() / scale, atol=1e-4)
        np.testing.assert_allclose(r.cams[:, f].numpy() / scale, single.numpy() / scale, atol=1e-4)
        np.testing.assert_allclose(auto.cams[:, f].numpy() / scale, ref.numpy() / scale, atol=1e-4)
    # the single-finding (binary_logit) audit explains +z/2: half the multi-label map
    h = m.register_forward_hook(BinaryLogit(5))
    try:
        half = grad_cam(m, x, "features", target=1).cams
    finally:
        h.remove()
    np.testing.assert_allclose(2 * half.numpy(), r.cams[:, 5].numpy(), rtol=1e-4, atol=1e-6 * float(r.cams.max()))


def test_other_heads_fall_back_to_autograd_with_the_same_maps():
    class ConvHead(nn.Module):  # a nonlinearity after the pool: no closed form
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2))
            self.fc = nn.Linear(8, 4)

        def forward(self, x):
            return self.fc(torch.tanh(self.features(x).mean(dim=(2, 3))))
    torch.manual_seed(0)
    m = ConvHead().eval()
    x = torch.randn(2, 3, 16, 16)
    r = multilabel_grad_cam(m, x, "features")
    assert r.head == "autograd"
    for f in range(4):
        np.testing.assert_allclose(r.cams[:, f].numpy(), reference_grad_cam(m, x, m.features, f).numpy(),
                                   rtol=1e-5, atol=1e-7)


def test_resnet_head_without_relu_is_told_from_one_with_it():
    # ResNet's layer4 output is ≥ 0 with zeros: logits agree with and without a ReLU, the gradient does not
    torch.manual_seed(0)
    m = torchvision.models.resnet18(num_classes=5).eval()
    x = torch.randn(2, 3, 64, 64)
    r = multilabel_grad_cam(m, x, "layer4")
    assert r.head == "closed-form"
    for f in range(5):
        ref = reference_grad_cam(m, x, m.layer4, f)
        np.testing.assert_allclose(r.cams[:, f].numpy(), ref.numpy(), rtol=1e-4, atol=1e-6 * float(ref.max()))


def test_model_left_as_it_was():
    m = _densenet(4)
    m.train()
    m.classifier.weight.requires_grad_(False)
    flags = [p.requires_grad for p in m.parameters()]
    n_hooks = sum(len(mod._forward_hooks) for mod in m.modules())
    multilabel_grad_cam(m, torch.randn(1, 3, 64, 64), "features")
    assert m.training and [p.requires_grad for p in m.parameters()] == flags
    assert sum(len(mod._forward_hooks) for mod in m.modules()) == n_hooks


# ---------------------------------------------------------------------------------------------------------------
# figures, gates, table

def test_auroc_known_answers():
    y = np.array([1, 1, 0, 0, 1, 0], bool)
    s = np.array([0.9, 0.8, 0.1, 0.2, 0.3, 0.4])  # positives beat negatives in 8 of 9 pairs
    e = auroc_estimate(s, y, n_boot=200, min_n=1)
    assert e["value"] == pytest.approx(8 / 9) and e["n"] == 6 and e["lo"] <= 8 / 9 <= e["hi"]
    assert auroc_estimate(s, y, min_n=4)["too_small"] is True
    with pytest.warns(UserWarning, match="one class"):
        assert math.isnan(auroc_estimate(s, np.ones(6, bool))["value"])


def _summary(values: dict) -> dict:
    f = {}
    for name, (auc, sens, lift, flip) in values.items():
        est = lambda v: {"value": v, "lo": v - 0.05, "hi": v + 0.05, "n": 30, "too_small": False}  # noqa: E731
        f[name] = {"auroc": est(auc), "high_conf_errors": {"rate": est(0.01)},
                   "operating_points": {"points": [{"target_sensitivity": 0.9, "sensitivity": est(sens)}]},
                   "regions": {"lungs": {"kind": "target", "median_frac": est(0.6), "lift": est(1.2)},
                               "text": {"kind": "artifact", "median_frac": est(0.1), "lift": est(lift)}},
                   "counterfactual": {"text": {"flip_rate": est(flip)}}}
    return {"findings": f}


def test_gates_per_finding_and_for_all():
    s = _summary({"pneumothorax": (0.9, 0.80, 1.5, 0.02), "effusion": (0.7, 0.95, 4.0, 0.30)})
    gates, verdict = evaluate_multilabel_gates({"min_sensitivity_at_0.90": {"pneumothorax": 0.85},
                                                "min_auroc": 0.75, "max_artifact_lift": 2.0,
                                                "max_counterfactual_flip_rate": {"effusion": 0.1}}, s)
    got = {g.name: g.passed for g in gates}
    assert got == {"min_sensitivity_at_0.90[pneumothorax]": False, "min_auroc[pneumothorax]": True,
                   "min_auroc[effusion]": False, "max_artifact_lift[pneumothorax][text]": True,
                   "max_artifact_lift[effusion][text]": False,
                   "max_counterfactual_flip_rate[effusion][text]": False}
    assert verdict.verdict == "fail" and verdict.n_fail == 4
    assert evaluate_multilabel_gates({"min_auroc": {"pneumothorax": 0.8}}, s)[1].verdict == "pass"
    # a single-label figure is undefined per finding: inconclusive by default, fail or pass by policy
    assert evaluate_multilabel_gates({"min_accuracy": 0.5}, s)[1].verdict == "inconclusive"
    assert evaluate_multilabel_gates({"min_accuracy": 0.5, "min_auroc": 0.6, "undefined": "ignore"}, s)[1].verdict \
        == "pass"
    with pytest.raises(ConfigError, match=r"gates.min_auroc: finding\(s\) \['edema'\] not among"):
        evaluate_multilabel_gates({"min_auroc": {"edema": 0.8}}, s)
    with pytest.raises(ConfigError, match="gates.min_auroc: expected a threshold in"):
        evaluate_multilabel_gates({"min_auroc": {"effusion": 3}}, s)


# ---------------------------------------------------------------------------------------------------------------
# the whole audit: a 14-output sigmoid DenseNet-121 run dir

@pytest.fixture
def ml_run(tmp_path) -> Path:
    names = write_images(tmp_path / "data" / "images", 8)
    rng = np.random.default_rng(0)
    df = pd.DataFrame({"image": [f"images/{n}" for n in names], "split": ["test"] * 6 + ["val"] * 2})
    for j, f in enumerate(FINDINGS):
        df[f] = rng.choice(["1", "0", "-1", ""], size=8)
    df["f0"] = ["1", "0", "", "-1", "1", "0", "1", "0"]
    df.to_csv(tmp_path / "data" / "manifest.csv", index=False)
    rd = tmp_path / "run"
    rd.mkdir()
    torch.save(_densenet().state_dict(), rd / "checkpoint.pt")
    (rd / "config.yaml").write_text(yaml.safe_dump({
        "model": {"name": "densenet121", "task": "multilabel", "num_classes": 14}, "classes": FINDINGS,
        "input": {"size": 64}, "data": {"manifest": "../data/manifest.csv"}}))
    (tmp_path / "preset.yaml").write_text(yaml.safe_dump({
        "regions": {"lungs": {"source": "heuristic"}, "border": {"width": 0.1}},
        "audit": {"min_n": 1, "n_boot": 50},
        "gates": {"min_auroc": {"f0": 0.0}, "max_artifact_lift": {"f0": 100.0}}}))
    return rd


def _cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "cli.py"), "audit", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=600)


def test_fourteen_finding_densenet_audited_in_one_command(ml_run):
    out = ml_run.parent / "out"
    p = _cli("--run-dir", str(ml_run), "--out", str(out), "--workers", "0", "--config",
             str(ml_run.parent / "preset.yaml"))
    assert p.returncode == 0, p.stderr
    s = json.loads((out / "summary.json").read_text())
    man = pd.read_csv(ml_run.parent / "data" / "manifest.csv", dtype=str)
    test = man[man["split"] == "test"]
    assert s["task"] == "multilabel" and list(s["findings"]) == FINDINGS and s["data"]["n"] == 6
    for f in FINDINGS:  # a finding's n: the test images labelled 1 or 0 for it (−1 ignored, blank missing)
        assert s["findings"][f]["n"] == int(test[f].isin(["1", "0"]).sum())
        assert s["findings"][f]["n_pos"] == int((test[f] == "1").sum())
        assert s["findings"][f]["n_uncertain"] == int((test[f] == "-1").sum())
    e0 = s["findings"]["f0"]
    assert (e0["n"], e0["n_pos"], e0["n_missing"]) == (4, 2, 2)
    assert e0["operating_points"]["tuning"] == "validation split" and s["data"]["validation_split"] == "val"
    # cams.npz: one map per (image, finding) pair positive in truth or flagged; each equals the engine's
    z = np.load(out / "cams.npz")
    assert list(z["finding"]) == FINDINGS and z["logits"].shape == (6, 14) and str(z["head"]) == "closed-form"
    long = pd.read_csv(out / "per_finding.csv", dtype={"image_id": str})
    assert len(long) == 6 * 14
    need = (long["label"] == 1) | long["pred"]
    assert int(need.sum()) == len(z["cam"]) == int((long["map"] >= 0).sum())
    per_image = pd.read_csv(out / "per_image.csv", dtype={"image_id": str})
    np.testing.assert_allclose(per_image[[f"logodds_{f}" for f in FINDINGS]].to_numpy(), z["logits"], rtol=1e-5,
                               atol=1e-6)
    from audit.preprocess import InputSpec, image_to_grid, load_rgb, normalize
    m = _densenet()
    spec = InputSpec(size=64)
    k = int(np.flatnonzero(z["pair_finding"] == 0)[0])
    i = int(z["pair_image"][k])
    x = normalize(image_to_grid(load_rgb(per_image["image"][i]), spec), spec)
    ref = reference_grad_cam(m, x, m.features, 0)[0].numpy()
    np.testing.assert_allclose(z["cam"][k], ref, rtol=1e-3, atol=1e-4 * float(np.abs(ref).max()))
    # gates per finding, terminal table in 100 columns, report sections and gallery per finding
    assert {g["name"] for g in s["gates"]} == {"min_auroc[f0]", "max_artifact_lift[f0][border]"}
    table = [ln for ln in p.stdout.splitlines() if ln.startswith("f") and ln.split()[0] in FINDINGS]
    assert len(table) == 14 and max(len(ln) for ln in table) <= 100   # prose lines are not wrapped in a pipe (#26)
    html = (out / "report.html").read_text()
    assert html.count("<h2 id='f-") == 14 and "Findings compared" in html
    head = s["verdict_detail"]["headline"]            # the verdict's reason under the report's title too (#26)
    assert head and f"Gates: <b>{s['verdict'].upper()}</b>: " in html and html.count(head.split(":")[0]) >= 1
    assert "## f13" in (out / "GALLERY.md").read_text()


def test_findings_option_and_maps_all(ml_run):
    out = ml_run.parent / "out2"
    p = _cli("--run-dir", str(ml_run), "--out", str(out), "--workers", "0", "--findings", "f3,f0", "--maps", "all",
             "--no-report", "--quiet", "--limit", "2", "--uncertain", "ones")
    assert p.returncode == 0, p.stderr
    s = json.loads((out / "summary.json").read_text())
    assert list(s["findings"]) == ["f3", "f0"] and s["cam"]["n_maps"] == 4 and s["data"]["uncertain"] == "ones"
    p = _cli("--run-dir", str(ml_run), "--out", str(out), "--findings", "nope", "--quiet")
    assert p.returncode == 2 and "--findings: ['nope'] not among" in p.stderr.strip().splitlines()[-1]


def test_findings_table_fits_100_columns():
    s = _summary({f"a_very_long_finding_name_{i}": (0.8, 0.9, 2.0, 0.1) for i in range(14)})
    for f in s["findings"].values():
        f.update(n=1234, n_pos=567, false_negatives={"n": 12})
    from audit.multilabel import comparison_rows
    s["sensitivities"] = [0.9]
    s["comparison"] = comparison_rows(s)
    lines = findings_table(s)
    assert len(lines) == 15 and max(map(len, lines)) <= 100
    assert lines[1].split()[:4] == ["a_very_long_fin", "1234", "567", "0.80"]


# ---------------------------------------------------------------------------------------------------------------
# torchxrayvision

def _xrv_run(tmp_path, op_threshs=None) -> Path:
    xrv = pytest.importorskip("torchxrayvision")
    torch.manual_seed(0)
    m = xrv.models.DenseNet(weights=None)
    with torch.no_grad():
        m.classifier.weight.normal_(0, 0.05)
    sd = m.state_dict()
    if op_threshs is not None:
        sd["op_threshs"] = torch.tensor(op_threshs)
    rd = tmp_path / "xrv_run"
    rd.mkdir()
    torch.save(sd, rd / "model.pt")
    (rd / "config.yaml").write_text(yaml.safe_dump({"model": {"name": "densenet121-res224-all",
                                                              "source": "torchxrayvision"}}))
    return rd


def test_xrv_run_dir_classes_preprocessing_op_threshs(tmp_path):
    xrv = pytest.importorskip("torchxrayvision")
    ops = [0.1 + 0.01 * i for i in range(18)]
    ops[3] = float("nan")
    model, cfg = load_run(_xrv_run(tmp_path, ops))
    assert cfg.multilabel and cfg.classes == xrv.models.model_urls["densenet121-res224-all"]["labels"]
    assert cfg.op_threshs[0] == pytest.approx(0.1) and cfg.op_threshs[3] == 0.5
    assert model.op_threshs is None  # outputs stay logits
    i = cfg.input
    assert (i.size, i.channels, i.resize, i.crop_pct) == (224, 1, "crop", 1.0)
    from audit.preprocess import normalize
    img = np.zeros((1, 4, 4, 3), np.uint8)
    img[0, 0, 0] = 255
    x = normalize(img, i)  # xrv.datasets.normalize: x/255·2048 − 1024
    assert float(x[0, 0, 0, 0]) == pytest.approx(1024) and float(x[0, 0, 1, 1]) == pytest.approx(-1024)
    ref = xrv.datasets.normalize(img[0, :, :, 0].astype(np.float32), 255)
    np.testing.assert_allclose(x[0, 0].numpy(), ref, atol=1e-3)


class _OutOfPlace(nn.Module):
    """xrv DenseNet's forward (features → ReLU → global average pool → classifier) with an out-of-place ReLU."""

    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, x):
        a = torch.relu(self.m.features(x))
        return self.m.classifier(a.mean(dim=(2, 3)))


def test_xrv_maps_match_autograd_and_pytorch_grad_cam(tmp_path):
    pgc = pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    from audit.cam import minmax, upsample
    model, cfg = load_run(_xrv_run(tmp_path))
    torch.manual_seed(1)
    x = torch.randn(2, 1, 224, 224) * 300
    r = multilabel_grad_cam(model, x, "features")
    assert r.head == "closed-form" and r.cams.shape == (2, 18, 7, 7)
    live = [f for f in range(18) if float(r.cams[:, f].amax(dim=(1, 2)).min()) > 0]  # no all-zero map to compare
    assert len(live) >= 3
    for f in live[:3]:
        ref = reference_grad_cam(model, x, model.features, f)
        np.testing.assert_allclose(r.cams[:, f].numpy(), ref.numpy(), rtol=1e-3,
                                   atol=1e-4 * float(ref.abs().max()))
        ours = minmax(upsample(minmax(r.cams[:, f]), 224)).numpy()
        # pytorch-grad-cam keeps the layer's output tensor itself, which xrv's head then ReLUs in place: it is
        # given the same function with an out-of-place ReLU (same weights)
        with pgc.GradCAM(model=_OutOfPlace(model), target_layers=[model.features]) as cam:
            theirs = cam(input_tensor=x, targets=[ClassifierOutputTarget(f)] * 2)
        assert float(r.cams[:, f].max()) > 0
        np.testing.assert_allclose(ours, theirs, atol=1e-3)


def test_missing_xrv_gives_one_line(tmp_path, monkeypatch):
    rd = _xrv_run(tmp_path)
    monkeypatch.setitem(sys.modules, "torchxrayvision", None)
    with pytest.raises(RunDirError, match=r"torchxrayvision is not installed: pip install -e '\.\[xrv\]'"):
        load_run(rd)


# ---------------------------------------------------------------------------------------------------------------
# known answers end to end: one finding reads a planted marker, the other the anatomy

class MarkerAndBlob(nn.Module):
    """Finding `marker` = the red channel's mean (a red square in the top-left corner), finding `blob` = the green
    channel's mean (a green square in the centre); 8 px average pooling → 8×8 maps at 64 px; a linear head whose
    bias puts each decision at half the square's area."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 2, 1, bias=False), nn.AvgPool2d(8))
        self.fc = nn.Linear(2, 2)
        with torch.no_grad():
            self.features[0].weight.zero_()
            self.features[0].weight[0, 0] = 1.0  # red
            self.features[0].weight[1, 1] = 1.0  # green
            area = (16 * 16) / (64 * 64)
            self.fc.weight[:] = torch.tensor([[40.0, 0.0], [0.0, 40.0]])
            self.fc.bias[:] = -40.0 * area / 2

    def forward(self, x):
        return self.fc(self.features(x).mean(dim=(2, 3)))


def _planted_manifest(tmp_path: Path) -> Path:
    from PIL import Image
    d = tmp_path / "planted"
    (d / "img").mkdir(parents=True)
    rows = []
    for i in range(12):
        a = np.zeros((64, 64, 3), np.uint8)
        marker, blob = i % 2 == 0, i % 3 != 0
        mm = np.zeros((64, 64), np.uint8)
        if marker:
            a[0:16, 0:16, 0] = 255
            mm[0:16, 0:16] = 255
        lung = np.zeros((64, 64), np.uint8)
        lung[16:48, 16:48] = 255  # the target region holds the blob
        if blob:
            a[24:40, 24:40, 1] = 255
        Image.fromarray(a).save(d / "img" / f"i{i}.png")
        Image.fromarray(lung).save(d / "img" / f"i{i}_lung.png")
        Image.fromarray(mm).save(d / "img" / f"i{i}_marker.png")
        rows.append({"image": f"img/i{i}.png", "mask": f"img/i{i}_lung.png",
                     "artifact_mask": str(d / "img" / f"i{i}_marker.png") if marker else "", "split": "test",
                     "marker": int(marker), "blob": int(blob) if i != 11 else ""})
    pd.DataFrame(rows).to_csv(d / "manifest.csv", index=False)
    (d / "preset.yaml").write_text(yaml.safe_dump({
        "regions": {"lungs": {"source": "file", "values": [255]},
                    "text": {"source": "file", "column": "artifact_mask", "threshold": 127, "absent_when_empty": True}},
        "audit": {"min_n": 1, "n_boot": 100},
        "gates": {"max_counterfactual_flip_rate": 0.5, "max_artifact_lift": {"blob": 2.0},
                  "min_sensitivity_at_0.90": {"marker": 0.9}}}))
    return d


def test_planted_marker_is_singled_out_with_known_figures(tmp_path):
    from audit.config import resolve_config
    from audit.multilabel import run_multilabel_audit
    from audit.preprocess import InputSpec
    from audit.report.multilabel import render_multilabel_reports
    from audit.run import RunConfig
    d = _planted_manifest(tmp_path)
    cfg = resolve_config({"data": str(d / "manifest.csv"), "out": str(tmp_path / "out"), "workers": 0,
                          "batch_size": 5, "counterfactual": True}, d / "preset.yaml")
    run = RunConfig(model_name="marker_and_blob", source="torchvision", classes=["marker", "blob"],
                    input=InputSpec(size=64, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0)), task="multilabel",
                    checkpoint=Path("marker_and_blob.pt"))
    res = run_multilabel_audit(cfg, MarkerAndBlob().eval(), run)
    s = res.summary
    m, b = s["findings"]["marker"], s["findings"]["blob"]
    # labels: marker on 6 of 12; blob on i % 3 != 0 (8 of 12) with image 11 unlabelled → 11 labelled, 7 positive
    assert (m["n"], m["n_pos"], b["n"], b["n_pos"], b["n_missing"]) == (12, 6, 11, 7, 1)
    assert m["auroc"]["value"] == 1.0 and b["auroc"]["value"] == 1.0  # both read their square perfectly
    assert m["decision"]["fn"] == 0 and m["decision"]["fp"] == 0
    # evidence: the marker finding's maps lie on the marker, the blob finding's inside the lungs
    assert m["regions"]["text"]["median_frac"]["value"] > 0.8 and m["regions"]["text"]["lift"]["value"] > 10
    assert b["regions"]["text"]["n_present"] > 0 and b["regions"]["text"]["median_frac"]["value"] == 0.0
    assert b["regions"]["lungs"]["median_frac"]["value"] > 0.95
    # removing the marker flips every marker decision (6 of 6) and no blob decision (0 of 6)
    assert (m["counterfactual"]["text"]["n"], m["counterfactual"]["text"]["n_flips"]) == (6, 6)
    assert (b["counterfactual"]["text"]["n"], b["counterfactual"]["text"]["n_flips"]) == (6, 0)
    assert m["counterfactual"]["text"]["flip_rate"]["value"] == 1.0
    gates = {g["name"]: g["passed"] for g in s["gates"]}
    assert gates == {"max_counterfactual_flip_rate[marker][text]": False,
                     "max_counterfactual_flip_rate[blob][text]": True,
                     "max_artifact_lift[blob][text]": True, "min_sensitivity_at_0.90[marker]": True}
    assert s["verdict"] == "fail"
    rows = {r["finding"]: r for r in s["comparison"]}
    assert rows["marker"]["top_artifact"] == "text" and rows["marker"]["top_flip_rate"] == 1.0
    assert rows["marker"]["gates"] == "fail" and rows["blob"]["gates"] == "pass"
    lines = findings_table(s)
    assert lines[1].split()[:3] == ["marker", "12", "6"] and "text" in lines[1] and lines[1].split()[-2:] == ["1.00",
                                                                                                           "fail"]
    assert lines[2].split()[-2:] == ["0.00", "pass"]
    buf = io.StringIO()
    print_multilabel_summary(s, "OUT", out_console(buf, width=100))
    assert_golden("multilabel_summary.txt", buf.getvalue())  # the wording, once, at 100 columns
    paths = render_multilabel_reports(res.out_dir, n_per_group=2)
    fp = list((res.out_dir / "gallery" / "marker").rglob("*.png"))
    assert fp and all(p.parent.name == "artifact_evidence" for p in fp)  # no miss, no false positive to show
    html = paths["html"].read_text()
    assert html.count("<h2 id='f-") == 2 and "max_counterfactual_flip_rate[marker][text]" in html
    md = paths["gallery_md"].read_text()
    assert "## marker" in md and "## blob" in md


def test_run_config_task_and_uncertain(tmp_path):
    from audit.run import load_run_config
    rd = tmp_path / "r"
    rd.mkdir()

    def cfg(**kw):
        (rd / "config.yaml").write_text(yaml.safe_dump({"classes": ["a", "b", "c"], **kw}))
        return load_run_config(rd)
    c = cfg(model={"name": "densenet121", "task": "multilabel", "num_classes": 3}, uncertain="zeros")
    assert c.multilabel and c.uncertain == "zeros" and c.n_outputs == 3 and not c.single_logit
    assert not cfg(model={"name": "resnet18"}).multilabel  # a softmax model unless declared
    with pytest.raises(RunDirError, match="model.task must be one of multiclass, multilabel, got 'multi'"):
        cfg(model={"name": "resnet18", "task": "multi"})
    with pytest.raises(RunDirError, match="uncertain must be one of ignore, zeros, ones"):
        cfg(model={"name": "resnet18", "task": "multilabel"}, uncertain="maybe")
    with pytest.raises(RunDirError, match="model.binary_logit audits one output as binary"):
        cfg(model={"name": "resnet18", "task": "multilabel", "binary_logit": 0, "num_classes": 3})
    one = cfg(model={"name": "resnet18", "task": "multilabel", "num_classes": 1}, classes=["effusion"])
    assert one.multilabel and one.binary_logit is None  # one finding, not a binary model


def test_xrv_run_dir_audited_in_one_command(tmp_path):
    pytest.importorskip("torchxrayvision")
    rd = _xrv_run(tmp_path)
    names = write_images(tmp_path / "data" / "images", 3, size=(240, 260))
    cfg = yaml.safe_load((rd / "config.yaml").read_text())
    cfg["data"] = {"manifest": "../data/manifest.csv"}
    (rd / "config.yaml").write_text(yaml.safe_dump(cfg))
    classes = load_run(rd)[1].classes
    df = pd.DataFrame({"image": [f"images/{n}" for n in names]})
    for f in classes:
        df[f] = ["1", "0", ""]
    df.to_csv(tmp_path / "data" / "manifest.csv", index=False)
    out = tmp_path / "out"
    p = _cli("--run-dir", str(rd), "--out", str(out), "--workers", "0", "--findings", "Effusion,Pneumothorax",
             "--quiet")
    assert p.returncode == 0, p.stderr
    s = json.loads((out / "summary.json").read_text())
    assert list(s["findings"]) == ["Effusion", "Pneumothorax"] and s["cam"]["resolution"] == [7, 7]
    assert s["findings"]["Effusion"]["n"] == 2 and s["cam"]["head"] == ["closed-form"]
    assert "Effusion" in (out / "report.html").read_text()


@pytest.mark.realdata
def test_real_data_labels_of_the_multilabel_validation():
    from conftest import SHARED_DATA
    root = SHARED_DATA / "cxr_covid_v7"
    if not (root / "labels.csv").is_file():
        pytest.skip("shared data absent")
    sys.path.insert(0, str(ROOT / "benchmarks" / "validation"))
    import multilabel_cxr as mc
    raw = pd.read_csv(root / "labels.csv")
    man = raw.assign(label=np.where(raw["view"].str.startswith("AP"), "AP", "PA"))
    cols = mc.finding_columns(man)
    assert (cols["AP"] == "1").sum() == 56 and (cols["COVID-19"] == "1").sum() == 114  # 31 AP + 25 AP supine
    assert (cols["ARDS"] == "1").sum() == 12 and (cols["bacterial"] == "1").sum() == 18
    assert (cols["male"] == "1").sum() == 70 and (cols["male"] == "").sum() == 37
