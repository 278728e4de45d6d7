"""Batched, exact Grad-CAM at (close to) inference cost.

Grad-CAM (Selvaraju et al., ICCV 2017): for the target layer's activations A ∈ R^{K×h×w} and the explained class
logit y_c, weights w_k = (1/hw) Σ_ij ∂y_c/∂A_kij and the raw map is ReLU(Σ_k w_k A_k), kept at layer resolution
(h×w), never min-maxed. Upsampling to the input grid (`upsample`) is a separate step; min-max is for display only.

Layouts (`as_maps`): a CNN layer's N×K×h×w output is used as it is; a channels-last N×h×w×K output (timm Swin,
some ConvNeXt variants) is permuted; a transformer's N×T×D tokens (timm ViT / DeiT / BEiT / EVA, torchvision
ViT) drop their class and register tokens and are laid out on the patch grid (N×D×gh×gw), as
pytorch-grad-cam's `reshape_transform` does for ViTs. Anything else is refused by name, never read as a map.

Cost: one forward per batch. Parameters are frozen for the call and the network input does not need a gradient,
so the target layer's output is the only tensor in the autograd graph's leaves: the backward runs only through
the part of the network after the target layer. Hooks are removed and the model's mode and `requires_grad`
flags restored in `finally`.
"""
from __future__ import annotations

from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .errors import LayerError


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
    raise LayerError(f"layer {path!r}: no such module; candidates: {', '.join(near[:30])}"
                     + (" ..." if len(near) > 30 else ""), param="layer")


def _token_grid(model: torch.nn.Module, n_tokens: int) -> tuple[int, int, int] | None:
    """(prefix tokens, gh, gw) when `n_tokens` tokens are a transformer's class/register tokens followed by its
    patch grid (timm: `num_prefix_tokens`, `patch_embed.grid_size`; torchvision ViT: one class token,
    image_size / patch_size), else None."""
    grid = getattr(getattr(model, "patch_embed", None), "grid_size", None)
    if grid is not None:
        prefix = int(getattr(model, "num_prefix_tokens", 1 if getattr(model, "cls_token", None) is not None else 0))
    elif hasattr(model, "conv_proj") and hasattr(model, "class_token") and hasattr(model, "patch_size"):
        prefix, g = 1, int(model.image_size) // int(model.patch_size)
        grid = (g, g)
    else:
        return None
    gh, gw = int(grid[0]), int(grid[1])
    for k in (prefix, 0):  # CaiT / XCiT add the class token only in their last (class-attention) blocks
        if k + gh * gw == n_tokens:
            return k, gh, gw
    return None


def _last_block_norm(model: torch.nn.Module) -> str | None:
    """The input norm of a vision transformer's last block: timm `blocks.<last>.norm1`, torchvision
    `encoder.layers.<last>.ln_1`; None for other models."""
    mods = dict(model.named_modules())
    for path, norm in (("blocks", "norm1"), ("encoder.layers", "ln_1")):
        seq = mods.get(path)
        if isinstance(seq, (torch.nn.Sequential, torch.nn.ModuleList)) and len(seq):
            name, last = list(seq.named_children())[-1]
            if hasattr(last, norm):
                return f"{path}.{name}.{norm}"
    return None


def _layout(model: torch.nn.Module, shape: Sequence[int], max_side: int | None = None) -> str | None:
    """How an activation of `shape` maps onto the (square) input: "nchw", "nhwc", "tokens", or None (not a map).
    max_side: the largest side a map may have (the default-layer search asks for a downsampled map, ≤ S / 2, so
    that a T×T attention matrix of a small-patch transformer is not taken for one)."""
    if len(shape) == 4:
        ok = (lambda side: 1 < side <= max_side) if max_side else (lambda side: side > 1)
        if shape[2] == shape[3] and ok(shape[2]):
            return "nchw"
        if shape[1] == shape[2] and ok(shape[1]) and shape[3] != shape[2]:
            return "nhwc"
    if len(shape) == 3 and _token_grid(model, int(shape[1])) is not None:
        return "tokens"
    return None


def as_maps(model: torch.nn.Module, t: torch.Tensor, layer: str = "") -> torch.Tensor:
    """The target layer's output as N×K×h×w maps (see the module docstring); LayerError when it is not a map."""
    kind = _layout(model, t.shape)
    if kind == "nchw":
        return t
    if kind == "nhwc":
        return t.permute(0, 3, 1, 2)
    if kind == "tokens":
        prefix, gh, gw = _token_grid(model, int(t.shape[1]))
        return t[:, prefix:].reshape(t.shape[0], gh, gw, t.shape[2]).permute(0, 3, 1, 2)
    raise LayerError(f"layer {layer!r} outputs shape {tuple(t.shape)}, which is not a spatial map (N×K×h×w, "
                     "N×h×w×K, or a transformer's class + patch tokens); choose another layer (--layer)")


