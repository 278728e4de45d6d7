"""Grad-CAM engine: hand-computed maps, the reference implementation, batching, and leaving the model as it was."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

from audit.cam import default_layer, get_module, grad_cam, minmax, upsample
from audit.errors import LayerError


class Tiny(nn.Module):
    """features: 1×1 conv (weights set by hand) → ReLU; head: global average pool → linear (hand-set)."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 2, 1, bias=False), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2, 2, bias=False)
        with torch.no_grad():
            self.features[0].weight[:] = torch.tensor([1.0, 2.0]).view(2, 1, 1, 1)
            self.fc.weight[:] = torch.tensor([[1.0, -1.0], [0.5, 3.0]])

    def forward(self, x):
        return self.fc(self.pool(self.features(x)).flatten(1))


def test_hand_computed_cam():
    # x (2×2): A_0 = x, A_1 = 2x (ReLU keeps positives). GAP → dy_c/dA_kij = W[c,k]/4, so w_k = W[c,k]/4.
    x = torch.tensor([[[[1.0, 2.0], [0.0, 4.0]]]])
    m = Tiny()
    # class 0: cam = relu(1/4·x − 1/4·2x) = relu(−x/4) = 0 everywhere
    r0 = grad_cam(m, x, "features", target=0)
    assert torch.equal(r0.cams, torch.zeros(1, 2, 2))
    # class 1: cam = relu(0.5/4·x + 3/4·2x) = 1.625·x
    r1 = grad_cam(m, x, "features", target=1)
    np.testing.assert_allclose(r1.cams[0].numpy(), 1.625 * x[0, 0].numpy(), rtol=1e-6)
    # logits of the same forward: y = W · mean(A) = W · [7/4, 14/4]
    np.testing.assert_allclose(r1.logits.numpy(), [[1.75 - 3.5, 0.875 + 10.5]], rtol=1e-6)
    # default target "pred" explains the argmax (class 1 here)
    assert int(grad_cam(m, x, "features").target[0]) == 1


def test_true_and_per_image_targets():
    m = Tiny()
    x = torch.rand(3, 1, 2, 2)
    r = grad_cam(m, x, "features", target="true", labels=torch.tensor([0, 1, -1]))
    assert r.target.tolist()[:2] == [0, 1]
    assert int(r.target[2]) == int(r.logits[2].argmax())
    r = grad_cam(m, x, "features", target=[1, 0, 1])
    assert r.target.tolist() == [1, 0, 1]


def test_upsample_and_minmax():
    cams = torch.tensor([[[0.0, 1.0], [2.0, 3.0]]])
    up = upsample(cams, 4)
    assert up.shape == (1, 4, 4) and float(up.min()) >= 0
    # bilinear with half-pixel centres: the corner pixel equals the corner cell, the mean is preserved here
    assert float(up[0, 0, 0]) == 0.0 and float(up[0, 3, 3]) == 3.0
    mm = minmax(cams)
    assert float(mm.min()) == 0.0 and abs(float(mm.max()) - 1.0) < 1e-6


def _models():
    import timm
    import torchvision
    torch.manual_seed(0)
    return {"resnet18": torchvision.models.resnet18(num_classes=4),
            "efficientnet_b0": timm.create_model("efficientnet_b0", pretrained=False, num_classes=4)}


@pytest.mark.parametrize("name,layers", [("resnet18", ["layer4", "layer3"]), ("efficientnet_b0", ["bn2", "blocks.5"])])
def test_matches_pytorch_grad_cam(name, layers):
    pgc = pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    model = _models()[name].eval()
    torch.manual_seed(1)
    x = torch.randn(3, 3, 224, 224)
    targets = [0, 2, 3]
    for layer in layers:
        ours = grad_cam(model, x, layer, target=targets)
        # its display pipeline: min-max (eps 1e-7) at layer resolution, resize, min-max again
        ours_img = minmax(upsample(minmax(ours.cams), 224)).numpy()
        with pgc.GradCAM(model=model, target_layers=[get_module(model, layer)]) as ref:
            theirs = ref(input_tensor=x, targets=[ClassifierOutputTarget(t) for t in targets])
        assert ours.cams.shape[-1] == {"layer4": 7, "layer3": 14, "bn2": 7, "blocks.5": 7}[layer]
        assert float(ours.cams.max()) > 0, "degenerate test: all-zero maps"
        np.testing.assert_allclose(ours_img, theirs, atol=1e-4)


