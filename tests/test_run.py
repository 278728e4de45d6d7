"""Run-directory loading: checkpoint layouts, prefixes, safetensors, config-less runs, and each bad input."""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import pandas as pd
import pytest
import torch
import torchvision
import yaml

from audit.errors import RunDirError
from audit.run import load_run, load_run_config


def _make(rd, sd_wrapper, cfg=True, name="checkpoint.pt", classes=("a", "b", "c")):
    rd.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    m = torchvision.models.resnet18(num_classes=len(classes))
    torch.save(sd_wrapper(m.state_dict()), rd / name)
    if cfg:
        (rd / "config.yaml").write_text(yaml.safe_dump({"model": {"name": "resnet18", "source": "torchvision"},
                                                        "classes": list(classes), "input": {"size": 64}}))
    return m


@pytest.mark.parametrize("wrap", [
    lambda sd: sd,
    lambda sd: {"model": sd, "epoch": 1},
    lambda sd: {"state_dict": {f"module.{k}": v for k, v in sd.items()}},
    lambda sd: {"model_state_dict": {f"model.{k}": v for k, v in sd.items()}, "optimizer": {}},
], ids=["plain", "nested-model", "dataparallel", "lightning"])
def test_checkpoint_layouts(tmp_path, wrap):
    ref = _make(tmp_path / "run", wrap)
    model, cfg = load_run(tmp_path / "run")
    assert cfg.classes == ["a", "b", "c"] and cfg.input.size == 64 and not model.training
    for (k, v), (k2, v2) in zip(model.state_dict().items(), ref.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)
    assert len(cfg.checkpoint_sha256) == 64


def test_safetensors_and_json_config(tmp_path):
    st = pytest.importorskip("safetensors.torch")
    rd = tmp_path / "run"
    rd.mkdir()
    m = torchvision.models.resnet18(num_classes=2)
    st.save_file({k: v.contiguous() for k, v in m.state_dict().items()}, str(rd / "weights.safetensors"))
    (rd / "config.json").write_text(json.dumps({"model": {"name": "resnet18"}, "classes": ["x", "y"]}))
    model, cfg = load_run(rd)
    assert torch.equal(model.fc.weight, m.fc.weight) and cfg.source == "torchvision"


def test_checkpoint_preference_order(tmp_path):
    rd = tmp_path / "run"
    _make(rd, lambda sd: sd, name="best.pt")
    _make(rd, lambda sd: {"garbage": 1}, name="zz.pth", cfg=False)
    _, cfg = load_run(rd)
    assert cfg.checkpoint.name == "best.pt"


def test_no_config_needs_arch_and_classes(tmp_path):
    _make(tmp_path / "run", lambda sd: sd, cfg=False)
    with pytest.raises(RunDirError, match="no model name"):
        load_run(tmp_path / "run")
    model, cfg = load_run(tmp_path / "run", arch="resnet18", classes=["a", "b", "c"])
    assert cfg.num_classes == 3 and cfg.input.size == 224


def test_timm_default_input_from_pretrained_cfg(tmp_path):
    cfg = load_run_config(None, arch="efficientnet_b0", classes=["a", "b"], source="timm")
    assert cfg.input.size == 224 and cfg.input.mean == pytest.approx((0.485, 0.456, 0.406))


def test_timm_training_checkpoint_loads(tmp_path):
    """timm's CheckpointSaver writes model_best.pth.tar with the weights under state_dict and the training
    arguments as an argparse.Namespace: the one non-tensor type let through."""
    rd = tmp_path / "run"
    ref = _make(rd, lambda sd: {"epoch": 7, "arch": "resnet18", "state_dict": sd, "metric": 81.5,
                                "args": argparse.Namespace(model="resnet18", lr=0.1, num_classes=3)},
                name="model_best.pth.tar")
    model, cfg = load_run(rd)
    assert cfg.checkpoint.name == "model_best.pth.tar" and torch.equal(model.fc.weight, ref.fc.weight)


