"""torchxrayvision (mlmed/torchxrayvision) models as a run-dir source: `model.source: torchxrayvision`.

The model is built with `weights=None` (nothing is downloaded) and the run dir's checkpoint is loaded into it
with `torch.load(weights_only=True)` (audit/run.py). Supported architectures: xrv's DenseNet-121, named
`densenet121` or by an xrv weights name (`densenet121-res224-all`, `-nih`, `-chex`, ...: the name only picks the
class list, model.pathologies; the weights still come from the checkpoint). xrv's ResNet builds itself from its
downloaded weights and is refused.

Preprocessing is xrv's own (`xrv_input`): one channel (luminance), xrv.datasets.normalize's [−1024, 1024]
scaling of 8-bit values (x/255·2048 − 1024, i.e. mean 0.5, std 1/2048 on [0, 1]), the centre square crop
(XRayCenterCrop) and 224 px (XRayResizer).

`op_threshs`: when the checkpoint carries them (a state_dict buffer `op_threshs`, or an `op_threshs` entry beside
the weights), they are taken out of the model (whose outputs then stay logits: xrv would otherwise return
op_norm'd probabilities) and used as each finding's decision threshold on σ(logit); NaN entries fall back to 0.5.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch

from .errors import RunDirError
from .preprocess import InputSpec

INSTALL_HINT = "torchxrayvision is not installed: pip install -e '.[xrv]' (or pip install torchxrayvision)"


def _xrv():
    try:
        import torchxrayvision as xrv
    except ImportError:
        raise RunDirError(f"model.source torchxrayvision: {INSTALL_HINT}") from None
    return xrv


def xrv_input() -> InputSpec:
    """xrv's preprocessing as an InputSpec: 224 px, centre square crop, 1 channel, [0, 1] → [−1024, 1024]."""
    return InputSpec(size=224, mean=(0.5,), std=(1.0 / 2048.0,), resize="crop", crop_pct=1.0, channels=1,
                     interpolation="bilinear")


def _arch(name: str, where: str = "model.name") -> str:
    if name == "densenet121" or name.startswith("densenet121-") or name == "densenet":
        return "densenet121"
    raise RunDirError(f"{where}: torchxrayvision model {name!r} is not supported (densenet121 or an xrv DenseNet "
                      "weights name such as densenet121-res224-all; xrv's ResNet builds only from downloaded "
                      "weights)")


def xrv_pathologies(name: str, where: str = "model.name") -> list[str]:
    """The class names (model.pathologies) of an xrv architecture name: the labels of an xrv weights name
    (densenet121-res224-chex → its 18 entries, '' marking an untrained slot, named unused_<i> here), else
    xrv.datasets.default_pathologies (18)."""
    xrv = _xrv()
    _arch(name, where)
    urls = getattr(xrv.models, "model_urls", {})
    labels = urls[name]["labels"] if name in urls else list(xrv.datasets.default_pathologies)
    return [str(c) if c else f"unused_{i}" for i, c in enumerate(labels)]


def build_xrv_model(cfg) -> torch.nn.Module:
    """xrv.models.DenseNet(weights=None, num_classes=len(cfg.classes)), with `pathologies` set to the classes."""
    xrv = _xrv()
    _arch(cfg.model_name)
    if cfg.input.channels != 1:
        raise RunDirError("torchxrayvision models take one channel (input.channels: 1)")
    model = xrv.models.DenseNet(weights=None, num_classes=cfg.num_classes)
    model.pathologies = list(cfg.classes)
    return model


def take_op_threshs(sd: dict, ckpt: Path, cfg) -> dict:
    """Remove `op_threshs` from the weights (or find it beside them in the checkpoint) into cfg.op_threshs
    (a list of floats, one per class; NaN → 0.5). Returns the weights without it."""
    sd = dict(sd)
    t = sd.pop("op_threshs", None)
    if t is None:
        try:
            obj = torch.load(ckpt, map_location="cpu", weights_only=True)
        except Exception:
            obj = None
        if isinstance(obj, dict) and isinstance(obj.get("op_threshs"), (torch.Tensor, list, tuple)):
            t = obj["op_threshs"]
    if t is not None:
        vals = [float(v) for v in torch.as_tensor(t, dtype=torch.float64).flatten()]
        if len(vals) != cfg.num_classes:
            raise RunDirError(f"{ckpt}: op_threshs holds {len(vals)} values for {cfg.num_classes} classes")
        if not all(math.isnan(v) or 0 < v < 1 for v in vals):
            raise RunDirError(f"{ckpt}: op_threshs must be probabilities in (0, 1) (NaN = none), got {vals[:4]} ...")
        cfg.op_threshs = [0.5 if math.isnan(v) else v for v in vals]
    return sd
