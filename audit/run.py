"""Load a training run directory: config, checkpoint (weights_only), model (torchvision | timm).

Run directory contract (docs/run_dir.md):
  config.yaml | config.json   model {name, source, num_classes, binary_logit, state_key}, classes, input {...},
                              positive_class, data {manifest}
  args.yaml                   (without a config) the arguments timm's train.py writes into its output folder
  checkpoint                  first of checkpoint.pt, best.pt, model.pt, *.pth, model_best.pth.tar, *.pth.tar,
                              *.safetensors, *.ckpt
A checkpoint may be a plain state_dict or hold one under `model`, `state_dict` or `model_state_dict` (or the
entry `model.state_key` names, e.g. timm's `state_dict_ema`); `module.` and `model.` prefixes are stripped. It
is always read with `torch.load(weights_only=True)`; the one non-tensor type allowed besides torch's defaults
is `argparse.Namespace` (the training arguments that timm's CheckpointSaver and many training scripts store
beside the weights: plain data, no code).
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml

from .errors import RunDirError
from .preprocess import IMAGENET_MEAN, IMAGENET_STD, InputSpec, scale16_value

CHECKPOINT_PATTERNS = ("checkpoint.pt", "best.pt", "model.pt", "*.pth", "model_best.pth.tar", "*.pth.tar",
                       "*.safetensors", "*.ckpt")
STATE_KEYS = ("model", "state_dict", "model_state_dict")
BINARY_LOGIT_NOTE = ("sigmoid logit z ({which}) for the second class: read as the logits [-z/2, z/2], whose softmax "
                     "is [1 - sigmoid(z), sigmoid(z)]; Grad-CAM explains +z (second class) or -z (first), halved")
STRIP_PREFIXES = ("module.", "model.")


@dataclass
class RunConfig:
    """What a run directory declares (or what --arch/--classes supplied)."""

    model_name: str
    source: str  # "torchvision" | "timm"
    classes: list[str]
    input: InputSpec
    positive_class: str | None = None
    manifest: Path | None = None
    data: dict = field(default_factory=dict)
    run_dir: Path | None = None
    checkpoint: Path | None = None
    checkpoint_sha256: str | None = None
    binary_logit: int | None = None  # audited as binary: this sigmoid output (0 for a one-output model)
    n_logits: int | None = None  # the network's output count when it differs from the class count
    state_key: str | None = None  # the checkpoint entry holding the weights (default: model / state_dict / ...)
    weights_note: str = ""  # what else the checkpoint held that was not audited (e.g. EMA weights)
    task: str = "multiclass"  # "multiclass" (softmax, or one sigmoid output audited as binary) | "multilabel"
    uncertain: str = "ignore"  # multi-label: how a manifest's -1 (CheXpert uncertain) is read (audit/multilabel.py)
    op_threshs: list[float] | None = None  # multi-label: per-finding probability thresholds (xrv's op_threshs)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def single_logit(self) -> bool:
        """A binary audit of one sigmoid output (see `BinaryLogit`)."""
        return self.binary_logit is not None

    @property
    def n_outputs(self) -> int:
        """The network's own output width: `n_logits` for a binary audit of a sigmoid output, else the class
        count."""
        return int(self.n_logits or 1) if self.single_logit else self.num_classes

    @property
    def multilabel(self) -> bool:
        """One sigmoid output per finding, every finding audited (audit/multilabel.py)."""
        return self.task == "multilabel"

    @property
    def outputs_text(self) -> str:
        if self.multilabel:
            return "one sigmoid logit per finding (multi-label)"
        if not self.single_logit:
            return "one logit per class, softmax"
        which = "its only output" if self.n_outputs == 1 else f"output {self.binary_logit} of {self.n_outputs}"
        return BINARY_LOGIT_NOTE.format(which=which)

    def to_dict(self) -> dict:
        return {"model": {"name": self.model_name, "source": self.source, "num_classes": self.num_classes,
                          "outputs": self.outputs_text},
                "classes": list(self.classes), "input": self.input.to_dict(), "positive_class": self.positive_class,
                "manifest": str(self.manifest) if self.manifest else None,
                "run_dir": str(self.run_dir) if self.run_dir else None,
                "checkpoint": str(self.checkpoint) if self.checkpoint else None,
                "checkpoint_sha256": self.checkpoint_sha256, "state_key": self.state_key,
                "weights_note": self.weights_note or None, "task": self.task,
                **({"uncertain": self.uncertain, "op_threshs": self.op_threshs} if self.multilabel else {})}


def read_config_file(path: Path) -> dict:
    """Parse a YAML or JSON file into a dict; RunDirError naming the file on failure."""
    try:
        text = path.read_text()
        d = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (OSError, yaml.YAMLError, json.JSONDecodeError) as e:
        msg = str(e).replace("\n", " ")
        raise RunDirError(f"{path}: cannot parse ({type(e).__name__}: {msg[:200]})") from None
    if d is None:
        d = {}
    if not isinstance(d, dict):
        raise RunDirError(f"{path}: expected a mapping at the top level, got {type(d).__name__}")
    return d


def find_checkpoint(run_dir: Path) -> Path:
    for pat in CHECKPOINT_PATTERNS:
        hits = sorted(run_dir.glob(pat))
        if hits:
            return hits[0]
    raise RunDirError(f"{run_dir}: no checkpoint found (expected one of {', '.join(CHECKPOINT_PATTERNS)})")


def _timm_pretrained_cfg(model_name: str) -> dict:
    """timm's pretrained config of a model name as a dict ({} for an unknown name: create_model reports it)."""
    try:
        import timm
        cfg = timm.get_pretrained_cfg(model_name)
    except Exception:
        return {}
    if cfg is None:
        return {}
    return cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg)


