"""The public Python API (`import audit`), used only through what `audit` exports: an in-memory module and a
DataFrame of synthetic PNGs, a run dir and a manifest path, and the errors a notebook user sees."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

import audit

S = 32  # image side = model input: the resize is the identity, so the model's input is known exactly
MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


def tiny_net(seed: int = 0) -> torch.nn.Module:
    """conv(3→4) → ReLU → conv(4→6) → ReLU → mean pool → linear(6→2); stride 1, so the maps are 32×32."""
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(),
                               torch.nn.Conv2d(4, 6, 3, padding=1), torch.nn.ReLU(),
                               torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(6, 2))


def png_set(folder: Path, n: int = 6, seed: int = 0) -> pd.DataFrame:
    """n random 32×32 RGB PNGs and their lesion masks (a centred 16×16 square), as a DataFrame of relative paths."""
    rng = np.random.default_rng(seed)
    (folder / "img").mkdir(parents=True, exist_ok=True)
    m = np.zeros((S, S), np.uint8)
    m[8:24, 8:24] = 255
    rows = []
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (S, S, 3), dtype=np.uint8)).save(folder / "img" / f"im{i}.png")
        Image.fromarray(m).save(folder / "img" / f"im{i}_mask.png")
        rows.append({"image": f"img/im{i}.png", "mask": f"img/im{i}_mask.png", "label": "ab"[i % 2],
                     "site": "xy"[2 * i // n]})
    return pd.DataFrame(rows)


@pytest.fixture
def preset(tmp_path) -> Path:
    p = tmp_path / "preset.yaml"
    p.write_text("regions:\n  lesion: {source: file, threshold: 127}\n  border: {width: 4}\n"
                 "gates:\n  max_artifact_lift: 50.0\n")
    return p


def expected_logits(model: torch.nn.Module, folder: Path, images: list[str]) -> np.ndarray:
    """model((x/255 − mean)/std) computed here, without the auditor (float64)."""
    x = torch.stack([torch.from_numpy(np.asarray(Image.open(folder / p).convert("RGB"), np.float32) / 255.0)
                     .permute(2, 0, 1) for p in images])
    x = (x - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None]
    with torch.no_grad():
        return model.eval()(x).double().numpy()


def expected_probs(model: torch.nn.Module, folder: Path, images: list[str]) -> np.ndarray:
    """softmax of `expected_logits`."""
    return torch.softmax(torch.from_numpy(expected_logits(model, folder, images)), 1).numpy()


def test_in_memory_module_and_dataframe(tmp_path, preset):
    data = tmp_path / "data"
    df = png_set(data)
    df.loc[len(df)] = {"image": "img/gone.png", "mask": None, "label": "a", "site": "y"}  # unreadable: skipped
    model = tiny_net()
    model.train()
    model[0].weight.requires_grad_(False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [p.requires_grad for p in model.parameters()]

    res = audit.run_audit(model, df, classes=["a", "b"], input_size=S, mean=MEAN, std=STD, preset=preset,
                          root=data, out=tmp_path / "out", layer="2", workers=0, n_boot=50, min_n=2,
                          positive="b")

    # the caller's model is as it was: mode, requires_grad, device, weights
    assert model.training and [p.requires_grad for p in model.parameters()] == flags
    assert all(p.device.type == "cpu" for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())

    assert isinstance(res, audit.AuditResult) and res.out_dir == tmp_path / "out"
    pi = res.per_image
    assert len(pi) == 6 and pi["image_id"].tolist() == [f"im{i}" for i in range(6)]  # one row per readable image
    assert res.errors["image_id"].tolist() == ["gone"] and "not found" in res.errors["reason"][0]
    p = expected_probs(tiny_net(), data, df["image"][:6].tolist())
    np.testing.assert_allclose(pi[["p_a", "p_b"]].to_numpy(), p, atol=1e-5)

    maps = res.maps
    assert isinstance(maps, audit.Maps) and maps.shape == (6, S, S) and maps.array.dtype == np.float32
    assert maps.layer == "2" and list(maps) == pi["image_id"].tolist() and len(maps) == 6
    np.testing.assert_allclose([maps[i].sum() for i in pi["image_id"]], pi["cam_sum"], rtol=1e-5)
    assert (maps.array >= 0).all()  # ReLU'd, not normalised
    with pytest.raises(KeyError, match="im99"):
        maps["im99"]

    s, raw = res.summary, json.loads((res.out_dir / "summary.json").read_text())
    assert isinstance(s, audit.Summary) and s.to_json() == raw
    assert s.n_images == raw["data"]["n"] == 6 and s.n_skipped == 1
    assert s.verdict == raw["verdict"] and s.verdict in ("pass", "fail")
    assert [g.name for g in s.gates] == [g["name"] for g in raw["gates"]] == ["max_artifact_lift[border]"]
    assert s.gates[0].threshold == 50.0 and s.gates[0].passed == raw["gates"][0]["passed"]
    assert isinstance(s.accuracy, audit.Estimate) and s.accuracy.n == 6
    assert s.accuracy.value == pytest.approx(pi["correct"].mean()) == pytest.approx(raw["accuracy"]["value"])
    assert s.accuracy.lo <= s.accuracy.value <= s.accuracy.hi
    assert set(s.regions) == {"lesion", "border"} and s.regions["lesion"].kind == "target"
    assert s.regions["lesion"].n_present == 6 and s.regions["lesion"].median_area == pytest.approx(0.25)
    assert s.regions["border"].median_area == pytest.approx(1 - (24 / 32) ** 2)  # a 4-px band of 32
    assert s.regions["border"].lift.n == raw["regions"]["border"]["lift"]["n"]
    op = s.operating_points
    assert op.positive_class == "b" and [q.target_sensitivity for q in op.points] == [0.8, 0.9, 0.95]
    assert op.n == 6 and op.n_pos == 3 and s.classes == ["a", "b"]
    assert raw["run"]["model"] == "module:Sequential" and raw["run"]["checkpoint"] is None

    fig = res.show("im1")
    from matplotlib.figure import Figure
    assert isinstance(fig, Figure) and len(fig.axes) == 2
    assert "outlined: lesion, border" in fig.axes[0].get_title()
    left = np.asarray(fig.axes[0].images[0].get_array())
    assert left.shape[0] == left.shape[1] >= 224  # enlarged for display
    assert (left == (0, 230, 0)).all(-1).any() and (left == (255, 0, 255)).all(-1).any()  # both outlines drawn
    one = res.show("im1", region="lesion")
    assert not (np.asarray(one.axes[0].images[0].get_array()) == (255, 0, 255)).all(-1).any()
    with pytest.raises(ValueError, match="region 'lungs'"):
        res.show("im1", region="lungs")
    with pytest.raises(KeyError, match="gone"):
        res.show("gone")

    again = audit.load_result(res.out_dir)
    assert again.summary.to_json() == s.to_json() and len(again.per_image) == 6 and again.errors["image_id"].tolist() == ["gone"]
    paths = audit.render_reports(res, tmp_path / "rep", n_per_group=1)
    assert paths["html"] == tmp_path / "rep" / "report.html" and paths["html"].is_file()
    assert not (res.out_dir / "report.html").exists()  # rendered into the other folder, from a copy


def test_run_dir_and_module_with_the_same_weights_agree(tiny_run, tmp_path):
    """The run dir + manifest path, and the same weights as a module + the manifest as a DataFrame, give the
    same probabilities and maps (torchvision resnet18 defaults: ImageNet mean/std, stretch to 64 px)."""
    import torchvision
    data = tiny_run.parent / "data"
    a = audit.run_audit(str(tiny_run), data / "manifest.csv", out=tmp_path / "a", workers=0, n_boot=20)
    m = torchvision.models.resnet18(num_classes=3)
    m.load_state_dict(torch.load(tiny_run / "checkpoint.pt", weights_only=True)["model"])
    df = pd.read_csv(data / "manifest.csv")
    b = audit.run_audit(m, df, classes=["a", "b", "c"], input_size=64, mean=(0.485, 0.456, 0.406),
                        std=(0.229, 0.224, 0.225), root=data, out=tmp_path / "b", workers=0, n_boot=20)
    assert len(a.per_image) == len(b.per_image) == 4  # the test split
    cols = ["p_a", "p_b", "p_c"]
    np.testing.assert_allclose(a.per_image[cols].to_numpy(), b.per_image[cols].to_numpy(), atol=1e-6)
    assert a.per_image["image"].tolist() == b.per_image["image"].tolist()
    np.testing.assert_allclose(a.maps.array, b.maps.array, rtol=1e-4, atol=1e-6)
    assert a.summary.accuracy == b.summary.accuracy
    assert a.summary.run.checkpoint_sha256 != b.summary.run.checkpoint_sha256  # file vs tensors


def test_out_none_writes_a_temporary_folder(tmp_path):
    df = png_set(tmp_path, n=2)
    res = audit.run_audit(tiny_net(), df, classes=["a", "b"], input_size=S, mean=MEAN, std=STD, root=tmp_path,
                          layer="2", workers=0, n_boot=10)
    try:
        assert res.out_dir.is_dir() and res.out_dir.name.startswith("audit_") and tmp_path not in res.out_dir.parents
        assert (res.out_dir / "summary.json").is_file() and res.summary.verdict == "none"
        assert res.errors.empty and list(res.errors.columns) == ["image_id", "image", "reason"]
    finally:
        import shutil
        shutil.rmtree(res.out_dir)


def test_a_timm_model_declares_its_preprocessing(tmp_path):
    """timm's test_resnet (random weights) brings mean/std (0.5) from its pretrained_cfg; input_size overrides."""
    timm = pytest.importorskip("timm")
    m = timm.create_model("test_resnet", pretrained=False, num_classes=2)
    res = audit.run_audit(m, png_set(tmp_path, n=2), classes=["a", "b"], input_size=S, root=tmp_path,
                          out=tmp_path / "o", workers=0, n_boot=10)
    inp = res.summary.run.model
    import yaml
    cfg = yaml.safe_load((res.out_dir / "config.resolved.yaml").read_text())
    assert cfg["run"]["input"]["mean"] == [0.5, 0.5, 0.5] and cfg["run"]["input"]["size"] == S, inp
    assert len(res.per_image) == 2 and res.maps.shape[0] == 2