def _transformers():
    """Small random-weight transformers of the three layouts: timm ViT (class + patch tokens), torchvision ViT
    (its own token layout), timm Swin (channels-last maps)."""
    import timm
    from torchvision.models.vision_transformer import VisionTransformer
    torch.manual_seed(0)
    tv_vit = VisionTransformer(image_size=64, patch_size=16, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64,
                               num_classes=4)
    torch.nn.init.normal_(tv_vit.heads.head.weight, std=0.2)  # torchvision starts the head at zero: no gradient
    return {
        "timm_vit": (timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=4, img_size=64, depth=2,
                                       embed_dim=48, num_heads=2), 64, "blocks.1.norm1",
                     lambda t: t[:, 1:].reshape(t.shape[0], 4, 4, t.shape[2]).transpose(2, 3).transpose(1, 2)),
        "tv_vit": (tv_vit, 64, "encoder.layers.encoder_layer_1.ln_1",
                   lambda t: t[:, 1:].reshape(t.shape[0], 4, 4, t.shape[2]).transpose(2, 3).transpose(1, 2)),
        "timm_swin": (timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, num_classes=4, img_size=112,
                                        embed_dim=24, depths=(1, 1, 1, 1), num_heads=(1, 1, 2, 2)), 112, "norm",
                      lambda t: t.permute(0, 3, 1, 2)),
        # four register tokens after the class token (num_prefix_tokens = 5)
        "timm_vit_registers": (timm.create_model("vit_small_patch14_reg4_dinov2", pretrained=False, num_classes=4,
                                                 img_size=56, depth=2, embed_dim=48, num_heads=2), 56, "blocks.1.norm1",
                               lambda t: t[:, 5:].reshape(t.shape[0], 4, 4, t.shape[2]).transpose(2, 3).transpose(1, 2)),
        # EVA-02: its blocks are a ModuleList, not a Sequential
        "timm_eva": (timm.create_model("eva02_tiny_patch14_224", pretrained=False, num_classes=4, img_size=56, depth=2),
                     56, "blocks.1.norm1",
                     lambda t: t[:, 1:].reshape(t.shape[0], 4, 4, t.shape[2]).transpose(2, 3).transpose(1, 2)),
        # CaiT: patch tokens only (the class token joins in its class-attention blocks)
        "timm_cait": (timm.create_model("cait_xxs24_224", pretrained=False, num_classes=4, img_size=64, depth=2,
                                        embed_dim=48, num_heads=2), 64, "blocks.1.norm1",
                      lambda t: t.reshape(t.shape[0], 4, 4, t.shape[2]).transpose(2, 3).transpose(1, 2)),
    }


@pytest.mark.parametrize("name", ["timm_vit", "tv_vit", "timm_swin", "timm_vit_registers", "timm_eva", "timm_cait"])
def test_transformers_default_layer_and_maps_match_pytorch_grad_cam(name):
    """Token and channels-last layers are laid out on the patch grid as pytorch-grad-cam's reshape_transform
    does; the default layer is the last block's input norm (ViT) or the last channels-last map (Swin). Before,
    the default search took a ViT's attention tensor (heads × tokens × dim) for a map."""
    pgc = pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    model, size, layer, reshape = _transformers()[name]
    model.eval()
    assert default_layer(model, (1, 3, size, size)) == layer
    torch.manual_seed(1)
    x = torch.randn(3, 3, size, size)
    targets = [0, 2, 3]
    ours = grad_cam(model, x, layer, target=targets)
    assert ours.cams.shape == (3, 4, 4)  # the patch grid (ViTs: 64 / 16) or Swin's last stage (112 / 32, padded)
    assert float(ours.cams.max()) > 0, "degenerate test: all-zero maps"
    ours_img = minmax(upsample(minmax(ours.cams), size)).numpy()
    with pgc.GradCAM(model=model, target_layers=[get_module(model, layer)], reshape_transform=reshape) as ref:
        theirs = ref(input_tensor=x, targets=[ClassifierOutputTarget(t) for t in targets])
    np.testing.assert_allclose(ours_img, theirs, atol=1e-4)