def _timm_run(rd, classes=4, **args):
    """A timm train.py output folder: model_best.pth.tar and args.yaml (its arguments, as train.py dumps them)."""
    import timm
    rd.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    m = timm.create_model("resnet18", pretrained=False, num_classes=classes)
    torch.save({"epoch": 3, "arch": "resnet18", "state_dict": m.state_dict(),
                "args": argparse.Namespace(model="resnet18")}, rd / "model_best.pth.tar")
    a = {"model": "resnet18", "num_classes": classes, "img_size": None, "input_size": None, "crop_pct": None,
         "mean": None, "std": None, "interpolation": "", "class_map": "", "dataset": "", "train_split": "train",
         "data_dir": None, "lr": 0.1, **args}
    (rd / "args.yaml").write_text(yaml.safe_dump(a))
    return m


def test_timm_train_output_folder_is_a_run_dir(tmp_path):
    """args.yaml gives the model, the input (timm's eval geometry: crop with crop_pct) and, from the training
    folder's class folders in timm's natural order, the classes."""
    data = tmp_path / "data"
    for c in ("b", "c10", "a", "c2"):
        (data / "train" / c).mkdir(parents=True)
    (data / "train" / "notes.txt").write_text("not a class")
    ref = _timm_run(tmp_path / "out", img_size=64, crop_pct=0.9, mean=[0.5], std=[0.25, 0.25, 0.25],
                    interpolation="bilinear", data_dir=str(data))
    model, cfg = load_run(tmp_path / "out")
    assert cfg.classes == ["a", "b", "c2", "c10"] and cfg.source == "timm" and cfg.model_name == "resnet18"
    assert (cfg.input.size, cfg.input.resize, cfg.input.crop_pct) == (64, "crop", 0.9)
    assert cfg.input.mean == (0.5, 0.5, 0.5) and cfg.input.std == (0.25, 0.25, 0.25)
    assert cfg.input.interpolation == "bilinear"
    assert cfg.checkpoint.name == "model_best.pth.tar" and torch.equal(model.fc.weight, ref.fc.weight)


def test_timm_args_defaults_come_from_the_pretrained_cfg_and_a_class_map_wins(tmp_path):
    import timm
    (tmp_path / "data" / "train" / "zz").mkdir(parents=True)
    (tmp_path / "data" / "names.txt").write_text("mel\nnv\nbcc\nbkl\n")
    _timm_run(tmp_path / "out", class_map="names.txt", data_dir=str(tmp_path / "data"))
    cfg = load_run_config(tmp_path / "out")
    pre = timm.get_pretrained_cfg("resnet18").to_dict()
    assert cfg.classes == ["mel", "nv", "bcc", "bkl"]
    assert cfg.input.size == pre["input_size"][-1] and cfg.input.crop_pct == pytest.approx(pre["crop_pct"])
    assert cfg.input.mean == pytest.approx(pre["mean"]) and cfg.input.interpolation == pre["interpolation"]


@pytest.mark.parametrize("args,why", [
    ({"data_dir": "/elsewhere/ham"}, r"no class_map, and /elsewhere/ham/train is not a folder of class folders"),
    ({"class_map": "classes.pkl"}, r"class_map 'classes.pkl' is not a .txt file"),
    ({"class_map": "missing.txt"}, r"class_map 'missing.txt' is not readable here"),
], ids=["folder-elsewhere", "pickle", "missing"])
def test_timm_args_without_classes_say_why_and_what_to_pass(tmp_path, args, why):
    _timm_run(tmp_path / "out", **args)
    with pytest.raises(RunDirError, match=r"args\.yaml: the timm train.py arguments give no class names \(" + why
                       + r".*\); pass the classes, 4 in logit order \(--classes a,b,c\)") as e:
        load_run(tmp_path / "out")
    assert "\n" not in str(e.value)
    _, cfg = load_run(tmp_path / "out", classes=["w", "x", "y", "z"])
    assert cfg.classes == ["w", "x", "y", "z"] and cfg.input.resize == "crop"
    with pytest.raises(RunDirError, match="model.num_classes = 4 but 2 classes"):
        load_run(tmp_path / "out", classes=["w", "x"])