@pytest.mark.parametrize("kw, exc, words", [
    ({"batch_size": 0}, audit.ConfigError, "batch_size: expected a positive integer, got 0"),
    ({"n_boot": "many"}, audit.ConfigError, "n_boot: expected a positive integer"),
    ({"high_conf": 1.5}, audit.ConfigError, "high_conf: expected a probability in (0, 1], got 1.5"),
    ({"counterfactual": "yes"}, audit.ConfigError, "counterfactual: expected True or False, got 'yes'"),
    ({"sensitivities": [0.9, 1.2]}, audit.ConfigError, "sensitivities: expected target sensitivities in (0, 1]"),
    ({"batch_sise": 4}, TypeError, "unexpected keyword argument 'batch_sise'"),
    ({"checkpoint": "x.pt"}, TypeError, "unexpected keyword argument 'checkpoint'"),
    ({"classes": ["a", "b", "c"]}, audit.ConfigError, "classes: the model gives 2 logits but 3 classes"),
    ({"classes": None}, audit.ConfigError, "classes: an in-memory model needs its class names"),
    ({"mean": None}, audit.ConfigError, "mean: the model declares no mean"),
    ({"input_size": 0}, audit.ConfigError, "input_size: expected a positive integer"),
    ({"positive": "c"}, audit.ConfigError, "positive 'c': not among the classes ['a', 'b']"),
    ({"target": "zebra"}, audit.ConfigError, "target 'zebra': expected 'pred', 'true'"),
    ({"layer": "9"}, audit.LayerError, "layer '9': no such module"),
])
def test_bad_options_name_the_parameter(tmp_path, kw, exc, words):
    df = png_set(tmp_path, n=2)
    args = {"classes": ["a", "b"], "input_size": S, "mean": MEAN, "std": STD, "root": tmp_path,
            "out": tmp_path / "o", "workers": 0, "layer": "2", **kw}
    with pytest.raises(exc) as e:
        audit.run_audit(tiny_net(), df, **args)
    assert words in str(e.value) and "\n" not in str(e.value) and "--" not in str(e.value)
    if exc is audit.ConfigError:
        assert isinstance(e.value, ValueError) and e.value.param == next(iter(kw))


