"""Batched, exact Grad-CAM at (close to) inference cost.

Grad-CAM (Selvaraju et al., ICCV 2017): for the target layer's activations A ∈ R^{K×h×w} and the explained class
logit y_c, weights w_k = (1/hw) Σ_ij ∂y_c/∂A_kij and the raw map is ReLU(Σ_k w_k A_k), kept at layer resolution
(h×w), never min-maxed. Upsampling to the input grid (`upsample`) is a separate step; min-max is for display only.

Cost: one forward per batch. Parameters are frozen for the call and the network input does not need a gradient,
so the target layer's output is the only tensor in the autograd graph's leaves: the backward runs only through
the part of the network after the target layer. Hooks are removed and the model's mode and `requires_grad`
flags restored in `finally`.
"""
from __future__ import annotations

from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F

from .errors import LayerError

KNOWN_LAST_LAYERS = ("layer4", "bn2", "conv_head", "features", "stages", "blocks")


@dataclass
class CamBatch:
    """Result for one batch. logits: N×C float32; cams: N×h×w float32 raw (ReLU'd, not normalised);
    target: N int64 (the class explained); features: N×K pooled target-layer activations (an embedding)."""

    logits: torch.Tensor
    cams: torch.Tensor
    target: torch.Tensor
    features: torch.Tensor


def get_module(model: torch.nn.Module, path: str) -> torch.nn.Module:
    """The submodule at a dotted path (`layer3`, `layer2.1`, `blocks.5`); LayerError listing candidates."""
    mods = dict(model.named_modules())
    if path in mods and path != "":
        return mods[path]
    cands = [n for n in mods if n and n.count(".") <= 1]
    near = [n for n in cands if n.split(".")[0] == path.split(".")[0]] or cands
    raise LayerError(f"--layer {path!r}: no such module; candidates: {', '.join(near[:30])}"
                     + (" ..." if len(near) > 30 else ""))


def default_layer(model: torch.nn.Module, input_shape: Sequence[int] = (1, 3, 224, 224)) -> str:
    """The last convolutional block: the shallowest-named module producing the last 4-D activation of a forward.

    ResNet → `layer4`; timm EfficientNet → `bn2` (conv_head + BN + activation); torchvision EfficientNet →
    `features`. Found with one dry forward on zeros (no gradients), so any CNN of torchvision or timm works.
    """
    outs: list[tuple[str, torch.Tensor]] = []  # tensors kept alive so that identity comparisons are sound

    def make(name):
        def hook(_m, _i, o):
            if isinstance(o, torch.Tensor) and o.ndim == 4 and o.shape[-1] > 1 and o.shape[-2] > 1:
                outs.append((name, o))
        return hook

    p = next(model.parameters(), None)
    x = torch.zeros(*input_shape, device=p.device if p is not None else "cpu",
                    dtype=p.dtype if p is not None and p.is_floating_point() else torch.float32)
    traced_forward(model, x, make)
    if not outs:
        raise LayerError("no 4-D activation found: the model has no convolutional layer to explain")
    last = outs[-1][1]
    names = [n for n, o in outs if o is last]
    return min(names, key=lambda n: (n.count("."), len(n)))


@contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[None]:
    """eval mode for the duration; every submodule's own train/eval flag restored after (mixed modes included)."""
    modes = {m: m.training for m in model.modules()}
    try:
        model.eval()
        yield
    finally:
        for m, t in modes.items():
            m.training = t


@contextmanager
def _frozen(model: torch.nn.Module) -> Iterator[None]:
    """eval mode and no parameter gradients for the duration; everything restored after."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        with eval_mode(model):
            for p, _ in flags:
                p.requires_grad_(False)
            yield
    finally:
        for p, f in flags:
            p.requires_grad_(f)


def traced_forward(model: torch.nn.Module, x: torch.Tensor, make_hook: Callable[[str], Callable],
                   pre: bool = False, names: Sequence[str] | None = None) -> None:
    """One no-grad eval-mode forward of x with `make_hook(name)` registered on each named submodule (all, or
    `names`) as a forward hook (or pre-hook); hooks removed and the model's modes restored after."""
    mods = dict(model.named_modules())
    hooks = []
    try:
        for n in (names if names is not None else [k for k in mods if k]):
            m = mods[n]
            hooks.append(m.register_forward_pre_hook(make_hook(n)) if pre else m.register_forward_hook(make_hook(n)))
        with eval_mode(model), torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()