def test_config_yaml_wins_over_timm_args_and_unusable_args_are_named(tmp_path):
    rd = tmp_path / "out"
    _timm_run(rd, crop_mode="border")
    with pytest.raises(RunDirError, match=r"args\.yaml: crop_mode 'border'.*not supported"):
        load_run(rd, classes=list("abcd"))
    _timm_run(rd, img_size="big")
    with pytest.raises(RunDirError, match=r"args\.yaml: unusable timm train.py argument \(invalid literal"):
        load_run(rd, classes=list("abcd"))
    _timm_run(rd)
    (rd / "config.yaml").write_text(yaml.safe_dump({"model": {"name": "resnet18", "source": "timm"},
                                                   "classes": list("abcd"), "input": {"size": 32}}))
    _, cfg = load_run(rd)
    assert cfg.input.size == 32 and cfg.input.resize == "stretch"


def test_weights_only_refuses_code(tmp_path, capsys):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))
    rd = tmp_path / "run"
    _make(rd, lambda sd: sd)
    torch.save({"model": Evil()}, rd / "checkpoint.pt")
    with pytest.raises(RunDirError, match=r"refuses \(builtins\.print\).*never runs a checkpoint's code"):
        load_run(rd)
    assert "pwned" not in capsys.readouterr().out


@pytest.mark.parametrize("content,match", [
    (lambda: torchvision.models.resnet18(num_classes=3), r"refuses \(.*torchvision\.models\.resnet\.\w+.*\)"
                                                         r".*model\.state_dict\(\)"),
    (lambda: b"not a checkpoint", "not a checkpoint a weights-only load can read"),
], ids=["whole-pickled-model", "garbage"])
def test_unreadable_checkpoint_says_why_in_one_line(tmp_path, content, match):
    rd = tmp_path / "run"
    _make(rd, lambda sd: sd)
    obj = content()
    if isinstance(obj, bytes):
        (rd / "checkpoint.pt").write_bytes(obj)
    else:
        torch.save(obj, rd / "checkpoint.pt")
    with pytest.raises(RunDirError, match=match) as e:
        load_run(rd)
    assert "\n" not in str(e.value) and "\x1b" not in str(e.value) and "weights_only=False" not in str(e.value)


@pytest.mark.parametrize("setup,match", [
    (lambda rd: None, "run directory not found"),
    (lambda rd: (rd.mkdir(), (rd / "config.yaml").write_text("model: {name: resnet18}\nclasses: [a, b, c]\n")),
     "no checkpoint found"),
    (lambda rd: _make(rd, lambda sd: {k: v for k, v in sd.items() if not k.startswith("fc.")}),
     "missing keys: fc.bias, fc.weight"),
    (lambda rd: (_make(rd, lambda sd: sd), (rd / "config.yaml").write_text(
        "model: {name: resnet34}\nclasses: [a, b, c]\n")), "does not match torchvision:resnet34"),
    (lambda rd: (_make(rd, lambda sd: sd), (rd / "config.yaml").write_text(
        "model: {name: resnet18}\nclasses: [a, b]\n")), "checkpoint has 3 outputs"),
    (lambda rd: (_make(rd, lambda sd: sd), (rd / "config.yaml").write_text("model: [unclosed\n")), "cannot parse"),
    (lambda rd: (_make(rd, lambda sd: sd), (rd / "config.yaml").write_text(
        "model: {name: resnet18, num_classes: 4}\nclasses: [a, b, c]\n")), "num_classes = 4"),
    (lambda rd: (_make(rd, lambda sd: sd), (rd / "config.yaml").write_text(
        "model: {name: resnet18}\nclasses: [a, b, c]\npositive_class: mel\n")), "positive_class 'mel'"),
    # a misspelt key in model: or input: would silently change what is audited (here: the crop geometry)
    (lambda rd: (_make(rd, lambda sd: sd), (rd / "config.yaml").write_text(
        "model: {name: resnet18}\nclasses: [a, b, c]\ninput: {size: 224, crop_percent: 0.875}\n")),
     r"unknown key\(s\) in input: \['crop_percent'\]"),
    (lambda rd: (_make(rd, lambda sd: sd), (rd / "config.yaml").write_text(
        "model: {name: resnet18, stat_key: ema}\nclasses: [a, b, c]\nlr: 0.1\n")),
     r"unknown key\(s\) in model: \['stat_key'\]"),
    (lambda rd: (_make(rd, lambda sd: sd), (rd / "config.yaml").write_text(
        "model: {name: resnet18}\nclasses: [a, b, a]\n")), r"class names must be unique .* repeated: \['a'\]"),
], ids=["missing-dir", "no-checkpoint", "missing-keys", "arch-mismatch", "class-count", "bad-yaml",
        "num-classes", "positive", "input-key", "model-key", "duplicate-class"])