def test_inputs_of_the_wrong_kind(tmp_path, tiny_run):
    df = png_set(tmp_path, n=2)
    with pytest.raises(TypeError, match="run_dir_or_model: expected a run directory path or a torch.nn.Module"):
        audit.run_audit(42, df)
    with pytest.raises(TypeError, match="manifest_or_dataframe: expected a CSV path or a pandas DataFrame"):
        audit.run_audit(str(tiny_run), {"image": []})
    with pytest.raises(TypeError, match="input_size is for an in-memory model"):
        audit.run_audit(str(tiny_run), input_size=64)
    with pytest.raises(audit.ManifestError, match="root: .* is not a folder"):
        audit.run_audit(tiny_net(), df, classes=["a", "b"], input_size=S, mean=MEAN, std=STD,
                        root=tmp_path / "nope", out=tmp_path / "o", workers=0)
    with pytest.raises(audit.RunDirError, match="run directory not found"):
        audit.run_audit(str(tmp_path / "nope"), df, out=tmp_path / "o2")


def test_scan_discover_compare_through_the_api(tmp_path, preset):
    data = tmp_path / "data"
    df = png_set(data, n=8)
    df["pen"] = [1, 1, 1, 0, 0, 0, 0, 0]
    sc = audit.scan(df, preset, root=data, out=tmp_path / "scan", workers=0, min_n=2, flag_cols=["pen"])
    assert len(sc.per_image) == 8 and (tmp_path / "scan" / "scan.json").is_file()
    pen = sc.summary["artifacts"]["pen"]  # images 0, 1, 2 of labels a, b, a (a = even index)
    assert pen["prevalence"]["value"] == pytest.approx(3 / 8) and pen["prevalence"]["n"] == 8
    assert pen["by_label"]["a"]["value"] == pytest.approx(2 / 4) and pen["by_label"]["b"]["value"] == 0.25
    with pytest.raises(TypeError, match="unexpected keyword argument 'bogus'"):
        audit.scan(df, preset, root=data, out=tmp_path / "scan2", bogus=1)
    kw = dict(classes=["a", "b"], input_size=S, mean=MEAN, std=STD, preset=preset, root=data, layer="2",
              workers=0, n_boot=20, min_n=2)
    a = audit.run_audit(tiny_net(0), df, out=tmp_path / "a", **kw)
    b = audit.run_audit(tiny_net(1), df, out=tmp_path / "b", **kw)
    d = audit.discover(a, k=1, min_n=2)
    assert len(d.assignments) == 8 and a.summary.discover is not None
    assert json.loads((a.out_dir / "summary.json").read_text())["discover"] == d.summary
    with pytest.raises(audit.ConfigError, match="k: expected a positive integer, got 0"):
        audit.discover(a, k=0)
    c = audit.compare(a, b, gates={"max_accuracy_drop": 0.5}, out=tmp_path / "cmp", report=False)
    assert c.verdict in ("pass", "fail", "inconclusive") and len(c.per_image) == 8
    assert (tmp_path / "cmp" / "compare.json").is_file()