def _default_input(model_name: str, source: str) -> InputSpec:
    """timm's pretrained cfg for timm models (mean, std, size), ImageNet at 224 otherwise."""
    c = _timm_pretrained_cfg(model_name) if source == "timm" else {}
    if not c:
        return InputSpec()
    return InputSpec(size=int(c.get("input_size", (3, 224, 224))[-1]), mean=tuple(c.get("mean", IMAGENET_MEAN)),
                     std=tuple(c.get("std", IMAGENET_STD)))


def _natural_key(s: str) -> list:
    """timm's class-folder order (timm.utils.misc.natural_key): digits compare as numbers, case ignored."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s.lower())]


def _timm_classes(a: dict) -> tuple[list[str] | None, str]:
    """(the class names a timm train.py run used, in logit order, or None; why not, in words).

    From `class_map` (a .txt file, one name per line, resolved as timm does: as given, else under the data
    folder), else from the class folders of `<data_dir>/<train_split>` sorted the way timm's folder reader
    sorts them (natural order). A .pkl class map is not unpickled (pass --classes instead)."""
    root = a.get("data_dir") or a.get("data")
    cmap = a.get("class_map")
    if cmap:
        cp = Path(str(cmap))
        if not cp.is_file() and root:
            cp = Path(str(root)) / cp
        if cp.suffix.lower() != ".txt":
            return None, f"class_map {cmap!r} is not a .txt file (a pickle is never unpickled here)"
        try:
            names = [ln.strip() for ln in cp.read_text(encoding="utf-8").splitlines()]
        except OSError:
            return None, f"class_map {cmap!r} is not readable here"
        names = [n for n in names if n]
        return (names, "") if names else (None, f"class_map {cmap!r} is empty")
    split = Path(str(root or "<data_dir>")) / str(a.get("train_split") or "train")
    if root and not a.get("dataset") and split.is_dir():  # dataset "" = timm's image-folder reader
        names = sorted((p.name for p in split.iterdir() if p.is_dir()), key=_natural_key)
        if names:
            return names, ""
    return None, f"no class_map, and {split} is not a folder of class folders here"


def timm_args_config(path: Path, classes: list[str] | None = None) -> dict:
    """Translate the `args.yaml` timm's train.py writes into the run-config mapping `load_run_config` reads.

    model, num_classes, input (size from input_size / img_size, else the model's pretrained config; mean, std,
    interpolation; resize = crop with crop_pct: timm's own evaluation transform) and classes (see
    `_timm_classes`; `classes` given on the command line win). RunDirError naming the file and the option when a
    value is unusable."""
    try:
        return _timm_args_config(path, read_config_file(path), classes)
    except (TypeError, ValueError) as e:  # a number or list of the wrong type
        raise RunDirError(f"{path}: unusable timm train.py argument ({str(e).splitlines()[0][:200]})") from None


def _timm_args_config(path: Path, a: dict, classes: list[str] | None) -> dict:
    name = a.get("model")
    if not name or not isinstance(name, str):
        raise RunDirError(f"{path}: no 'model' (timm train.py arguments expected)")
    inp: dict = {"resize": "crop"}
    chans = a.get("in_chans") or a.get("chans")
    size = a.get("input_size")
    if size is not None:
        if not (isinstance(size, list) and len(size) == 3 and size[1] == size[2]):
            raise RunDirError(f"{path}: input_size {size!r}: expected [channels, S, S] (a square input)")
        chans, size = size[0], size[2]
    elif a.get("img_size") is not None:
        size = a["img_size"]
    pre = _timm_pretrained_cfg(name)
    inp["size"] = int(size if size is not None else pre.get("input_size", (3, 224, 224))[-1])
    if chans:
        inp["channels"] = int(chans)
    n_ch = inp.get("channels", 3)
    for k, default in (("mean", IMAGENET_MEAN), ("std", IMAGENET_STD)):
        v = a.get(k) or pre.get(k) or default
        v = list(v) if isinstance(v, (list, tuple)) else [v]
        inp[k] = v * n_ch if len(v) == 1 else v
    inp["crop_pct"] = float(a.get("crop_pct") or pre.get("crop_pct") or 0.875)
    interp = a.get("interpolation") or pre.get("interpolation") or "bicubic"
    if interp not in ("bilinear", "bicubic"):
        raise RunDirError(f"{path}: interpolation {interp!r} is not supported (bilinear or bicubic)")
    inp["interpolation"] = interp
    mode = a.get("crop_mode") or pre.get("crop_mode") or "center"
    if mode == "squash" and inp["crop_pct"] == 1.0:
        inp["resize"] = "stretch"
    elif mode != "center":
        raise RunDirError(f"{path}: crop_mode {mode!r} with crop_pct {inp['crop_pct']} is not supported (center, "
                          "or squash with crop_pct 1.0); write a config.yaml with an input section")
    raw: dict = {"model": {"name": name, "source": "timm"}, "input": inp}
    if a.get("num_classes") is not None:
        raw["model"]["num_classes"] = int(a["num_classes"])
    cls, why = (classes, "") if classes else _timm_classes(a)
    if not cls:
        n = raw["model"].get("num_classes")
        raise RunDirError(f"{path}: the timm train.py arguments give no class names ({why}); pass the classes"
                          + (f", {n} in logit order" if n else ", in logit order") + " (--classes a,b,c)")
    raw["classes"] = list(cls)
    return raw


def load_run_config(run_dir: str | Path | None, arch: str | None = None, classes: list[str] | None = None,
                    source: str | None = None) -> RunConfig:
    """Resolve a RunConfig from `run_dir/config.{yaml,json}` (else a timm train.py `args.yaml`), with
    --arch/--classes as overrides/fallbacks."""
    rd = Path(run_dir) if run_dir is not None else None
    if rd is not None and not rd.is_dir():
        raise RunDirError(f"{rd}: run directory not found")
    raw: dict = {}
    cfg_path = None
    if rd is not None:
        for name in ("config.yaml", "config.yml", "config.json"):
            if (rd / name).is_file():
                cfg_path = rd / name
                raw = read_config_file(cfg_path)
                break
        else:
            if (rd / "args.yaml").is_file():
                cfg_path = rd / "args.yaml"
                raw = timm_args_config(cfg_path, classes)
    where = str(cfg_path) if cfg_path else (
        f"{rd}: no config.yaml, config.json or timm args.yaml; --arch/--classes" if rd is not None
        else "--arch/--classes")
    m = raw.get("model") or {}
    if isinstance(m, str):
        m = {"name": m}
    if not isinstance(m, dict):
        raise RunDirError(f"{where}: 'model' must be a mapping {{name, source, num_classes}}")
    _known_keys(m, MODEL_KEYS, "model", where)
    name = arch or m.get("name")
    src = source or m.get("source") or "torchvision"
    cls = classes or raw.get("classes")
    if src == "torchxrayvision" and not cls:
        from .xrv import xrv_pathologies
        cls = xrv_pathologies(str(name or ""), where)  # model.pathologies of the architecture
    if not name:
        raise RunDirError(f"{where}: no model name (set model.name in config.yaml or pass arch / --arch)")
    if not cls or not isinstance(cls, list):
        raise RunDirError(f"{where}: no class list (set classes: [...] in config.yaml or pass classes / --classes a,b,c)")
    cls = [str(c) for c in cls]
    dup = sorted({c for c in cls if cls.count(c) > 1})
    if dup:
        raise RunDirError(f"{where}: class names must be unique (logit order), repeated: {dup}")
    if src not in SOURCES:
        raise RunDirError(f"{where}: model.source must be one of {', '.join(SOURCES)}, got {src!r}")
    n = m.get("num_classes")
    if n is not None and (not isinstance(n, int) or isinstance(n, bool) or n < 1):
        raise RunDirError(f"{where}: model.num_classes must be a positive integer (the network's output count), "
                          f"got {n!r}")
    task = m.get("task") or ("multilabel" if src == "torchxrayvision" else "multiclass")
    if task not in TASKS:
        raise RunDirError(f"{where}: model.task must be one of {', '.join(TASKS)}, got {task!r}")
    if task == "multilabel" and m.get("binary_logit") is not None:
        raise RunDirError(f"{where}: model.binary_logit audits one output as binary; a multi-label run "
                          "(model.task: multilabel) audits every finding (restrict them with --findings)")
    if src == "torchxrayvision" and task != "multilabel":
        raise RunDirError(f"{where}: torchxrayvision models are multi-label (model.task: multilabel)")
    uncertain = raw.get("uncertain", "ignore")
    if uncertain not in UNCERTAIN:
        raise RunDirError(f"{where}: uncertain must be one of {', '.join(UNCERTAIN)} (how a label -1 is read), "
                          f"got {uncertain!r}")
    k, n_logits = m.get("binary_logit"), None
    if k is None and n is not None and int(n) == 1 and task != "multilabel":
        k = 0  # a one-output (sigmoid) binary model
    if k is not None:
        if not isinstance(k, int) or isinstance(k, bool) or k < 0:
            raise RunDirError(f"{where}: model.binary_logit must be an output index (0, 1, ...), got {k!r}")
        if n is None and k > 0:
            raise RunDirError(f"{where}: model.binary_logit = {k} needs model.num_classes (the network's output count)")
        n_logits = int(n) if n is not None else 1
        if k >= n_logits:
            raise RunDirError(f"{where}: model.binary_logit = {k} but the network has {n_logits} outputs")
        if len(cls) != 2:
            raise RunDirError(f"{where}: a sigmoid output audited as a binary model (model.num_classes = 1 or "
                              f"model.binary_logit) needs exactly two classes [negative, positive], got {len(cls)}")
    elif n is not None and int(n) != len(cls):
        raise RunDirError(f"{where}: model.num_classes = {n} but {len(cls)} classes are listed")
    inp_raw = raw.get("input") or {}
    if not isinstance(inp_raw, dict):
        raise RunDirError(f"{where}: 'input' must be a mapping of {list(INPUT_KEYS)}")
    _known_keys(inp_raw, INPUT_KEYS, "input", where)
    if src == "torchxrayvision":
        from .xrv import xrv_input
        base = xrv_input()
    else:
        base = _default_input(name, src)
    try:
        inp = InputSpec(size=int(inp_raw.get("size", base.size)),
                        mean=tuple(float(x) for x in inp_raw.get("mean", base.mean)),
                        std=tuple(float(x) for x in inp_raw.get("std", base.std)),
                        resize=str(inp_raw.get("resize", base.resize)),
                        crop_pct=float(inp_raw.get("crop_pct", base.crop_pct)),
                        channels=int(inp_raw.get("channels", base.channels)),
                        interpolation=str(inp_raw.get("interpolation", base.interpolation)),
                        scale16=scale16_value(inp_raw.get("scale16", base.scale16)),
                        dicom_window=str(inp_raw.get("dicom_window", base.dicom_window)))
    except Exception as e:
        raise RunDirError(f"{where}: invalid input section ({e})") from None
    pos = raw.get("positive_class")
    if pos is not None and str(pos) not in cls:
        raise RunDirError(f"{where}: positive_class {pos!r} is not among the classes {cls}")
    data = raw.get("data") or {}
    manifest = None
    if data.get("manifest"):
        mp = Path(data["manifest"])
        manifest = mp if mp.is_absolute() else (rd / mp if rd else mp)
    key = m.get("state_key")
    if key is not None and not isinstance(key, str):
        raise RunDirError(f"{where}: model.state_key must be a string (the checkpoint entry holding the weights)")
    return RunConfig(model_name=str(name), source=src, classes=cls, input=inp,
                     positive_class=str(pos) if pos is not None else None, manifest=manifest, data=data, run_dir=rd,
                     binary_logit=k, n_logits=n_logits, state_key=key, task=task, uncertain=str(uncertain))


SOURCES = ("torchvision", "timm", "torchxrayvision")
TASKS = ("multiclass", "multilabel")
UNCERTAIN = ("ignore", "zeros", "ones")
#: The keys of a run config's `model:` and `input:` sections. Other top-level keys (a training script's own
#: settings) are left alone, but a misspelt key in these two would silently change what is audited.
MODEL_KEYS = ("name", "source", "num_classes", "binary_logit", "state_key", "task")
INPUT_KEYS = ("size", "mean", "std", "resize", "crop_pct", "channels", "interpolation", "scale16", "dicom_window")


def _known_keys(section: dict, known: tuple[str, ...], name: str, where: str) -> None:
    unknown = [str(k) for k in section if k not in known]
    if unknown:
        raise RunDirError(f"{where}: unknown key(s) in {name}: {unknown}; expected some of {list(known)}")


def build_model(cfg: RunConfig) -> torch.nn.Module:
    """An untrained model of the declared architecture with `n_outputs` outputs (never downloads weights)."""
    if cfg.source == "torchxrayvision":
        from .xrv import build_xrv_model
        return build_xrv_model(cfg)
    try:
        if cfg.source == "timm":
            import timm
            return timm.create_model(cfg.model_name, pretrained=False, num_classes=cfg.n_outputs,
                                     in_chans=cfg.input.channels)
        import torchvision
        model = torchvision.models.get_model(cfg.model_name, weights=None, num_classes=cfg.n_outputs)
    except (ValueError, RuntimeError, KeyError, TypeError) as e:
        raise RunDirError(f"model {cfg.source}:{cfg.model_name}: cannot build ({str(e).splitlines()[0]})") from None
    if cfg.input.channels == 1:
        raise RunDirError("input.channels = 1 is supported for timm models only (torchvision stems take 3 channels)")
    return model


def _extract_state_dict(obj, path: Path, key: str | None = None) -> tuple[dict, str]:
    """(the weights, a note on other weights the checkpoint holds). With `key`, obj[key]; else the first of
    STATE_KEYS, recursively, or obj itself when it holds only tensors."""
    if key is not None:
        if not (isinstance(obj, dict) and isinstance(obj.get(key), dict)):
            have = ", ".join(sorted(str(k) for k in obj)[:12]) if isinstance(obj, dict) else type(obj).__name__
            raise RunDirError(f"{path}: model.state_key {key!r} is not an entry holding weights (entries: {have})")
        return _extract_state_dict(obj[key], path)[0], ""
    if isinstance(obj, dict):
        for k in STATE_KEYS:
            if k in obj and isinstance(obj[k], dict):
                sd, _ = _extract_state_dict(obj[k], path)
                others = [o for o in obj if o != k and str(o).startswith(("state_dict", "model"))
                          and isinstance(obj[o], dict)]
                note = (f"the checkpoint also holds {', '.join(map(str, others))} (not audited; set model.state_key "
                        "to audit it)") if others else ""
                return sd, note
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return obj, ""
    raise RunDirError(f"{path}: not a state_dict (expected tensors, or a dict holding one under "
                      f"{', '.join(STATE_KEYS)})")


def _strip(sd: dict, model_keys: set[str]) -> dict:
    for _ in range(3):
        if set(sd) <= model_keys:
            break
        for p in STRIP_PREFIXES:
            if sd and all(k.startswith(p) for k in sd):
                sd = {k[len(p):]: v for k, v in sd.items()}
                break
        else:
            # mixed keys: strip prefixes key by key where that makes a model key
            sd = {next((k[len(p):] for p in STRIP_PREFIXES if k.startswith(p) and k[len(p):] in model_keys), k): v
                  for k, v in sd.items()}
            break
    return sd


def read_state_dict(path: Path, key: str | None = None) -> tuple[dict, str]:
    """(tensors of a checkpoint file, read without executing code (weights_only / safetensors); a note on other
    weights it holds). key: the entry holding the weights (default: see `_extract_state_dict`)."""
    if path.suffix == ".safetensors" and key is not None:
        raise RunDirError(f"{path}: model.state_key {key!r}: a .safetensors file holds one set of weights")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            return load_file(str(path), device="cpu"), ""
        allow = getattr(torch.serialization, "safe_globals", None)  # torch >= 2.5
        with allow([argparse.Namespace]) if allow else contextlib.nullcontext():
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except ImportError:
        raise RunDirError(f"{path}: reading .safetensors needs the 'safetensors' package (pip install safetensors)")
    except Exception as e:
        raise RunDirError(f"{path}: {_load_failure(path, e)}") from None
    return _extract_state_dict(obj, path, key)


def _load_failure(path: Path, e: Exception) -> str:
    """One line on why a weights-only load failed: the Python objects it refused, or that it is no checkpoint."""
    try:
        refused = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    except Exception:  # not a zip checkpoint, or unreadable: torch.load's own first line says which
        refused = []
    # deterministic order, the model's own classes before torch's building blocks
    refused = sorted((g for g in refused if g != "argparse.Namespace"), key=lambda g: (g.startswith("torch."), g))
    if refused:
        more = f" and {len(refused) - 3} more" if len(refused) > 3 else ""
        return (f"the checkpoint holds Python objects a weights-only load refuses ({', '.join(refused[:3])}{more}): "
                "the auditor never runs a checkpoint's code; save the weights instead "
                "(torch.save(model.state_dict(), path), or safetensors)")
    text = str(e).strip()
    if "WeightsUnpickler error:" in text:  # keep the reason, drop torch's advice to load it unsafely
        reason = " ".join(text.split("WeightsUnpickler error:", 1)[1].split("Check the documentation")[0].split())
        return f"not a checkpoint a weights-only load can read ({reason[:200] or type(e).__name__})"
    first = text.splitlines()[0] if text else type(e).__name__
    return f"cannot load checkpoint with weights_only=True ({first[:300]})"


class BinaryLogit:
    """Forward hook auditing one sigmoid output as a binary model: N×K logits → N×2 logits [-z/2, z/2], z = the
    output at `index` (a one-output model: index 0; a multi-label model: the finding audited).

    softmax([-z/2, z/2]) = [1 - σ(z), σ(z)] exactly, so every softmax-based figure (confidence, thresholds,
    operating points) is the sigmoid's own; Grad-CAM of the second class explains +z/2 and of the first −z/2,
    i.e. pytorch-grad-cam's BinaryClassifierOutputTarget maps at half scale (the same map once normalised).
    Registered on the model `load_run` builds, never on a caller's model."""

    def __init__(self, index: int = 0):
        self.index = int(index)

    def __call__(self, _module: torch.nn.Module, _inputs, out: torch.Tensor) -> torch.Tensor:
        z = out[:, self.index:self.index + 1]
        return torch.cat([-0.5 * z, 0.5 * z], dim=1)