def test_bad_run_dirs(tmp_path, setup, match):
    rd = tmp_path / "run"
    setup(rd)
    with pytest.raises(RunDirError, match=match) as e:
        load_run(rd)
    assert "\n" not in str(e.value)


def test_training_settings_beside_the_model_are_left_alone(tmp_path):
    """Top-level keys other than the auditor's (a training script's own settings) do not stop the load; only
    the model: and input: sections are checked key by key (test_bad_run_dirs)."""
    rd = tmp_path / "run"
    _make(rd, lambda sd: sd, cfg=False)
    (rd / "config.yaml").write_text("model: {name: resnet18}\nclasses: [a, b, c]\ninput: {size: 64}\n"
                                    "lr: 0.1\nepochs: 30\noptimizer: {name: sgd}\n")
    assert load_run(rd)[1].input.size == 64


def test_default_split_never_falls_back_to_training_images():
    """test when present; every row when there are no splits; splits without 'test' ask for --split (auditing
    them all by default would put training images, with optimistic figures, into a sign-off)."""
    import pandas as pd

    from audit.errors import ManifestError
    from audit.manifest import default_split
    assert default_split(pd.DataFrame({"split": ["train", "test", None]})) == "test"
    assert default_split(pd.DataFrame({"split": [pd.NA, pd.NA]})) == "all"
    with pytest.raises(ManifestError, match=r"m.csv: column 'split' holds \['Test', 'train'\] but no 'test': "
                                            r"pass split NAME") as e:
        default_split(pd.DataFrame({"split": ["train", "Test", None]}), "m.csv")
    assert "\n" not in str(e.value)


def test_integer_labels_read_as_class_indices_only_when_asked(tmp_path):
    from audit.errors import ConfigError, ManifestError
    from audit.manifest import DataSpec, load_manifest
    m = tmp_path / "m.csv"
    m.write_text("image,label\na.png,1\nb.png,0\nc.png,1\n")
    classes = ["benign", "malignant"]
    with pytest.raises(ManifestError, match=r"holds '1', not among the run's classes .*look like class indices "
                                            r"0\.\.1: set data.label_index: true"):
        load_manifest(m, DataSpec(), classes=classes)
    df = load_manifest(m, DataSpec.from_dict({"label_index": True}), classes=classes)
    assert list(df["label"]) == ["malignant", "benign", "malignant"]
    m.write_text("image,label\na.png,1\nb.png,2\n")
    with pytest.raises(ManifestError, match=r"row 3 holds '2'; data.label_index expects class indices 0\.\.1"):
        load_manifest(m, DataSpec(label_index=True), classes=classes)
    with pytest.raises(ConfigError, match="data.label_index: expected true or false"):
        DataSpec.from_dict({"label_index": "yes"})
    with pytest.raises(ConfigError, match=r"data.columns: expected a mapping of canonical name"):
        DataSpec.from_dict({"columns": ["a", "b"]})  # was a ValueError traceback from dict()
    with pytest.raises(ConfigError, match="data.image_pattern: expected a string"):
        DataSpec.from_dict({"image_pattern": ["images/{image_id}.jpg"]})
    assert DataSpec.from_dict({"columns": {"label": "dx"}}).columns == {"label": "dx"}


@pytest.mark.parametrize("image_root", [None, "imgs", "ABS"])
def test_manifest_paths_relative_to_its_folder_from_a_relative_path(tmp_path, monkeypatch, image_root):
    """A manifest given by a relative path (as `python cli.py demo` does) resolves its relative image and mask
    paths against its own folder once, not twice; data.image_root is relative to that folder unless absolute."""
    from audit.manifest import DataSpec, load_manifest
    base = tmp_path / "runs" / "data"
    sub = base / "imgs" if image_root else base
    (sub / "images").mkdir(parents=True)
    (sub / "images" / "a.png").write_bytes(b"x")
    (base / "m.csv").write_text("image,mask,label\nimages/a.png,images/a.png,x\n")
    monkeypatch.chdir(tmp_path)
    root = str(base / "imgs") if image_root == "ABS" else image_root
    df = load_manifest("runs/data/m.csv", DataSpec(image_root=root))
    assert Path(df["image"][0]).is_file() and Path(df["mask"][0]).is_file()
    assert Path(df["image"][0]).resolve() == (sub / "images" / "a.png").resolve()


