"""Known-answer tests for audit.counterfactual: fills on uniform images, a hand-built corner-brightness model
whose prediction depends only on the top-left 8×8 block, NaN rules, mode restoration, Wilson flip rates."""
import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from audit.counterfactual import (counterfactual_batch, counterfactual_columns, counterfactual_rates,
                                  edited_outputs, fill_region, method_description)
from audit.preprocess import InputSpec
from audit.stats import bootstrap_ci, proportion_ci

S = 32
SPEC = InputSpec(size=S, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))


def _disk_dilate(mask, r):
    from scipy import ndimage as ndi
    y, x = np.mgrid[-r:r + 1, -r:r + 1]
    return ndi.binary_dilation(mask, structure=(x * x + y * y) <= r * r)


def _grey_with_marker(grey=128):
    img = np.full((S, S, 3), grey, np.uint8)
    mask = np.zeros((S, S), bool)
    mask[10:16, 12:18] = True
    img[mask] = 255
    return img, mask


# ---------------------------------------------------------------------------------------------------------------
# (1) fill_region

@pytest.mark.parametrize("method", ["median", "biharmonic"])
def test_fill_uniform_grey_marker(method):
    img, mask = _grey_with_marker()
    before = img.copy()
    out = fill_region(img, mask, method=method, dilate=2)
    assert out.dtype == np.uint8 and out.shape == img.shape
    assert np.array_equal(img, before)                                   # input not modified
    assert np.abs(out[mask].astype(int) - 128).max() <= 1                # marker gone: grey ± 1
    dil = _disk_dilate(mask, 2)
    assert np.array_equal(out[~dil], img[~dil])                           # exact outside the dilated mask
    assert np.abs(out[dil].astype(int) - 128).max() <= 1


def test_fill_antialiased_edge_goes_too():
    img, mask = _grey_with_marker()
    img[9, 12:18] = 200                                                  # a soft edge just outside the mask
    out = fill_region(img, mask, dilate=2)
    assert (out[9, 12:18] == 128).all()
    assert (fill_region(img, mask, dilate=0)[9, 12:18] == 200).all()   # without dilation it stays


def test_fill_median_per_component_uses_its_own_ring():
    img = np.zeros((S, S, 3), np.uint8)
    img[:, :16] = (50, 60, 70)
    img[:, 16:] = (200, 190, 180)
    mask = np.zeros((S, S), bool)
    mask[5:9, 3:7] = True                                                # inside the left half
    mask[20:24, 24:28] = True                                            # inside the right half
    img[mask] = 255
    out = fill_region(img, mask)
    assert (out[5:9, 3:7] == (50, 60, 70)).all()
    assert (out[20:24, 24:28] == (200, 190, 180)).all()


def test_fill_seam_blur_stays_inside_dilated_mask():
    img, mask = _grey_with_marker()
    img[:, 20:] = 100
    out = fill_region(img, mask, seam_blur=1.0)
    dil = _disk_dilate(mask, 2)
    assert np.array_equal(out[~dil], img[~dil])
    assert out[mask].max() < 255


def test_fill_too_large_empty_and_bad_input():
    img = np.full((S, S, 3), 7, np.uint8)
    big = np.zeros((S, S), bool)
    big[:, :20] = True                                                   # 62.5 % of the image
    assert fill_region(img, big) is None
    assert fill_region(img, big, max_area=0.7) is not None
    assert fill_region(img, np.ones((S, S), bool), max_area=1.0) is None  # nothing to fill from
    empty = fill_region(img, np.zeros((S, S), bool))
    assert np.array_equal(empty, img) and empty is not img
    with pytest.raises(ValueError, match="method"):
        fill_region(img, big, method="telea")
    with pytest.raises(ValueError, match="mask"):
        fill_region(img, np.zeros((S - 1, S), bool))


# ---------------------------------------------------------------------------------------------------------------
# (2)–(4) counterfactual_batch with a hand-built model

