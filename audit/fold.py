"""Batch-norm folding: an inference-time rewrite of the audit's own model copy that leaves every output unchanged.

In eval mode a BatchNorm2d that reads a convolution's output is an affine map per channel,
y = γ (conv(x) − μ) / √(σ² + ε) + β, so it can be folded into the convolution (Ioffe & Szegedy 2015; the standard
inference rewrite of e.g. `torch.fx.experimental.optimization.fuse`): W' = W · s, b' = (b − μ) · s + β with
s = γ / √(σ² + ε) per output channel. The model then skips one memory-bound pass over each of those activations in
the forward and in the post-layer backward of Grad-CAM; the outputs agree to float32 rounding (~1e-6 relative).

Which pairs fold is read from the autograd graph of one forward, not from module names, so it works for any
torchvision or timm model: a BatchNorm folds into the convolution whose output tensor it reads *only* if no other
operation reads that tensor. Never folded: a convolution named in `keep` (its own output must stay the raw
convolution, e.g. a Grad-CAM target layer), a module called more than once per forward (shared weights), a norm
layer without running statistics (it normalises with batch statistics in eval mode too), and norm subclasses other
than timm's BatchNormAct2d (norm → dropout → activation: folded into the convolution, its dropout and activation
kept as a module of the same name).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch
from torch import nn

__all__ = ["FoldReport", "fold_batchnorm"]


@dataclass
class FoldReport:
    """n_folded of n_norm BatchNorm2d layers folded; `skipped` maps a norm layer's name to why it was not."""
    n_norm: int
    folded: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)

    @property
    def n_folded(self) -> int:
        return len(self.folded)

    def to_dict(self) -> dict:
        return {"n_folded": self.n_folded, "n_norm": self.n_norm, "skipped": dict(self.skipped)}


class ActAfterFold(nn.Module):
    """What is left of timm's BatchNormAct2d once its normalisation is folded away: drop → act (same names)."""

    def __init__(self, drop: nn.Module, act: nn.Module):
        super().__init__()
        self.drop, self.act = drop, act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.drop(x))


def _replacement(bn: nn.BatchNorm2d) -> nn.Module | None:
    if type(bn) is nn.BatchNorm2d:
        return nn.Identity()
    if type(bn).__name__ == "BatchNormAct2d" and hasattr(bn, "act") and hasattr(bn, "drop"):
        return ActAfterFold(bn.drop, bn.act)
    return None


def _consumers(root: torch.Tensor) -> dict[object, int]:
    """How many autograd nodes read each node's output, over the graph that produced `root`."""
    count: dict[object, int] = {}
    seen, stack = set(), [root.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        for nxt, _ in node.next_functions:
            if nxt is not None:
                count[nxt] = count.get(nxt, 0) + 1
                stack.append(nxt)
    return count


@torch.no_grad()
def _fold_into(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    s = (bn.weight if bn.affine else torch.ones_like(bn.running_var)) / torch.sqrt(bn.running_var + bn.eps)
    beta = bn.bias if bn.affine else torch.zeros_like(bn.running_mean)
    b = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    fmt = torch.channels_last if conv.weight.is_contiguous(memory_format=torch.channels_last) and \
        not conv.weight.is_contiguous() else torch.contiguous_format
    w = (conv.weight.double() * s.double().view(-1, 1, 1, 1)).to(conv.weight.dtype)
    conv.weight = nn.Parameter(w.contiguous(memory_format=fmt), requires_grad=conv.weight.requires_grad)
    conv.bias = nn.Parameter(((b.double() - bn.running_mean.double()) * s.double() + beta.double()).to(w.dtype),
                             requires_grad=conv.weight.requires_grad)


def fold_batchnorm(model: nn.Module, example: torch.Tensor, keep: Sequence[str] = ()) -> FoldReport:
    """Fold every eligible BatchNorm2d of `model` (in eval mode) into the Conv2d before it, **in place**.

    example: a 1×C×S×S input (on the model's device) for the one traced forward. Call it on a copy you own (the
    audit folds a deep copy of the model it loaded; a caller's model is never touched). The model is left in eval
    mode; folding a model that will be trained again would be wrong, and is the caller's to avoid.
    """
    model.eval()
    mods = dict(model.named_modules())
    convs = {n: m for n, m in mods.items() if type(m) is nn.Conv2d}
    norms = {n: m for n, m in mods.items() if isinstance(m, nn.BatchNorm2d)}
    report = FoldReport(len(norms))
    if not norms:
        return report
    calls: dict[str, int] = {}
    conv_out: dict[str, object] = {}   # conv name → grad_fn of its output
    norm_in: dict[str, object] = {}    # norm name → grad_fn of its input
    hooks = []

    def on_conv(name):
        def hook(_m, _i, out):
            calls[name] = calls.get(name, 0) + 1
            conv_out[name] = out.grad_fn
        return hook

    def on_norm(name):
        def hook(_m, inp):
            calls[name] = calls.get(name, 0) + 1
            norm_in[name] = inp[0].grad_fn if isinstance(inp[0], torch.Tensor) else None
        return hook

    x = example[:1].detach().clone().requires_grad_(True)
    try:
        for n, m in convs.items():
            hooks.append(m.register_forward_hook(on_conv(n)))
        for n, m in norms.items():
            hooks.append(m.register_forward_pre_hook(on_norm(n)))
        with torch.enable_grad():
            out = model(x)
        if not isinstance(out, torch.Tensor) or out.grad_fn is None:
            report.skipped = {n: "the model's output is not one tensor that depends on the input" for n in norms}
            return report
        consumers = _consumers(out.sum())
    finally:
        for h in hooks:
            h.remove()
    by_node = {node: n for n, node in conv_out.items() if node is not None}
    keep = set(keep)
    plan = []
    for name, bn in norms.items():
        conv_name = by_node.get(norm_in.get(name))
        why = None
        if name not in calls:
            why = "not called in the forward"
        elif conv_name is None:
            why = "input is not a convolution's output"
        elif calls[name] > 1 or calls.get(conv_name, 0) > 1:
            why = "called more than once per forward"
        elif consumers.get(conv_out[conv_name], 0) != 1:
            why = f"{conv_name}'s output is also read elsewhere"
        elif conv_name in keep:
            why = f"{conv_name} is kept as it is (target layer)"
        elif not bn.track_running_stats or bn.running_mean is None or bn.running_var is None:
            why = "no running statistics"
        elif _replacement(bn) is None:
            why = f"unknown norm subclass {type(bn).__name__}"
        elif convs[conv_name].out_channels != bn.num_features:
            why = "channel count differs"
        if why:
            report.skipped[name] = why
        else:
            plan.append((name, conv_name))
    for name, conv_name in plan:
        bn = norms[name]
        _fold_into(convs[conv_name], bn)
        parent, _, attr = name.rpartition(".")
        rep = _replacement(bn)
        setattr(mods[parent] if parent else model, attr, rep)
        report.folded.append(name)
    return report