def test_single_logit_binary_model_reads_as_two_class_softmax(tmp_path):
    """model.num_classes: 1 with two classes: the sigmoid model's logit z becomes [-z/2, z/2], whose softmax is
    [1 - sigmoid(z), sigmoid(z)]; a config that lists two classes for a one-output checkpoint says what to set."""
    rd = tmp_path / "run"
    rd.mkdir()
    torch.manual_seed(0)
    ref = torchvision.models.resnet18(num_classes=1).eval()
    torch.save(ref.state_dict(), rd / "checkpoint.pt")
    cfg_two = {"model": {"name": "resnet18"}, "classes": ["benign", "malignant"], "input": {"size": 64}}
    (rd / "config.yaml").write_text(yaml.safe_dump(cfg_two))
    with pytest.raises(RunDirError, match=r"checkpoint \(1, 512\).*for a single-logit \(sigmoid\) binary model set "
                                          r"model.num_classes: 1"):
        load_run(rd)
    (rd / "config.yaml").write_text(yaml.safe_dump({**cfg_two, "model": {"name": "resnet18", "num_classes": 1}}))
    model, cfg = load_run(rd)
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        z = ref(x)[:, 0]
        p = torch.softmax(model(x), 1)
    torch.testing.assert_close(p[:, 1], torch.sigmoid(z), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(p[:, 0], 1 - torch.sigmoid(z), rtol=1e-5, atol=1e-6)
    assert cfg.single_logit and cfg.num_classes == 2 and "sigmoid" in cfg.to_dict()["model"]["outputs"]
    (rd / "config.yaml").write_text(yaml.safe_dump({**cfg_two, "classes": ["a", "b", "c"],
                                                    "model": {"name": "resnet18", "num_classes": 1}}))
    with pytest.raises(RunDirError, match="num_classes = 1 .* needs exactly two classes"):
        load_run(rd)


def test_ema_weights_beside_the_model_are_named_and_selectable(tmp_path):
    """timm's CheckpointSaver stores EMA weights under state_dict_ema beside state_dict: the default audits
    state_dict and says the EMA weights were not audited; model.state_key picks them."""
    rd = tmp_path / "run"
    rd.mkdir()
    torch.manual_seed(0)
    plain, ema = torchvision.models.resnet18(num_classes=3), torchvision.models.resnet18(num_classes=3)
    torch.save({"state_dict": plain.state_dict(), "state_dict_ema": ema.state_dict(), "epoch": 4},
               rd / "model_best.pth.tar")
    cfg = {"model": {"name": "resnet18"}, "classes": ["a", "b", "c"], "input": {"size": 64}}
    (rd / "config.yaml").write_text(yaml.safe_dump(cfg))
    model, run = load_run(rd)
    assert torch.equal(model.fc.weight, plain.fc.weight)
    assert run.state_key is None and "state_dict_ema" in run.weights_note and "model.state_key" in run.weights_note
    (rd / "config.yaml").write_text(yaml.safe_dump({**cfg, "model": {"name": "resnet18", "state_key": "state_dict_ema"}}))
    model, run = load_run(rd)
    assert torch.equal(model.fc.weight, ema.fc.weight) and run.weights_note == ""
    assert run.to_dict()["state_key"] == "state_dict_ema"
    (rd / "config.yaml").write_text(yaml.safe_dump({**cfg, "model": {"name": "resnet18", "state_key": "ema"}}))
    with pytest.raises(RunDirError, match=r"model.state_key 'ema' is not an entry holding weights \(entries: epoch, "
                                          r"state_dict, state_dict_ema\)"):
        load_run(rd)


def test_one_output_of_a_multi_label_model_audited_as_binary(tmp_path):
    """CheXNet-style models give one sigmoid per finding: model.binary_logit picks the finding audited, read as
    [-z/2, z/2] (softmax = [1 - sigmoid(z), sigmoid(z)]); its index is checked against the output count."""
    rd = tmp_path / "run"
    rd.mkdir()
    torch.manual_seed(0)
    ref = torchvision.models.resnet18(num_classes=5).eval()
    torch.save(ref.state_dict(), rd / "checkpoint.pt")
    base = {"classes": ["no_effusion", "effusion"], "input": {"size": 64}}
    (rd / "config.yaml").write_text(yaml.safe_dump({**base, "model": {"name": "resnet18", "num_classes": 5,
                                                                       "binary_logit": 3}}))
    model, cfg = load_run(rd)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(torch.softmax(model(x), 1)[:, 1], torch.sigmoid(ref(x)[:, 3]), rtol=1e-5,
                                   atol=1e-6)
    assert cfg.n_outputs == 5 and cfg.num_classes == 2 and "output 3 of 5" in cfg.to_dict()["model"]["outputs"]
    for model_cfg, match in (({"num_classes": 5, "binary_logit": 5}, "binary_logit = 5 but the network has 5 outputs"),
                             ({"binary_logit": 2}, "binary_logit = 2 needs model.num_classes"),
                             ({"num_classes": 5, "binary_logit": "3"}, "must be an output index"),
                             ({"num_classes": "two"}, "model.num_classes must be a positive integer"),
                             ({"num_classes": 0}, "model.num_classes must be a positive integer")):
        (rd / "config.yaml").write_text(yaml.safe_dump({**base, "model": {"name": "resnet18", **model_cfg}}))
        with pytest.raises(RunDirError, match=match):
            load_run(rd)


def test_top2_margin_is_log_odds_of_the_top_two():
    import numpy as np
    from audit.predict import top2_margin
    from audit.run import two_class_logits
    z = torch.tensor([[2.0, 0.0, 1.0], [0.0, 0.0, 0.0], [40.0, 0.0, -3.0]])
    np.testing.assert_allclose(top2_margin(z), [1.0, 0.0, 40.0])
    p = torch.softmax(z[:1].double(), 1)[0]
    assert top2_margin(z)[0] == pytest.approx(float(torch.log(p[0] / p[2])))
    # a sigmoid output read as [-z/2, z/2]: the margin is |z|, the logit itself
    two = two_class_logits(None, None, torch.tensor([[3.0], [-5.0]]))
    np.testing.assert_allclose(top2_margin(two), [3.0, 5.0])
    assert np.isnan(top2_margin(torch.zeros(2, 1))).all()


@pytest.mark.parametrize("sep,name", [(";", "semicolons"), ("\t", "tabs")])
def test_manifest_with_another_delimiter_is_named(tmp_path, sep, name):
    from audit.errors import ManifestError
    from audit.manifest import load_manifest
    m = tmp_path / "m.csv"
    m.write_text(sep.join(["image", "label"]) + "\n" + sep.join(["a.png", "x"]) + "\n")
    with pytest.raises(ManifestError, match=f"seems separated by {name}"):
        load_manifest(m)
    m.write_text("image\na.png\n")  # one genuine column: the usual missing-label message
    with pytest.raises(ManifestError, match="missing column 'label'"):
        load_manifest(m)


def test_log_odds_ranks_what_the_float32_softmax_saturates():
    """log p_c/(1 − p_c) = z_c − logsumexp_{k≠c} z_k, in float64: equal to the softmax's where p is not saturated,
    exact where float32 p has rounded to 1.0, and the logit itself for a sigmoid output read as [−z/2, z/2]."""
    import numpy as np
    from audit.predict import log_odds
    from audit.run import two_class_logits
    z = torch.tensor([[2.0, 0.0, 1.0], [0.5, -0.3, 0.1], [40.0, 0.0, -1.0], [60.0, 0.0, -1.0]])
    p = torch.softmax(z[:2].double(), 1).numpy()
    np.testing.assert_allclose(log_odds(z)[:2], np.log(p / (1 - p)), rtol=1e-12)
    assert (torch.softmax(z[2:], 1)[:, 0] == 1.0).all()               # tied at 1.0 in float32 ...
    lo = log_odds(z)[2:, 0]
    np.testing.assert_allclose(lo, [40.0 - math.log(1 + math.exp(-1.0)), 60.0 - math.log(1 + math.exp(-1.0))])
    assert lo[1] - lo[0] == pytest.approx(20.0)                        # ... 20 nats apart in log-odds
    np.testing.assert_allclose(log_odds(two_class_logits(None, None, torch.tensor([[3.0], [-55.0]])))[:, 1],
                               [3.0, -55.0])
    many = torch.randn(100, 300, generator=torch.Generator().manual_seed(0)) * 5   # 3 row chunks of 46
    q = torch.softmax(many.double(), 1).numpy()
    np.testing.assert_allclose(log_odds(many), np.log(q / (1 - q)), rtol=1e-9, atol=1e-9)
    assert np.isnan(log_odds(torch.zeros(2, 1))).all()


def test_run_config_scale16_reaches_the_spec_and_the_cache_key(tiny_run):
    """`input.scale16` in config.yaml (a bit depth may be written as text) is parsed into the InputSpec and into
    its to_dict, which keys the CAM cache: another scaling is another cache entry. A bad value is a one-line
    error naming the file and the option."""
    import yaml

    from audit.cache import cache_key
    from audit.errors import RunDirError
    from audit.run import load_run_config
    cfg_path = tiny_run / "config.yaml"
    raw = yaml.safe_load(cfg_path.read_text())
    assert load_run_config(tiny_run).input.scale16 == "max"
    keys = set()
    for v, want in (("full", "full"), ("12", 12), (10, 10)):
        raw["input"]["scale16"] = v
        cfg_path.write_text(yaml.safe_dump(raw))
        spec = load_run_config(tiny_run).input
        assert spec.scale16 == want and spec.to_dict()["scale16"] == want
        keys.add(cache_key({"input": spec.to_dict()}))
    assert len(keys) == 3
    raw["input"]["scale16"] = "half"
    cfg_path.write_text(yaml.safe_dump(raw))
    with pytest.raises(RunDirError, match=r"config\.yaml.*input\.scale16: expected one of"):
        load_run_config(tiny_run)


def test_bit_depth_note_counts_and_names_the_rule():
    import pandas as pd

    from audit.pipeline import bit_depth_note
    assert bit_depth_note(pd.Series([8, 8, 8]), "max") is None
    assert bit_depth_note(pd.Series([16, 8, 16, 8, 8]), 12) == (
        "2 of 5 images are 16-bit grayscale, divided by 2^12 − 1 (input.scale16: 12); the training loader must "
        "have scaled them the same way; the set mixes bit depths, which can follow the site or scanner: compare "
        "with --by src_mode")
    assert bit_depth_note(pd.Series([32, 16]), "max") == (
        "1 of 2 images are 16-bit grayscale, divided by each image's own maximum (input.scale16: max); the training "
        "loader must have scaled them the same way; 1 of 2 are 32-bit float, taken as [0, 1] or stretched from "
        "their own range")


def test_preset_mapping_falls_back_to_canonical_columns(tmp_path):
    """configs/ham10000.yaml maps dx -> label and builds masks from {image_id}; a manifest already in the
    canonical layout (image, label) must still load: the mapped column falls back to the canonical one, and
    image_id for the mask pattern comes from the image's file name."""
    from audit.manifest import DataSpec, ManifestError, load_manifest
    (tmp_path / "a.jpg").write_bytes(b"")
    (tmp_path / "manifest.csv").write_text("image,label\na.jpg,mel\nsub/b.png,nv\n")
    spec = DataSpec(columns={"label": "dx"}, image_pattern="images/{image_id}.jpg",
                    mask_pattern="masks/{image_id}_segmentation.png")
    df = load_manifest(tmp_path / "manifest.csv", spec, classes=["mel", "nv"])
    assert list(df["label"]) == ["mel", "nv"]
    assert list(df["image_id"]) == ["a", "b"]
    assert list(df["image"]) == [str(tmp_path / "a.jpg"), str(tmp_path / "sub/b.png")]
    assert list(df["mask"]) == [str(tmp_path / "masks/a_segmentation.png"), str(tmp_path / "masks/b_segmentation.png")]
    # neither the mapped nor the canonical column: still the one-line error naming both
    (tmp_path / "bad.csv").write_text("image,diagnosis\na.jpg,mel\n")
    with pytest.raises(ManifestError, match=r"column 'dx' \(mapped to 'label'\) not found"):
        load_manifest(tmp_path / "bad.csv", spec, classes=["mel", "nv"])
    # the dataset's own layout keeps working: dx mapped, image and mask built from image_id
    (tmp_path / "ham.csv").write_text("image_id,dx\nISIC_1,mel\n")
    df = load_manifest(tmp_path / "ham.csv", spec, classes=["mel", "nv"])
    assert df["image"].iloc[0] == str(tmp_path / "images/ISIC_1.jpg") and df["label"].iloc[0] == "mel"


def test_split_note_when_no_split_chose_the_rows():
    """#26: a manifest without a split column (HAM10000_metadata.csv) audits every row, training images included;
    the audit must say so. Known answers for each case."""
    import pandas as pd

    from audit.manifest import split_note
    none = pd.DataFrame({"split": [pd.NA, pd.NA]})
    note = split_note(none, "all")                 # the two cases differ in what they name: the column, the splits
    assert note and "split column" in note and "--split all" not in note
    assert split_note(none, None) == split_note(none, "all")
    mixed = pd.DataFrame({"split": ["train", "test", "val"]})
    note = split_note(mixed, "all")
    assert note.startswith("--split all") and "['test', 'train', 'val']" in note and "train" in note
    assert split_note(mixed, "test") is None
    assert split_note(pd.DataFrame({"split": ["test", "val"]}), "all") is None     # held-out splits only


def test_one_streaming_loop_records_failures_and_keeps_the_rows_done_when_interrupted(tmp_path):
    """audit.stream.stream_batches (the audit's, the multi-label audit's and the scan's loop, #26 §4): failures
    become Failure rows with their manifest row, each readable batch gives one chunk, progress counts every image,
    and an interruption writes the chunks done so far to the partial CSV before it goes on."""
    from audit.data import Batch
    from audit.stream import Failure, stream_batches, write_errors
    rows = pd.DataFrame({"image_id": ["a", "b", "c", "d"], "image": ["a.png", "b.png", "c.png", "d.png"],
                         "_row": [10, 11, 12, 13]})
    img = torch.zeros(1, 2, 2, 3, dtype=torch.uint8)

    def batches(stop: bool):
        yield Batch(idx=[0], img=img, src_hw=[(2, 2)], src_info=[{}], failed=[(1, "unreadable image b.png")],
                    t_decode=0.5)
        if stop:
            raise KeyboardInterrupt
        yield Batch(idx=[], img=None, src_hw=[], src_info=[], failed=[(2, "image not found: c.png")])
        yield Batch(idx=[3], img=img, src_hw=[(2, 2)], src_info=[{}], failed=[], t_decode=0.25)

    seen = []
    on_batch = lambda b: pd.DataFrame({"image_id": rows["image_id"].iloc[b.idx].tolist(), "_row": 0})  # noqa: E731
    partial = tmp_path / "p.csv"
    partial.write_text("stale")
    out = stream_batches(batches(False), rows, on_batch, progress=lambda d, t: seen.append((d, t)),
                         partial=partial, row_col="_row")
    assert out.table()["image_id"].tolist() == ["a", "d"] and out.t_decode == 0.75
    assert out.failures == [Failure(11, "b", "b.png", "unreadable image b.png"),
                            Failure(12, "c", "c.png", "image not found: c.png")]
    assert seen == [(2, 4), (3, 4), (4, 4)] and not partial.exists()      # a finished pass removes it
    with pytest.raises(KeyboardInterrupt):
        stream_batches(batches(True), rows, on_batch, partial=partial, drop_in_partial=("_row",))
    assert pd.read_csv(partial).columns.tolist() == ["image_id"] and pd.read_csv(partial)["image_id"].tolist() == ["a"]
    write_errors(tmp_path / "errors.csv", out.failures)
    assert pd.read_csv(tmp_path / "errors.csv").columns.tolist() == ["image_id", "image", "reason"]
    write_errors(tmp_path / "errors.csv", [])                               # a clean pass removes a stale one
    assert not (tmp_path / "errors.csv").exists()