two_class_logits = BinaryLogit(0)  # the hook for a one-output (sigmoid) binary model


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for b in iter(lambda: f.read(chunk), b""):
            h.update(b)
    return h.hexdigest()


def load_run(run_dir: str | Path | None, arch: str | None = None, classes: list[str] | None = None,
             source: str | None = None, checkpoint: str | Path | None = None) -> tuple[torch.nn.Module, RunConfig]:
    """Load config + checkpoint into a model in eval mode on the CPU. Raises RunDirError with one line on failure."""
    cfg = load_run_config(run_dir, arch, classes, source)
    ckpt = Path(checkpoint) if checkpoint else (find_checkpoint(cfg.run_dir) if cfg.run_dir else None)
    if ckpt is None:
        raise RunDirError("no checkpoint: pass a run dir holding one (--run-dir) or checkpoint (--checkpoint)")
    if not ckpt.is_file():
        raise RunDirError(f"{ckpt}: checkpoint not found")
    model = build_model(cfg)
    sd, cfg.weights_note = read_state_dict(ckpt, cfg.state_key)
    if cfg.source == "torchxrayvision":
        from .xrv import take_op_threshs
        sd = take_op_threshs(sd, ckpt, cfg)
    model_sd = model.state_dict()
    sd = _strip(sd, set(model_sd))
    missing = sorted(set(model_sd) - set(sd))
    unexpected = sorted(set(sd) - set(model_sd))
    if missing or unexpected:
        def few(ks):
            return ", ".join(ks[:5]) + (f" (+{len(ks) - 5} more)" if len(ks) > 5 else "")
        raise RunDirError(f"{ckpt}: does not match {cfg.source}:{cfg.model_name} "
                          f"(missing keys: {few(missing) or 'none'}; unexpected keys: {few(unexpected) or 'none'})")
    for k, v in sd.items():
        if tuple(v.shape) != tuple(model_sd[k].shape):
            hint = ""
            if v.ndim >= 1 and model_sd[k].ndim >= 1 and v.shape[0] != model_sd[k].shape[0] and v.ndim <= 2:
                hint = f" (the checkpoint has {v.shape[0]} outputs here; the config lists {cfg.num_classes} classes"
                hint += (": for a single-logit (sigmoid) binary model set model.num_classes: 1)"
                         if v.shape[0] == 1 and cfg.num_classes == 2 else ")")
            raise RunDirError(f"{ckpt}: shape mismatch at {k}: checkpoint {tuple(v.shape)} vs model "
                              f"{tuple(model_sd[k].shape)}{hint}")
    model.load_state_dict(sd, strict=True)
    model.eval()
    with torch.no_grad():
        out = model(torch.zeros(1, cfg.input.channels, cfg.input.size, cfg.input.size))
    if out.ndim != 2 or out.shape[1] != cfg.n_outputs:
        raise RunDirError(f"{ckpt}: the model gives {tuple(out.shape)} logits, but {cfg.n_outputs} are expected "
                          f"({cfg.num_classes} classes{', sigmoid outputs' if cfg.single_logit else ''})")
    if cfg.single_logit:
        model.register_forward_hook(BinaryLogit(cfg.binary_logit))
    cfg.checkpoint = ckpt
    cfg.checkpoint_sha256 = file_sha256(ckpt)
    return model, cfg
