"""Run-directory loading: checkpoint layouts, prefixes, safetensors, config-less runs, and each bad input."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

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
], ids=["missing-dir", "no-checkpoint", "missing-keys", "arch-mismatch", "class-count", "bad-yaml",
        "num-classes", "positive"])
def test_bad_run_dirs(tmp_path, setup, match):
    rd = tmp_path / "run"
    setup(rd)
    with pytest.raises(RunDirError, match=match) as e:
        load_run(rd)
    assert "\n" not in str(e.value)


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
