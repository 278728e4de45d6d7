"""Known-answer tests of audit.discover on hand-built audits (per_image.csv + cams.npz written directly)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from audit.discover import discover, eigengap_k, map_shape_stats, unit_mass, flag_of, suspicion
from audit.errors import RunDirError

CLASSES = ["clear", "opacity"]
HW = 7


def _blob(rng, cy, cx, sigma=0.8, jitter=0.4):
    yy, xx = np.mgrid[0:HW, 0:HW]
    cy, cx = cy + rng.normal(0, jitter), cx + rng.normal(0, jitter)
    m = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma ** 2))
    return m + rng.uniform(0, 0.05, m.shape)


def write_audit(folder: Path, n: int = 120, n_patch: int = 30, seed: int = 0, emb: np.ndarray | None = None,
                correct: np.ndarray | None = None, labels: np.ndarray | None = None) -> dict:
    """A fake audit: the first n_patch images carry a corner patch that drives the prediction to 'opacity'
    (their maps peak in the top-left corner); the others are predicted from the image (maps at the centre)."""
    rng = np.random.default_rng(seed)
    patched = np.arange(n) < n_patch
    lab = labels if labels is not None else rng.integers(0, 2, n)
    if correct is None:
        pred = np.where(patched, 1, np.where(rng.random(n) < 0.85, lab, 1 - lab))
    else:
        pred = np.where(correct, lab, 1 - lab)
    conf = rng.uniform(0.6, 0.99, n)
    cams = np.stack([_blob(rng, 0.3, 0.3) if p else _blob(rng, 3, 3, sigma=1.2, jitter=0.6) for p in patched])
    cams *= rng.uniform(0.5, 5, (n, 1, 1))  # strength differs; unit mass removes it
    cams[n - 1] = 0.0  # one all-zero map: excluded and counted
    df = pd.DataFrame({
        "image_id": [f"im{i:03d}" for i in range(n)], "image": [f"images/im{i:03d}.png" for i in range(n)],
        "label": [CLASSES[v] for v in lab], "split": "test", "pred": [CLASSES[v] for v in pred],
        "confidence": conf, "correct": lab == pred,
        "p_clear": np.where(pred == 0, conf, 1 - conf), "p_opacity": np.where(pred == 1, conf, 1 - conf),
        "present_marker": patched.astype(int), "site": rng.choice(["A", "B"], n), "sex": rng.integers(0, 2, n)})
    folder.mkdir(parents=True, exist_ok=True)
    # shuffle the table against the npz order: discover must align by image_id
    df.sample(frac=1, random_state=seed).to_csv(folder / "per_image.csv", index=False)
    e = emb if emb is not None else rng.normal(size=(n, 8))
    np.savez_compressed(folder / "cams.npz", image_id=df["image_id"].to_numpy(str), cam=cams.astype(np.float32),
                        layer=np.array("layer4"), embedding=e.astype(np.float32), target=pred.astype(np.int64))
    return {"patched": dict(zip(df["image_id"], patched)), "df": df}


def test_patch_subset_forms_its_own_cluster_and_tops_the_ranking(tmp_path):
    truth = write_audit(tmp_path)
    res = discover(tmp_path, seed=0, regions={})
    s = res.summary
    assert s["n"] == 120 and s["n_zero_cam"] == 1
    a = res.assignments.set_index("image_id")
    assert a.loc["im119", "cluster"] == -1
    a["patched"] = [truth["patched"][i] for i in a.index]
    cl = a[a["cluster"] >= 0]
    best = cl.groupby("cluster")["patched"].sum().idxmax()
    members = cl[cl["cluster"] == best]
    assert members["patched"].mean() >= 0.8                              # purity
    assert members["patched"].sum() / a["patched"].sum() >= 0.8          # recall
    top = next(r for r in s["ranking"] if r["kind"] == "cluster")  # clusters are ranked among themselves
    assert (top["id"], top["rank"]) == (best, 1)
    assert top["reason"] == "location"
    g = next(g for g in s["clusters"]["groups"] if g["id"] == best)
    assert g["pred_class"] == "opacity" and g["rank"] == 1
    assert g["map"]["peak"] == [0, 0]
    marker = [x for x in g["over_represented"] if x["attribute"] == "present_marker"]
    assert marker and marker[0]["share_in"] >= 0.8 and marker[0]["q"] < 0.05
    assert "carry marker" in g["text"]
    assert set(g["prototypes"]) <= set(members.index)
    # files
    assert (tmp_path / "discover.csv").exists() and (tmp_path / g["map"]["png"]).exists()
    assert list(pd.read_csv(tmp_path / "discover.csv").columns) == ["image_id", "cluster", "slice"]
    json.dumps(s)  # JSON-able


def test_reproducible_with_a_seed(tmp_path):
    write_audit(tmp_path)
    r1 = discover(tmp_path, seed=3, write=False)
    r2 = discover(tmp_path, seed=3, write=False)
    pd.testing.assert_frame_equal(r1.assignments, r2.assignments)
    assert json.dumps(r1.summary) == json.dumps(r2.summary)


@pytest.mark.parametrize("seed", [1, 2])
def test_error_prone_embedding_group_becomes_the_top_slice(tmp_path, seed):
    rng = np.random.default_rng(seed)
    n, n_bad = 200, 40
    bad = np.arange(n) >= n - n_bad                      # same CAMs as everyone else; only the embedding differs
    emb = rng.normal(size=(n, 24))
    emb[bad, :6] += 4.0
    correct = np.where(bad, rng.random(n) < 0.25, rng.random(n) < 0.92)
    write_audit(tmp_path, n=n, n_patch=0, emb=emb, correct=correct, seed=seed)
    res = discover(tmp_path, seed=0, regions={})
    s = res.summary
    assert s["slices"]["gamma"] == 0.5 and s["slices"]["pca_components"] == 16
    top = next(g for g in s["slices"]["groups"] if g["rank"] == 1)
    ids = res.assignments.loc[res.assignments["slice"] == top["id"], "image_id"]
    share_bad = np.mean([int(i[2:]) >= n - n_bad for i in ids])
    assert share_bad >= 0.8
    assert top["reason"] == "gap" and top["gap"]["hi"] < 0
    assert top["accuracy"]["value"] < 0.5


def test_small_groups_are_not_ranked(tmp_path):
    write_audit(tmp_path, n=60, n_patch=6)
    res = discover(tmp_path, min_n=10, k=3, write=False)
    for g in res.summary["clusters"]["groups"] + res.summary["slices"]["groups"]:
        if g["n"] < 10:
            assert g["too_small"] and g["rank"] is None and g["suspicion"] is None
    assert all(r["n"] >= 10 for r in res.summary["ranking"])


def test_helpers_known_answers():
    m, ok = unit_mass(np.array([[[0, 0], [0, 0]], [[1, 1], [1, 1]], [[np.nan, 1], [0, 0]]]))
    assert ok.tolist() == [False, True, False] and np.allclose(m[1], 0.25)
    uni = map_shape_stats(np.ones((7, 7)))
    assert uni["concentration"] == pytest.approx(0.0, abs=1e-9) and 0.45 < uni["off_centre"] < 0.65
    corner = np.zeros((7, 7))
    corner[0, 0] = 1
    cs = map_shape_stats(corner)
    assert cs["concentration"] == pytest.approx(1.0) and cs["off_centre"] == pytest.approx(1.0)
    # two disconnected cliques → eigengap says 2
    w = np.zeros((10, 10))
    w[:5, :5] = w[5:, 5:] = 1
    assert eigengap_k(w)[0] == 2


def test_missing_files_and_bad_k(tmp_path):
    with pytest.raises(RunDirError, match="per_image.csv"):
        discover(tmp_path)
    write_audit(tmp_path)
    with pytest.raises(ValueError, match="k:"):
        discover(tmp_path, k=0)


def _group(gap_hi, acc=0.2, lesion=0.4, lift=1.0, conc=0.0, off=0.5):
    return {"too_small": False, "gap": {"hi": gap_hi}, "accuracy": {"value": acc},
            "evidence": {"lesion": lesion}, "lift": {"ruler": lift},
            "map": {"concentration": conc, "off_centre": off}}


def test_suspicion_combines_performance_and_location_as_a_noisy_or():
    regions, med = {"lesion": "target", "ruler": "artifact"}, {"lesion": 0.4}
    s_gap, r_gap, p = suspicion(_group(-0.4), regions, med)
    assert (s_gap, r_gap) == (pytest.approx(0.4), "gap") and flag_of(p) == "worse"
    # the same gap with a tight corner spot (concentration 0.5 × off-centre 0.4 = 0.2): 1 − 0.6·0.8 = 0.52
    s_both, r_both, p = suspicion(_group(-0.4, conc=0.5, off=0.4), regions, med)
    assert s_both == pytest.approx(0.52) and r_both == "gap" and s_both > s_gap
    # the three "where" parts read the same maps: the largest counts, they are not added up
    # (artifact = 1 − 1/lift = 0.5 at lift 2 with accuracy 1; off_target = 1·(1 − 0.2/0.4) = 0.5; location 0.2)
    s_where, r_where, p = suspicion(_group(None, acc=1.0, lesion=0.2, lift=2.0, conc=0.5, off=0.4), regions, med)
    assert s_where == pytest.approx(0.5) and r_where in ("off_target:lesion", "artifact:ruler")
    assert flag_of(p) == "off-target"
    # a CI of Δ that reaches 0 gives no gap part and no flag
    s0, _, p = suspicion(_group(0.05), regions, med)
    assert s0 == pytest.approx(0.0) and flag_of(p) is None
    assert suspicion({**_group(-0.4), "too_small": True}, regions, med) == (None, "too small", {})