def test_exports_are_the_api_functions_even_after_the_submodules_load():
    """`audit.scan` / `discover` / `compare` stay the API's functions once the submodules of the same names have
    been imported (the import system binds a submodule onto its package); `import audit` loads no torch."""
    import subprocess
    import sys
    import audit.compare
    import audit.discover
    import audit.scan
    from audit import api
    from audit.scan import run_scan
    assert audit.scan is api.scan and audit.discover is api.discover and audit.compare is api.compare
    assert callable(run_scan) and sys.modules["audit.scan"].run_scan is run_scan
    assert set(audit.__all__) >= {"run_audit", "AuditResult", "Summary", "Maps", "render_reports", "load_result"}
    code = "import sys, audit; print('torch' in sys.modules, audit.__version__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1]).stdout.split()
    assert out == ["False", audit.__version__]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_a_cuda_module_is_audited_on_its_device_and_stays_there(tmp_path):
    df = png_set(tmp_path, n=2)
    model = tiny_net().cuda()
    res = audit.run_audit(model, df, classes=["a", "b"], input_size=S, mean=MEAN, std=STD, root=tmp_path,
                          out=tmp_path / "o", layer="2", workers=0, n_boot=10)
    assert all(p.is_cuda for p in model.parameters())
    assert res.summary.cam.layer and len(res.per_image) == 2
    p = expected_probs(tiny_net(), tmp_path, df["image"].tolist())
    np.testing.assert_allclose(res.per_image[["p_a", "p_b"]].to_numpy(), p, atol=1e-4)