def test_a_layer_that_is_no_map_is_refused_by_name():
    model = _transformers()["timm_vit"][0].eval()
    with pytest.raises(LayerError, match=r"'blocks\.1\.attn\.k_norm' outputs shape \(1, 2, 17, 24\), which is "
                                         r"not a spatial map.*choose another layer \(--layer\)"):
        grad_cam(model, torch.randn(1, 3, 64, 64), "blocks.1.attn.k_norm")
    assert all(len(m._forward_hooks) == 0 for m in model.modules())


@pytest.mark.parametrize("n_out,k,seed", [(1, 0, 1), (4, 2, 5)], ids=["one-output", "multi-label-output-2"])
def test_sigmoid_output_audited_as_binary_matches_pytorch_grad_cam(n_out, k, seed):
    """A sigmoid output read through audit.run.BinaryLogit: Grad-CAM of the second class explains +z, of the
    first −z (pytorch-grad-cam's BinaryClassifierOutputTarget, or ±output k of a multi-label model), at half
    scale: equal once normalised."""
    import torchvision
    pgc = pytest.importorskip("pytorch_grad_cam")

    from audit.run import BinaryLogit
    torch.manual_seed(seed)  # seeds where both signs give non-empty maps at layer3 (a linear head often empties −z)
    raw = torchvision.models.resnet18(num_classes=n_out).eval()
    x = torch.randn(4, 3, 96, 96)
    wrapped = torchvision.models.resnet18(num_classes=n_out).eval()
    wrapped.load_state_dict(raw.state_dict())
    wrapped.register_forward_hook(BinaryLogit(k))
    targets = [1, 0, 1, 0]
    ours = grad_cam(wrapped, x, "layer3", target=targets)
    assert ours.logits.shape == (4, 2) and float(ours.cams.amax(dim=(1, 2)).min()) > 1e-4
    with pgc.GradCAM(model=raw, target_layers=[raw.layer3]) as ref:
        theirs = ref(input_tensor=x, targets=[(lambda o, s=(1 if t else -1): s * o[k]) for t in targets])
    np.testing.assert_allclose(minmax(upsample(minmax(ours.cams), 96)).numpy(), theirs, atol=1e-4)