class CornerNet(nn.Module):
    """logits = [−k·m, k·m], m = mean of the normalised input's top-left 8×8 block (all channels)."""

    def __init__(self, k=20.0):
        super().__init__()
        self.k = nn.Parameter(torch.tensor(k))
        self.drop = nn.Dropout(0.5)                                       # would randomise the output in train mode
        self.calls, self.modes = 0, []

    def forward(self, x):
        self.calls += 1
        self.modes.append(self.training)
        m = self.drop(x[:, :, :8, :8]).mean(dim=(1, 2, 3))
        return torch.stack([-self.k * m, self.k * m], dim=1)


def _corner_batch():
    """img0: white 6×6 marker in the top-left corner on black; img1: the same plus a white bottom-right blob."""
    imgs = np.zeros((2, S, S, 3), np.uint8)
    marker = np.zeros((S, S), bool)
    marker[:6, :6] = True
    blob = np.zeros((S, S), bool)
    blob[24:30, 24:30] = True
    imgs[:, marker] = 255
    imgs[1, blob] = 255
    masks = [{"marker": torch.from_numpy(marker)},
             {"marker": torch.from_numpy(marker), "blob": torch.from_numpy(blob)}]
    return torch.from_numpy(imgs), masks


def _orig(model, imgs):
    from audit.preprocess import normalize
    model.eval()
    with torch.no_grad():
        p = torch.softmax(model(normalize(imgs, SPEC)), 1).numpy()
    return p, torch.from_numpy(p.argmax(1))


def test_removing_the_corner_marker_flips_and_a_blob_elsewhere_does_not():
    model = CornerNet()
    imgs, masks = _corner_batch()
    probs, explained = _orig(model, imgs)
    assert (explained == 1).all() and probs[:, 1].min() > 0.9            # marker present → class 1
    before = imgs.clone()
    cf = counterfactual_batch(model, imgs, masks, ["marker", "blob"], SPEC, explained, probs, "cpu")
    assert torch.equal(imgs, before)
    assert set(cf) == set(counterfactual_columns(["marker", "blob"]))
    assert cf["cf_flip_marker"].tolist() == [1.0, 1.0]
    assert (cf["cf_delta_marker"] < -0.9).all()                           # P(class 1): ~0.99 → ~0
    assert cf["cf_pred_marker"].tolist() == [0, 0]
    assert list(cf["cf_status_marker"]) == ["ok", "ok"]
    assert math.isnan(cf["cf_flip_blob"][0]) and math.isnan(cf["cf_delta_blob"][0])   # no blob mask on img0
    assert cf["cf_pred_blob"][0] == -1 and cf["cf_status_blob"][0] == "absent"
    assert cf["cf_flip_blob"][1] == 0.0 and abs(cf["cf_delta_blob"][1]) < 1e-6 and cf["cf_pred_blob"][1] == 1


def test_delta_is_exact_against_a_manual_edit():
    model = CornerNet()
    imgs, masks = _corner_batch()
    probs, explained = _orig(model, imgs)
    cf = counterfactual_batch(model, imgs, masks, ["marker"], SPEC, explained, probs, "cpu")
    edit = np.stack([fill_region(imgs[i].numpy(), masks[i]["marker"].numpy()) for i in range(2)])
    p_edit, _ = _orig(model, torch.from_numpy(edit))
    np.testing.assert_allclose(cf["cf_delta_marker"], p_edit[:, 1] - probs[:, 1], atol=1e-7)


def test_batching_does_not_change_results_and_one_forward_per_chunk():
    model = CornerNet()
    imgs, masks = _corner_batch()
    probs, explained = _orig(model, imgs)
    model.calls = 0
    a = counterfactual_batch(model, imgs, masks, ["marker", "blob"], SPEC, explained, probs, "cpu", batch_size=64)
    assert model.calls == 1                                               # 3 edited images, one forward
    model.calls = 0
    b = counterfactual_batch(model, imgs, masks, ["marker", "blob"], SPEC, explained, probs, "cpu", batch_size=1)
    assert model.calls == 3
    for k in a:
        if a[k].dtype == object:
            assert list(a[k]) == list(b[k])
        else:
            np.testing.assert_allclose(a[k], b[k], atol=1e-7)