def test_an_undefined_gate_reads_inconclusive_through_the_api(tiny_run, tmp_path):
    """The three-valued verdict (#26 §1) reaches the typed summary: verdict and the headline naming the gate."""
    preset = tmp_path / "p.yaml"
    preset.write_text("gates: {min_accuracy: 0.0, min_sensitivity_at_0.90: 0.5}\n")
    data = tiny_run.parent / "data"
    r = audit.run_audit(str(tiny_run), data / "manifest.csv", preset=str(preset), out=tmp_path / "o", workers=0,
                        n_boot=20)
    assert r.summary.verdict == "inconclusive"
    assert "min_sensitivity_at_0.90" in r.summary.verdict_headline               # the headline names the gate
    assert "min_accuracy" not in r.summary.verdict_headline                      # ... and not the one that passed
    assert [g.passed for g in r.summary.gates] == [True, None]
    r2 = audit.run_audit(str(tiny_run), data / "manifest.csv", preset=str(preset), out=tmp_path / "o2", workers=0,
                         n_boot=20, undefined_gates="ignore")
    assert r2.summary.verdict == "pass"


# ---------------------------------------------------------------------------------------------------------------
# an in-memory multi-label module (one sigmoid output per finding)

FINDINGS = ["f0", "f1", "f2"]


def tiny_multilabel_net(seed: int = 0) -> torch.nn.Module:
    """conv(3→4) → ReLU → conv(4→6) → ReLU → mean pool → linear(6→3): one sigmoid logit per finding."""
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(),
                               torch.nn.Conv2d(4, 6, 3, padding=1), torch.nn.ReLU(),
                               torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(6, 3))