def test_batched_equals_one_by_one():
    model = _models()["resnet18"].eval()
    torch.manual_seed(2)
    x = torch.randn(4, 3, 96, 96)
    batched = grad_cam(model, x, "layer3")
    for i in range(4):
        single = grad_cam(model, x[i:i + 1], "layer3")
        torch.testing.assert_close(single.cams[0], batched.cams[i], rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(single.logits[0], batched.logits[i], rtol=1e-4, atol=1e-5)


def test_model_left_as_it_was():
    model = _models()["resnet18"]
    model.train()
    model.fc.weight.requires_grad_(False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [p.requires_grad for p in model.parameters()]
    grad_cam(model, torch.randn(2, 3, 64, 64), "layer4")
    assert model.training and all(m.training for m in model.modules())
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(p.grad is None for p in model.parameters()), "parameter gradients were computed"
    assert all(len(m._forward_hooks) == 0 and len(m._backward_hooks) == 0 for m in model.modules())
    # eval-mode forward: BatchNorm running stats untouched
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_hooks_removed_on_error():
    model = _models()["resnet18"].eval()
    with pytest.raises(RuntimeError):
        grad_cam(model, torch.randn(2, 5, 64, 64), "layer4")  # wrong channel count
    assert all(len(m._forward_hooks) == 0 for m in model.modules())
    assert all(p.requires_grad for p in model.parameters())


def test_only_post_layer_graph():
    """The backward must not reach the layers before the target layer: their outputs carry no graph."""
    model = _models()["resnet18"].eval()
    seen = {}
    h = model.layer2.register_forward_hook(lambda m, i, o: seen.__setitem__("l2", o.requires_grad))
    try:
        grad_cam(model, torch.randn(1, 3, 64, 64), "layer3")
    finally:
        h.remove()
    assert seen["l2"] is False


def test_default_and_unknown_layers():
    ms = _models()
    ms["resnet18"].eval()
    ms["resnet18"].layer2.train()  # mixed modes (e.g. a partly frozen model) survive the dry forward
    assert default_layer(ms["resnet18"]) == "layer4"
    assert ms["resnet18"].layer2.training and not ms["resnet18"].training and not ms["resnet18"].layer3.training
    assert default_layer(ms["efficientnet_b0"]) == "bn2"
    with pytest.raises(LayerError, match="layer9.*candidates"):
        get_module(ms["resnet18"], "layer9")


def test_amp_bf16_maps_match_fp32():
    """--amp bf16: the map is formed in fp32 from bf16 activations and gradients; after display min-max it
    matches the fp32 map within 0.1 (bf16 keeps 8 bits of mantissa), and the explained classes agree."""
    model = _models()["resnet18"].eval()
    torch.manual_seed(3)
    x = torch.randn(2, 3, 96, 96)
    ref = grad_cam(model, x, "layer4", target=[0, 1])
    low = grad_cam(model, x, "layer4", target=[0, 1], amp=torch.bfloat16)
    assert low.cams.dtype == torch.float32 and torch.equal(low.target, ref.target)
    diff = (minmax(upsample(low.cams, 96)) - minmax(upsample(ref.cams, 96))).abs().max()
    assert float(diff) < 0.1


class _StemThenTokens(nn.Module):
    """A LeViT-like toy: a stride-16 conv stem (the last 4-D map), then an MLP over the flattened tokens that
    holds most of the parameters; the auditor does not recognise these tokens as a map."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 16, stride=16)
        self.mixer = nn.Sequential(nn.Linear(16, 1024), nn.GELU(), nn.Linear(1024, 16))
        self.head = nn.Linear(16, 2)

    def forward(self, x):
        t = self.stem(x).flatten(2).transpose(1, 2)           # N × 196 × 16 at 224 px
        return self.head(self.mixer(t).mean(1))


def test_an_early_default_layer_is_called_out():
    """The default layer of a stem-then-tokens model is the stem: most parameters run after it and the audit
    says so; a ResNet's last block has only the head after it and gets no note."""
    import torchvision

    from audit.cam import share_after
    from audit.pipeline import early_layer_note
    from audit.preprocess import InputSpec
    m = _StemThenTokens()
    assert default_layer(m) == "stem"
    mlp, total = sum(p.numel() for p in m.mixer.parameters()) + 34, sum(p.numel() for p in m.parameters())
    assert share_after(m, "stem") == pytest.approx(mlp / total)          # mixer + head (16·2 + 2 = 34)
    note = early_layer_note(m, "stem", (14, 14), InputSpec(size=224))
    assert f"{100 * share_after(m, 'stem'):.0f}%" == "73%"                       # the share the note states
    assert all(d in note for d in ("stem", "14×14", "224 px", "73%")), note       # layer, grid, input, share
    r18 = torchvision.models.resnet18(num_classes=2)
    assert share_after(r18, "layer4") == pytest.approx(1026 / sum(p.numel() for p in r18.parameters()))
    assert early_layer_note(r18, "layer4", (7, 7), InputSpec(size=224)) is None


def test_finer_layer_is_the_end_of_the_previous_stage():
    import timm
    import torchvision

    from audit.cam import finer_layer
    ms = _models()
    assert finer_layer(ms["resnet18"], "layer4") == ("layer3", (14, 14))
    assert finer_layer(ms["resnet18"], "layer3") == ("layer2", (28, 28))
    assert finer_layer(ms["efficientnet_b0"], "bn2") == ("blocks.4", (14, 14))      # not blocks.5.0.bn1 inside a block
    assert finer_layer(ms["efficientnet_b0"], "bn2", (1, 3, 96, 96)) == ("blocks.4", (6, 6))
    assert finer_layer(torchvision.models.efficientnet_b0(), "features") == ("features.5", (14, 14))
    assert finer_layer(ms["resnet18"], "conv1") is None                            # nothing before it
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False)
    assert finer_layer(vit, default_layer(vit)) is None                             # tokens, not a map