def test_absent_and_too_large_regions_are_nan():
    model = CornerNet()
    imgs = torch.zeros(4, S, S, 3, dtype=torch.uint8)
    big = torch.zeros(S, S, dtype=torch.bool)
    big[:, :24] = True                                                    # 75 % > max_area
    masks = [{}, None, {"ruler": torch.zeros(S, S, dtype=torch.bool)}, {"ruler": big}]
    probs, explained = _orig(model, imgs)
    model.calls = 0
    cf = counterfactual_batch(model, imgs, masks, ["ruler"], SPEC, explained, probs, "cpu")
    assert np.isnan(cf["cf_delta_ruler"]).all() and np.isnan(cf["cf_flip_ruler"]).all()
    assert cf["cf_pred_ruler"].tolist() == [-1] * 4
    assert list(cf["cf_status_ruler"]) == ["absent", "absent", "absent", "too_large"]
    assert model.calls == 0                                               # nothing to run


def test_training_mode_restored_and_eval_used():
    model = CornerNet()
    imgs, masks = _corner_batch()
    probs, explained = _orig(model, imgs)
    model.train()
    model.drop.eval()                                                     # mixed modes are restored per module
    model.modes = []
    cf = counterfactual_batch(model, imgs, masks, ["marker"], SPEC, explained, probs, "cpu")
    assert model.modes == [False]                                         # the forward ran in eval mode
    assert model.training is True and model.drop.training is False
    assert cf["cf_flip_marker"].tolist() == [1.0, 1.0]
    model.eval()
    counterfactual_batch(model, imgs, masks, ["marker"], SPEC, explained, probs, "cpu")
    assert model.training is False


def test_mode_restored_when_the_model_raises():
    class Boom(nn.Module):
        def forward(self, x):
            raise RuntimeError("boom")
    m = Boom().train()
    imgs, masks = _corner_batch()
    with pytest.raises(RuntimeError, match="boom"):
        counterfactual_batch(m, imgs, masks, ["marker"], SPEC, torch.tensor([1, 1]), np.full((2, 2), 0.5), "cpu")
    assert m.training is True