def multilabel_set(folder: Path, n: int = 6) -> pd.DataFrame:
    """png_set with one label column per finding (1 / 0 / blank = missing / -1 = uncertain)."""
    df = png_set(folder, n=n)
    df["f0"] = [1, 0] * (n // 2)
    df["f1"] = [0, 1, 1, 0, None, 1][:n]
    df["f2"] = [-1, 0, 1, 0, 0, 1][:n]
    return df


def test_in_memory_multilabel_module(tmp_path, preset):
    data = tmp_path / "data"
    df = multilabel_set(data)
    model = tiny_multilabel_net()
    model.train()
    model[2].weight.requires_grad_(False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [p.requires_grad for p in model.parameters()]

    res = audit.run_audit(model, df, classes=FINDINGS, task="multilabel", thresholds={"f1": 0.7}, input_size=S,
                          mean=MEAN, std=STD, preset=preset, root=data, out=tmp_path / "out", layer="2", workers=0,
                          n_boot=50, min_n=2, maps="all", counterfactual=True)

    # the caller's model is as it was: mode, requires_grad, device, weights
    assert model.training and [p.requires_grad for p in model.parameters()] == flags
    assert all(p.device.type == "cpu" for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())

    assert res.multilabel and isinstance(res.summary, dict) and res.summary["task"] == "multilabel"
    assert list(res.summary["findings"]) == FINDINGS and res.verdict == res.summary["verdict"]
    assert (res.summary["model"]["name"], res.summary["model"]["source"]) == ("Sequential", "module")
    z = expected_logits(tiny_multilabel_net(), data, df["image"].tolist())
    pi = res.per_image
    assert pi["image_id"].tolist() == [f"im{i}" for i in range(6)]
    np.testing.assert_allclose(pi[[f"logodds_{f}" for f in FINDINGS]].to_numpy(), z, atol=1e-5)
    p = 1 / (1 + np.exp(-z))
    np.testing.assert_allclose(pi[[f"p_{f}" for f in FINDINGS]].to_numpy(), p, atol=1e-6)
    # decision thresholds: f1 at 0.7 (given), the others at the default 0.5
    assert pi["pred_f1"].tolist() == (pi["p_f1"] >= 0.7).tolist()
    assert pi["pred_f0"].tolist() == (pi["p_f0"] >= 0.5).tolist()
    assert res.summary["findings"]["f1"]["threshold"] == pytest.approx(0.7)
    # labels: blank missing, -1 uncertain → missing (uncertain: ignore)
    f1, f2 = res.summary["findings"]["f1"], res.summary["findings"]["f2"]
    assert (f1["n"], f1["n_missing"], f2["n"], f2["n_uncertain"]) == (5, 1, 5, 1)

    long = res.per_finding
    assert len(long) == 18 and (long["map"] >= 0).all()                     # maps="all": every pair mapped
    # the border is on every image: every pair tested; a flip is a changed thresholded decision
    thr = long["finding"].map({"f0": 0.5, "f1": 0.7, "f2": 0.5}).to_numpy()
    assert long["cf_delta_border"].notna().all()
    edited = (long["p"] + long["cf_delta_border"]).to_numpy()
    np.testing.assert_array_equal(long["cf_flip_border"].to_numpy(), ((edited >= thr) != long["pred"]).astype(float))

    maps = res.maps
    assert maps.shape == (18, S, S) and maps.findings[:3] == FINDINGS and maps.image_ids[:3] == ["im0"] * 3
    assert len(maps) == 18 and ("im1", "f2") in maps
    np.testing.assert_array_equal(maps["im1", "f2"], maps.array[long.index[(long.image_id == "im1")
                                                                           & (long.finding == "f2")][0]])
    with pytest.raises(KeyError, match=r"maps\['im1', finding\]"):
        maps["im1"]

    from matplotlib.figure import Figure
    fig = res.show("im1", finding="f2")
    assert isinstance(fig, Figure) and len(fig.axes) == 2 and "f2 p = " in fig._suptitle.get_text()
    with pytest.raises(ValueError, match=r"^finding: a multi-label audit .* \['f0', 'f1', 'f2'\]"):
        res.show("im1")
    with pytest.raises(KeyError, match="im99"):
        res.show("im99", finding="f0")

    again = audit.load_result(res.out_dir)
    assert again.summary == res.summary and again.multilabel and len(again.per_finding) == 18


def test_multilabel_module_default_thresholds_and_needed_maps(tmp_path):
    df = multilabel_set(tmp_path)
    res = audit.run_audit(tiny_multilabel_net(), df, classes=FINDINGS, task="multilabel", findings=["f2", "f0"],
                          input_size=S, mean=MEAN, std=STD, root=tmp_path, out=tmp_path / "o", layer="2",
                          workers=0, n_boot=10)
    assert list(res.summary["findings"]) == ["f2", "f0"]
    assert [res.summary["findings"][f]["threshold"] for f in ("f2", "f0")] == [0.5, 0.5]
    long = res.per_finding
    need = (long["label"] == 1) | long["pred"].astype(bool)                 # maps="needed"
    assert ((long["map"] >= 0) == need).all()
    unmapped = long[long["map"] < 0]
    if len(unmapped):
        r = unmapped.iloc[0]
        with pytest.raises(ValueError, match=f"finding '{r.finding}': no map for image '{r.image_id}'"):
            res.show(r.image_id, finding=r.finding)


@pytest.mark.parametrize("kw, exc, words", [
    ({"classes": ["f0", "f1"]}, audit.ConfigError,
     "classes: the model gives 3 outputs but 2 findings are listed (task='multilabel'"),
    ({"classes": None}, audit.ConfigError, "classes: an in-memory model needs its finding names"),
    ({"task": "multi"}, audit.ConfigError, "task: expected one of multiclass, multilabel, got 'multi'"),
    ({"thresholds": [0.5, 0.5]}, audit.ConfigError, "thresholds: expected one probability per finding (3), got 2"),
    ({"thresholds": {"f9": 0.5}}, audit.ConfigError, "thresholds: finding(s) ['f9'] not among the classes"),
    ({"thresholds": [0.5, 1.0, 0.5]}, audit.ConfigError, "thresholds: expected probabilities in (0, 1), got [1.0]"),
    ({"binary_logit": 1}, audit.ConfigError, "binary_logit: audits one sigmoid output as a binary model"),
    ({"findings": ["zz"]}, audit.ConfigError, "findings: ['zz'] not among the model's findings"),
    ({"uncertain": "maybe"}, audit.ConfigError, "uncertain: expected ignore, zeros, ones"),
])
def test_bad_multilabel_options_name_the_parameter(tmp_path, kw, exc, words):
    df = multilabel_set(tmp_path, n=2)
    args = {"classes": FINDINGS, "task": "multilabel", "input_size": S, "mean": MEAN, "std": STD,
            "root": tmp_path, "out": tmp_path / "o", "workers": 0, "layer": "2", **kw}
    with pytest.raises(exc) as e:
        audit.run_audit(tiny_multilabel_net(), df, **args)
    assert words in str(e.value) and "\n" not in str(e.value) and "--" not in str(e.value)
    assert isinstance(e.value, ValueError) and e.value.param == next(iter(kw))


def test_multilabel_only_arguments_elsewhere(tmp_path, tiny_run):
    df = png_set(tmp_path, n=2)
    args = {"input_size": S, "mean": MEAN, "std": STD, "root": tmp_path, "out": tmp_path / "o", "workers": 0}
    with pytest.raises(audit.ConfigError, match="^thresholds: per-finding thresholds are for task='multilabel'"):
        audit.run_audit(tiny_net(), df, classes=["a", "b"], thresholds=[0.5, 0.5], **args)
    with pytest.raises(audit.ConfigError, match="^findings: the model is audited as single-label") as e:
        audit.run_audit(tiny_net(), df, classes=["a", "b"], findings=["a"], **args)
    assert e.value.param == "findings"
    with pytest.raises(TypeError, match="task is for an in-memory model"):
        audit.run_audit(str(tiny_run), task="multilabel")
    with pytest.raises(TypeError, match="thresholds is for an in-memory model"):
        audit.run_audit(str(tiny_run), thresholds=[0.5])


def test_a_torchxrayvision_module_is_multilabel_with_its_pathologies_and_op_threshs(tmp_path):
    """An xrv DenseNet in memory (random weights, nothing downloaded): task, classes and thresholds come from the
    model; the audited copy returns logits (op_threshs removed from it, apply_sigmoid off), the caller's model keeps
    both."""
    xrv = pytest.importorskip("torchxrayvision")
    torch.manual_seed(0)
    m = xrv.models.DenseNet(weights=None, num_classes=3, growth_rate=8, block_config=(1, 1, 1, 1),
                            num_init_features=8, apply_sigmoid=True)         # small: fast on a CPU
    m.pathologies = ["Effusion", "", "Mass"]
    m.op_threshs = torch.tensor([0.2, float("nan"), 0.6])
    df = multilabel_set(tmp_path, n=2).rename(columns={"f0": "Effusion", "f1": "unused_1", "f2": "Mass"})
    inp = {"size": S, "channels": 1, "mean": (0.5,), "std": (1 / 2048,), "resize": "crop", "crop_pct": 1.0}
    res = audit.run_audit(m, df, input=inp, root=tmp_path, out=tmp_path / "o", workers=0, n_boot=10)
    assert res.multilabel and list(res.summary["findings"]) == ["Effusion", "unused_1", "Mass"]
    assert [res.summary["findings"][f]["threshold"] for f in res.summary["findings"]] == pytest.approx([0.2, 0.5, 0.6])
    assert torch.equal(m.op_threshs[[0, 2]], torch.tensor([0.2, 0.6])) and m.apply_sigmoid  # the caller's model
    x = torch.stack([torch.from_numpy(np.asarray(Image.open(tmp_path / p), np.float32)).permute(2, 0, 1)
                     for p in df["image"]]) / 255.0
    x = 0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]            # luminance; 32 px: no resize
    import copy
    logits_model = copy.deepcopy(m).eval()
    logits_model.op_threshs, logits_model.apply_sigmoid = None, False
    with torch.no_grad():
        z = logits_model((x - 0.5) * 2048).double().numpy()
    got = res.per_image[["logodds_Effusion", "logodds_unused_1", "logodds_Mass"]].to_numpy()
    np.testing.assert_allclose(got, z, rtol=1e-4, atol=1e-3)                  # logits, not op_norm'd probabilities