def _zeros_input(model: torch.nn.Module, input_shape: Sequence[int]) -> torch.Tensor:
    """A zero input for a dry forward, on the model's device and in its floating dtype (float32 otherwise)."""
    p = next(model.parameters(), None)
    return torch.zeros(*input_shape, device=p.device if p is not None else "cpu",
                       dtype=p.dtype if p is not None and p.is_floating_point() else torch.float32)


def default_layer(model: torch.nn.Module, input_shape: Sequence[int] = (1, 3, 224, 224)) -> str:
    """The layer to explain by default, found with one dry forward on zeros (no gradients).

    CNNs: the last convolutional block, the shallowest-named module producing the last spatial map (N×K×h×w, or
    channels-last N×h×w×K): ResNet → `layer4`; timm EfficientNet → `bn2`; torchvision EfficientNet →
    `features`; timm Swin → `norm`. A spatial map means h = w on the square input: an attention tensor
    (N×heads×tokens×dim) is not one.
    Vision transformers (patch tokens after the last spatial map, which is then only the patch embedding):
    the input norm of the last block (timm `blocks.<last>.norm1`, torchvision `encoder.layers.<last>.ln_1`),
    before its attention, as pytorch-grad-cam recommends; after it, a class-token head gives the patch tokens
    no gradient, and every map would be empty.
    """
    outs: list[tuple[str, torch.Tensor]] = []  # tensors kept alive so that identity comparisons are sound
    tokens_after = False

    def make(name):
        def hook(_m, _i, o):
            nonlocal tokens_after
            if not isinstance(o, torch.Tensor):
                return
            kind = _layout(model, o.shape, max_side=int(input_shape[-1]) // 2)
            if kind in ("nchw", "nhwc"):
                outs.append((name, o))
                tokens_after = False
            elif kind == "tokens" and outs:
                tokens_after = True
        return hook

    x = _zeros_input(model, input_shape)
    traced_forward(model, x, make)
    if tokens_after:
        name = _last_block_norm(model)
        if name is None:
            raise LayerError("a vision transformer whose last block has no input norm (timm blocks[-1].norm1, "
                             "torchvision encoder.layers[-1].ln_1): pass --layer (a module whose output is the "
                             "class + patch tokens, before the last attention)")
        return name
    if not outs:
        raise LayerError("no spatial activation found: the model has no convolutional layer or patch tokens "
                         "to explain")
    last = outs[-1][1]
    names = [n for n, o in outs if o is last]
    return min(names, key=lambda n: (n.count("."), len(n)))


def finer_layer(model: torch.nn.Module, layer: str, input_shape: Sequence[int] = (1, 3, 224, 224)
                ) -> tuple[str, tuple[int, int]] | None:
    """The last module before `layer`, named at most one level deeper than it, whose output is a spatial map with
    at least twice its side: the end of the previous stage (ResNet `layer4` → `layer3`, timm EfficientNet `bn2`
    → `blocks.4`, torchvision EfficientNet `features` → `features.5`), the shallowest name among modules
    returning that same tensor, with its map size; one dry forward on zeros. None when `layer`'s output is not
    a spatial map (tokens) or no such module runs before it."""
    maps: list[tuple[str, torch.Tensor, int]] = []  # (module, output, side) of every spatial map, in order

    def make(name):
        def hook(_m, _i, o):
            kind = _layout(model, o.shape, max_side=int(input_shape[-1]) // 2) if isinstance(o, torch.Tensor) else None
            if kind in ("nchw", "nhwc"):
                maps.append((name, o, int(o.shape[2] if kind == "nchw" else o.shape[1])))
        return hook

    traced_forward(model, _zeros_input(model, input_shape), make)
    at = next((k for k, (n, _, _) in enumerate(maps) if n == layer), None)
    if at is None:
        return None
    depth = layer.count(".") + 1   # stage outputs, not a layer inside a block (EfficientNet's blocks.5.0.bn1)
    before = [(n, o, sd) for n, o, sd in maps[:at] if sd >= 2 * maps[at][2] and n.count(".") <= depth]
    if not before:
        return None
    _, last, sd = before[-1]
    name = min((n for n, o, _ in before if o is last), key=lambda n: (n.count("."), len(n)))
    return name, (sd, sd)


def share_after(model: torch.nn.Module, layer: str, input_shape: Sequence[int] = (1, 3, 224, 224)) -> float:
    """Share of the model's parameters in leaf modules that run after `layer` has produced its output (one dry
    forward on zeros), in [0, 1]. Near 0 for a CNN's last block (only the head follows); near 1 when the layer
    is a stem and the network then works on something that is not a spatial map (a token model that `as_maps`
    does not recognise, e.g. LeViT): Grad-CAM there says little about the decision."""
    mods = dict(model.named_modules())
    leaves = [n for n, m in mods.items() if n and not any(True for _ in m.children())]
    leaf_set = set(leaves)
    order: list[str] = []
    done_at: list[int] = []

    def make(name):
        def hook(_m, _i, _o):  # fires when the module's forward is done (a container's after its children's)
            if name in leaf_set:
                order.append(name)
            if name == layer:
                done_at.append(len(order))
        return hook

    x = _zeros_input(model, input_shape)
    traced_forward(model, x, make, names=sorted(leaf_set | {layer}))
    total = sum(q.numel() for q in model.parameters())
    if not done_at or total == 0:
        return float("nan")
    after = set(order[done_at[-1]:]) - set(order[:done_at[-1]])
    return sum(q.numel() for n in after for q in mods[n].parameters(recurse=False)) / total


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
    """Grad-CAM for a batch x (N×C×S×S, on the model's device) at `layer` (module or dotted path), on the
    layer's maps in any layout `as_maps` reads.

    Returns raw maps N×h×w (float32, ≥ 0, layer resolution) for the class chosen per image by `target`
    ("pred", "true" with `labels`, a class index, or N indices), with the logits of the same forward.
    amp: torch.bfloat16 / torch.float16 runs the forward and the post-layer backward under autocast; the map is
    then formed in float32 from the low-precision activations and gradients.
    """
    module = get_module(model, layer) if isinstance(layer, str) else layer
    store: dict[str, torch.Tensor] = {}

    def hook(_m, _inp, out):
        if not isinstance(out, torch.Tensor):
            raise LayerError(f"layer {layer!r} returns {type(out).__name__}, not a tensor; choose another layer (--layer)")
        leaf = out.detach().requires_grad_(True)
        store["A"] = leaf
        return leaf.clone()  # later in-place ops (e.g. ReLU(inplace=True)) must not touch the leaf

    handle = module.register_forward_hook(hook)
    try:
        auto = torch.autocast(device_type=x.device.type, dtype=amp) if amp is not None else nullcontext()
        with _frozen(model), torch.enable_grad(), auto:
            logits = model(x.detach())
            if "A" not in store:
                raise LayerError(f"layer {layer!r} was not called in the forward pass; choose another layer (--layer)")
            A = store["A"]
            maps = as_maps(model, A.detach(), str(layer))  # refuses a non-map before the backward
            tgt = resolve_targets(logits.detach(), target, labels)
            sel = logits.gather(1, tgt[:, None]).sum()
            (grads,) = torch.autograd.grad(sel, A)
    finally:
        handle.remove()
        store.clear()
    with torch.no_grad():
        a = maps.float()
        w = as_maps(model, grads, str(layer)).float().mean(dim=(2, 3), keepdim=True)
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


def map_concentration(cams) -> tuple[np.ndarray, np.ndarray]:
    """How concentrated raw Grad-CAM maps are, at layer resolution: (peak share (N,), normalised entropy (N,)).

    cams: N×h×w (or h×w) raw maps (negative values clipped to 0). With p = cam / Σ cam over the h·w cells:
      peak share = max p, in [1/(h·w), 1]: 1/(h·w) for a flat map, 1 when one cell holds all the evidence;
      normalised entropy = −Σ p log p / log(h·w) (Shannon 1948), in [0, 1]: 1 flat, 0 one cell.
    Per-image min-max for display (`minmax`) paints a near-flat map as red as a focused one; these two say which
    it is. An all-zero (or non-finite) map has neither: NaN and an UndefinedMetricWarning; a 1×1 map has
    peak share 1 and no entropy (NaN).
    """
    import warnings

    import numpy as np

    from .errors import UndefinedMetricWarning
    c = np.asarray(cams.detach().cpu() if isinstance(cams, torch.Tensor) else cams, dtype=np.float64)
    if c.ndim == 2:
        c = c[None]
    if c.ndim != 3:
        raise ValueError(f"cams: expected an N×h×w (or h×w) array of maps, got shape {c.shape}")
    flat = np.clip(np.where(np.isfinite(c), c, 0.0), 0.0, None).reshape(len(c), -1)
    total = flat.sum(1)
    ok = (total > 0) & np.isfinite(c).reshape(len(c), -1).all(1)
    if (~ok).any():
        warnings.warn(f"map_concentration: {int((~ok).sum())} of {len(c)} maps are all zero or not finite; their "
                      "peak share and entropy are NaN", UndefinedMetricWarning, stacklevel=2)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = flat / np.where(ok, total, 1.0)[:, None]
        peak = np.where(ok, p.max(1, initial=0.0), np.nan)
        m = flat.shape[1]
        ent = -(np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0)).sum(1) / np.log(m) if m > 1 else \
            np.full(len(c), np.nan)
    return peak, np.where(ok, np.maximum(ent, 0.0), np.nan)