class RegionMeans(nn.Module):
    """Two outputs in float64: z0 = mean of the (normalised) red channel over the top-left 8×8 block, z1 = mean of the
    green channel over the bottom-right 8×8 block: what the fill puts there is read off exactly."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones((), dtype=torch.float64))
        self.drop = nn.Dropout(0.5)
        self.dtypes, self.modes, self.grad = [], [], []

    def forward(self, x):
        self.dtypes.append(x.dtype)
        self.modes.append(self.training)
        self.grad.append(torch.is_grad_enabled())
        x = self.drop(x)
        return self.scale * torch.stack([x[:, 0, :8, :8].mean(dim=(1, 2)), x[:, 1, -8:, -8:].mean(dim=(1, 2))], 1)


def test_edited_outputs_known_answers():
    """Grey (100) images with a white top-left marker (img0, img2) and a white bottom-right blob (img1): the median
    fill of the marker dilated by 2 px writes the ring's grey (100) over the whole top-left 8×8 block, so z0 of the
    edit is exactly 100/255 (mean 0, std 1), and removing one region leaves the other output unchanged."""
    spec = InputSpec(size=S, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    imgs = np.full((4, S, S, 3), 100, np.uint8)
    marker, blob, big = (np.zeros((S, S), bool) for _ in range(3))
    marker[:6, :6] = True
    blob[-6:, -6:] = True
    big[:, :20] = True                                                   # 62 % of the image > max_area 0.5
    imgs[0][marker] = imgs[2][marker] = 255
    imgs[1][blob] = 255
    masks = [{"marker": torch.from_numpy(marker)}, {"blob": blob, "marker": np.zeros((S, S), bool)},
             {"marker": marker, "blob": big}, None]
    model = RegionMeans().train()
    before = imgs.copy()
    ed = edited_outputs(model, torch.from_numpy(imgs), masks, ["marker", "blob"], spec, "cpu", batch_size=2)
    assert np.array_equal(imgs, before)
    assert ed.pairs == [(0, "marker"), (2, "marker"), (1, "blob")]        # region-major: the rows of outputs
    assert ed.n_forward == 2                                              # 3 edits in chunks of 2
    assert list(ed.status["marker"]) == ["ok", "absent", "ok", "absent"]
    assert list(ed.status["blob"]) == ["absent", "ok", "too_large", "absent"]
    assert ed.outputs.dtype == torch.float64 and ed.outputs.shape == (3, 2)
    g = 100 / 255
    np.testing.assert_allclose(ed.outputs.numpy(), [[g, g], [g, g], [g, g]], rtol=0, atol=1e-7)  # float32 normalise
    assert model.dtypes == [torch.float64] * 2                            # the input follows the model's dtype
    assert model.modes == [False, False] and model.grad == [False, False] and model.training  # eval, no_grad, restored
    empty = edited_outputs(model, torch.from_numpy(imgs), [None] * 4, ["marker"], spec, "cpu")
    assert empty.pairs == [] and empty.n_forward == 0 and list(empty.status["marker"]) == ["absent"] * 4
    with pytest.raises(ValueError, match="regions: duplicate"):
        edited_outputs(model, torch.from_numpy(imgs), masks, ["blob", "blob"], spec, "cpu")
    with pytest.raises(ValueError, match="batch_size"):
        edited_outputs(model, torch.from_numpy(imgs), masks, ["blob"], spec, "cpu", batch_size=0)


def test_counterfactual_batch_is_edited_outputs_through_a_softmax():
    model = CornerNet()
    imgs, masks = _corner_batch()
    probs, explained = _orig(model, imgs)
    cf = counterfactual_batch(model, imgs, masks, ["marker", "blob"], SPEC, explained, probs, "cpu", batch_size=2)
    ed = edited_outputs(model, imgs, masks, ["marker", "blob"], SPEC, "cpu", batch_size=2)
    p = torch.softmax(ed.outputs.float(), 1).double().numpy()
    for j, (i, r) in enumerate(ed.pairs):
        assert cf[f"cf_delta_{r}"][i] == p[j, explained[i]] - probs[i, explained[i]]
        assert cf[f"cf_pred_{r}"][i] == p[j].argmax()
    for r in ("marker", "blob"):
        assert list(cf[f"cf_status_{r}"]) == list(ed.status[r])


def test_input_validation():
    model = CornerNet()
    imgs, masks = _corner_batch()
    probs, explained = _orig(model, imgs)
    with pytest.raises(ValueError, match="masks"):
        counterfactual_batch(model, imgs, masks[:1], ["marker"], SPEC, explained, probs, "cpu")
    with pytest.raises(ValueError, match="grid_imgs"):
        counterfactual_batch(model, imgs.float(), masks, ["marker"], SPEC, explained, probs, "cpu")
    with pytest.raises(ValueError, match="explained"):
        counterfactual_batch(model, imgs, masks, ["marker"], SPEC, torch.tensor([0, 5]), probs, "cpu")
    bad = [{"marker": torch.zeros(S, S - 2, dtype=torch.bool)}, {}]
    with pytest.raises(ValueError, match="model grid"):
        counterfactual_batch(model, imgs, bad, ["marker"], SPEC, explained, probs, "cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_runs_on_cuda():
    model = CornerNet().cuda()
    imgs, masks = _corner_batch()
    probs, explained = _orig(model.cpu(), imgs)
    model.cuda()
    cf = counterfactual_batch(model, imgs, masks, ["marker", "blob"], SPEC, explained, probs, torch.device("cuda"))
    assert cf["cf_flip_marker"].tolist() == [1.0, 1.0] and cf["cf_flip_blob"][1] == 0.0


# ---------------------------------------------------------------------------------------------------------------
# (5) counterfactual_rates

def _table():
    flip = [1, 1, 0, 0, 0, 0, 1, 0, 0, 0, np.nan, np.nan]               # 3 flips of 10 tested
    delta = [-0.6, -0.5, -0.1, 0.0, 0.05, -0.02, -0.7, 0.01, -0.03, 0.0, np.nan, np.nan]
    label = ["a"] * 6 + ["b"] * 4 + ["a", "b"]
    status = ["ok"] * 10 + ["absent", "too_large"]
    return pd.DataFrame({"label": label, "cf_flip_ink": flip, "cf_delta_ink": delta, "cf_status_ink": status})


def test_rates_wilson_and_bootstrap_known_values():
    df = _table()
    r = counterfactual_rates(df, ["ink"], min_n=5, n_boot=500, seed=3)
    e = r["regions"]["ink"]
    assert e["n"] == 10 and e["n_flips"] == 3 and e["n_absent"] == 1 and e["n_too_large"] == 1
    w = proportion_ci(3, 10)
    assert e["flip_rate"]["value"] == pytest.approx(0.3)
    assert e["flip_rate"]["lo"] == pytest.approx(w.lo) and e["flip_rate"]["hi"] == pytest.approx(w.hi)
    assert e["flip_rate"]["lo"] == pytest.approx(0.1078, abs=1e-4)      # Wilson 3/10 by hand
    assert e["flip_rate"]["hi"] == pytest.approx(0.6032, abs=1e-4)
    d = df["cf_delta_ink"].dropna().to_numpy()
    lo, hi = bootstrap_ci(d, lambda a: a.mean(axis=1), n_boot=500, seed=3, vectorized=True)
    assert e["mean_delta"]["value"] == pytest.approx(d.mean())
    assert (e["mean_delta"]["lo"], e["mean_delta"]["hi"]) == (pytest.approx(lo), pytest.approx(hi))
    a, b = e["by_class"]["a"], e["by_class"]["b"]
    assert a["n"] == 6 and not a["too_small"] and a["flip_rate"]["value"] == pytest.approx(2 / 6)
    assert b["n"] == 4 and b["too_small"] and b["flip_rate"]["value"] is None and b["mean_delta"]["value"] is None
    assert r["cost"]["n_edited"] == 10 and r["cost"]["seconds"] is None
    assert r["method"] == method_description("median", 2)
    assert r["method"] != method_description("median", 3) and "2 px" in r["method"]   # the fill and its ring width
    json.dumps(r, allow_nan=False)                                       # strict JSON


def test_rates_min_n_and_errors():
    df = _table()
    r = counterfactual_rates(df, ["ink"], class_col=None)                # default min_n = 10: n = 10 is enough
    assert r["regions"]["ink"]["flip_rate"]["value"] == pytest.approx(0.3) and "by_class" not in r["regions"]["ink"]
    r = counterfactual_rates(df, ["ink"], min_n=11, class_col=None)
    assert r["regions"]["ink"]["too_small"] and r["regions"]["ink"]["flip_rate"]["value"] is None
    json.dumps(r, allow_nan=False)
    with pytest.raises(ValueError, match="cf_flip_ruler"):
        counterfactual_rates(df, ["ruler"])
    with pytest.raises(ValueError, match="class_col"):
        counterfactual_rates(df, ["ink"], class_col="site")


def test_batch_to_rates_end_to_end():
    model = CornerNet()
    imgs, masks = _corner_batch()
    probs, explained = _orig(model, imgs)
    cf = counterfactual_batch(model, imgs, masks, ["marker", "blob"], SPEC, explained, probs, "cpu")
    df = pd.DataFrame({"label": ["x", "x"], **cf})
    r = counterfactual_rates(df, ["marker", "blob"], min_n=1, n_boot=50)
    assert r["regions"]["marker"]["flip_rate"]["value"] == 1.0 and r["regions"]["blob"]["n"] == 1
    assert r["regions"]["blob"]["n_absent"] == 1
    json.dumps(r, allow_nan=False)
