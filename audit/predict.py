"""The model side of a pass: the device, the audit's own model prepared on it (BatchNorm folded, channels_last),
plain no-grad predictions, the logit transforms the audit ranks by, and the torchrun helpers."""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch

from .cam import eval_mode
from .data import make_loader
from .errors import ConfigError
from .preprocess import InputSpec, normalize

if TYPE_CHECKING:
    from .config import AuditConfig

__all__ = ["resolve_device", "prepare_model", "model_for_cam", "predict_logits", "predict_probs", "top2_margin",
           "log_odds", "release_freed_heap", "dist_info", "gather_to_rank0"]


def resolve_device(name: str) -> torch.device:
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r}: CUDA is not available on this machine (use cpu)", param="device")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError("device 'mps': MPS is not available on this machine (use cpu)", param="device")
    return torch.device(name)


def top2_margin(logits: torch.Tensor) -> np.ndarray:
    """N×C logits → N float64: top-1 minus top-2 logit, i.e. log(p1 / p2) of the softmax (≥ 0; NaN for one class).
    Unlike the top-1 probability it does not saturate at 1.0 in float32, so confident cases can be ranked."""
    z = logits.detach().double()
    if z.shape[1] < 2:
        return np.full(z.shape[0], np.nan)
    top = z.topk(2, dim=1).values
    return (top[:, 0] - top[:, 1]).cpu().numpy()


def log_odds(logits: torch.Tensor | np.ndarray) -> np.ndarray:
    """N×C logits → N×C float64 log-odds of each class under the softmax, log p_c / (1 − p_c) =
    z_c − logsumexp_{k≠c} z_k (NaN rows stay NaN; one class → NaN).

    A strictly increasing function of p_c that, unlike the float32 softmax, does not saturate: a confident model
    has many images at p = 1.0 exactly, and a threshold or ROC on those ties ranks them as equal. For a sigmoid
    output audited as binary ([−z/2, z/2], `BinaryLogit`) it is z itself."""
    z = torch.as_tensor(logits).detach().double().cpu()
    n, c = z.shape
    if c < 2:
        return np.full((n, c), np.nan)
    out = torch.empty(n, c, dtype=torch.float64)
    step = max(1, (1 << 22) // (c * c))      # rows per chunk: the n×C×C "all but one" tensor stays ≤ 32 MB
    diag = torch.arange(c)
    for i in range(0, n, step):
        others = z[i:i + step, None, :].expand(-1, c, c).clone()
        others[:, diag, diag] = -torch.inf
        out[i:i + step] = z[i:i + step] - torch.logsumexp(others, dim=2)
    return out.numpy()


def release_freed_heap() -> None:
    """Hand memory that the C heap holds but no longer uses back to the OS (glibc `malloc_trim(0)`; elsewhere a no-op).

    A long audit interleaves large, short-lived activation buffers with small allocations that live on (table
    rows); glibc then keeps the freed space in its heap, and the resident set creeps up with N although live
    memory does not (benchmarks/speed.py, streaming section). Trimming once per batch keeps it flat.
    """
    global _trim
    if _trim is None:
        try:
            import ctypes
            _trim = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):
            _trim = False
    if _trim:
        _trim(0)


_trim = None


def dist_info() -> tuple[int, int]:
    """(rank, world size) when running under torchrun with torch.distributed initialised, else (0, 1)."""
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather_to_rank0(obj):
    """Every rank's object in rank order on rank 0 (None elsewhere), over the default process group."""
    import torch.distributed as dist
    out = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
    dist.gather_object(obj, out, dst=0)
    return out


def prepare_model(model: torch.nn.Module, device: torch.device, channels_last: bool = True) -> torch.nn.Module:
    """Move the audit's own model (loaded by `load_run`, never a caller's) to `device`, in place; with
    channels_last its 4-D weights become NHWC, which the convolutions of PyTorch's CPU (oneDNN) and CUDA (cuDNN)
    backends run faster (inputs follow the weights' format; benchmarks/speed.py measures both formats)."""
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    return model


def model_for_cam(model: torch.nn.Module, cfg: AuditConfig, layer: str, spec: InputSpec,
                  device: torch.device) -> tuple[torch.nn.Module, str]:
    """The model the audit runs (Grad-CAM, counterfactuals, validation probabilities), prepared on `device`, and a
    line for summary.json. With cfg.fold_bn each eligible eval-mode BatchNorm is folded into the convolution before
    it (audit/fold.py: same outputs to float32 rounding, faster), in place on the audit's own model, or on a copy
    when the sanity check needs the model as trained (it re-initialises the BatchNorm layers too)."""
    line = "as loaded (--no-fold-bn)"
    cam_model = model
    if cfg.fold_bn:
        from .fold import fold_batchnorm
        if cfg.sanity:
            import copy
            cam_model = copy.deepcopy(model)
            prepare_model(model, device, cfg.channels_last)
        rep = fold_batchnorm(cam_model, torch.zeros(1, spec.channels, spec.size, spec.size), keep=[layer])
        line = (f"{rep.n_folded} of {rep.n_norm} BatchNorm2d layers folded into the convolution before them "
                "(audit/fold.py; outputs equal to float32 rounding)") if rep.n_norm else "no BatchNorm2d layers"
    prepare_model(cam_model, device, cfg.channels_last)
    return cam_model, line


def predict_logits(model: torch.nn.Module, rows: pd.DataFrame, spec: InputSpec, device: torch.device,
                   batch_size: int, workers: int) -> np.ndarray:
    """Logits (N×C float64, NaN rows for unreadable images) of a plain no-grad pass, in eval mode."""
    out = np.full((len(rows), 0), np.nan)
    with eval_mode(model), torch.no_grad():
        for batch in make_loader(rows, spec, batch_size, workers, None):
            if batch.img is None:
                continue
            z = model(normalize(batch.img.to(device), spec)).double().cpu().numpy()
            if out.shape[1] == 0:
                out = np.full((len(rows), z.shape[1]), np.nan)
            out[batch.idx] = z
    return out


def predict_probs(model: torch.nn.Module, rows: pd.DataFrame, spec: InputSpec, device: torch.device,
                  batch_size: int, workers: int) -> np.ndarray:
    """Softmax probabilities (N×C, NaN rows for unreadable images) of a plain no-grad pass, in eval mode."""
    z = torch.from_numpy(predict_logits(model, rows, spec, device, batch_size, workers))
    return torch.softmax(z, 1).float().numpy() if z.shape[1] else z.numpy()