def resolve_targets(logits: torch.Tensor, rule: str | int | Sequence[int] | torch.Tensor,
                    labels: torch.Tensor | None = None) -> torch.Tensor:
    """Class to explain per image: rule "pred" (argmax), "true" (labels; −1 entries fall back to pred),
    an int class index, or a per-image sequence/tensor of indices."""
    n = logits.shape[0]
    pred = logits.argmax(1)
    if isinstance(rule, str):
        if rule == "pred":
            return pred
        if rule == "true":
            if labels is None:
                raise ValueError("target rule 'true' needs labels")
            lab = labels.to(pred.device).long()
            return torch.where(lab >= 0, lab, pred)
        raise ValueError(f"target rule: expected 'pred', 'true' or a class index, got {rule!r}")
    if isinstance(rule, int):
        return torch.full((n,), rule, dtype=torch.long, device=logits.device)
    t = torch.as_tensor(rule, dtype=torch.long, device=logits.device)
    if t.shape != (n,):
        raise ValueError(f"per-image targets: expected shape ({n},), got {tuple(t.shape)}")
    return t


def grad_cam(model: torch.nn.Module, x: torch.Tensor, layer: str | torch.nn.Module,
             target: str | int | Sequence[int] | torch.Tensor = "pred",
             labels: torch.Tensor | None = None, amp: torch.dtype | None = None) -> CamBatch:
    """Grad-CAM for a batch x (N×C×S×S, on the model's device) at `layer` (module or dotted path).

    Returns raw maps N×h×w (float32, ≥ 0, layer resolution) for the class chosen per image by `target`
    ("pred", "true" with `labels`, a class index, or N indices), with the logits of the same forward.
    amp: torch.bfloat16 / torch.float16 runs the forward and the post-layer backward under autocast; the map is
    then formed in float32 from the low-precision activations and gradients.
    """
    module = get_module(model, layer) if isinstance(layer, str) else layer
    store: dict[str, torch.Tensor] = {}

    def hook(_m, _inp, out):
        if not isinstance(out, torch.Tensor):
            raise LayerError(f"layer {layer!r} returns {type(out).__name__}, not a tensor; choose another --layer")
        leaf = out.detach().requires_grad_(True)
        store["A"] = leaf
        return leaf.clone()  # later in-place ops (e.g. ReLU(inplace=True)) must not touch the leaf

    handle = module.register_forward_hook(hook)
    try:
        auto = torch.autocast(device_type=x.device.type, dtype=amp) if amp is not None else nullcontext()
        with _frozen(model), torch.enable_grad(), auto:
            logits = model(x.detach())
            if "A" not in store:
                raise LayerError(f"layer {layer!r} was not called in the forward pass; choose another --layer")
            A = store["A"]
            if A.ndim != 4:
                raise LayerError(f"layer {layer!r} outputs shape {tuple(A.shape)}; Grad-CAM needs N×K×h×w")
            tgt = resolve_targets(logits.detach(), target, labels)
            sel = logits.gather(1, tgt[:, None]).sum()
            (grads,) = torch.autograd.grad(sel, A)
    finally:
        handle.remove()
        store.clear()
    with torch.no_grad():
        a = A.detach().float()
        w = grads.float().mean(dim=(2, 3), keepdim=True)
        cams = F.relu((w * a).sum(1)).float()
        feats = a.mean(dim=(2, 3)).float()
    return CamBatch(logits=logits.detach().float(), cams=cams, target=tgt, features=feats)


def upsample(cams: torch.Tensor, size: int | tuple[int, int], mode: str = "bilinear") -> torch.Tensor:
    """N×h×w raw maps → N×S×S on the input grid (bilinear, align_corners=False = cv2.INTER_LINEAR); stays ≥ 0."""
    s = (size, size) if isinstance(size, int) else tuple(size)
    if mode == "nearest":
        return F.interpolate(cams[:, None], size=s, mode="nearest")[:, 0]
    return F.relu(F.interpolate(cams[:, None], size=s, mode="bilinear", align_corners=False)[:, 0])


def minmax(cams: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Per-map min-max to [0, 1], for display only (as pytorch-grad-cam's scale_cam_image)."""
    flat = cams.flatten(1)
    lo = flat.min(1).values.view(-1, *([1] * (cams.ndim - 1)))
    c = cams - lo
    hi = c.flatten(1).max(1).values.view(-1, *([1] * (cams.ndim - 1)))
    return c / (hi + eps)
