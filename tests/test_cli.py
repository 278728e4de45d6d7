"""`cli.py audit` end to end on a tiny run, every bad input → one line and exit 2, and the reduced demo."""
from __future__ import annotations

import json
import math
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

import cli
from audit.summary import hidden_shortcuts
from audit.summary_types import AuditSummary

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args, cwd=None, timeout=1500):
    return subprocess.run([sys.executable, str(ROOT / "cli.py"), *map(str, args)], capture_output=True, text=True,
                          cwd=cwd or ROOT, timeout=timeout)


def test_audit_end_to_end(tiny_run, tmp_path):
    out = tmp_path / "out"
    rc = cli.main(["audit", "--run-dir", str(tiny_run), "--out", str(out), "--workers", "0", "--quiet",
                   "--n-boot", "50"])
    assert rc == 0
    df = pd.read_csv(out / "per_image.csv")
    assert len(df) == 4 and set(df["split"]) == {"test"}  # default split: test
    for col in ("image_id", "image", "label", "pred", "confidence", "correct", "p_a", "p_b", "p_c"):
        assert col in df
    np.testing.assert_allclose(df[["p_a", "p_b", "p_c"]].sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(df[["p_a", "p_b", "p_c"]].max(axis=1), df["confidence"], atol=1e-6)
    p = np.sort(df[["p_a", "p_b", "p_c"]].to_numpy(), axis=1)  # margin = top-1 − top-2 logit = log(p1 / p2)
    np.testing.assert_allclose(df["margin"], np.log(p[:, -1] / p[:, -2]), rtol=1e-4, atol=1e-5)
    for c in "abc":  # log-odds from the logits (float64), the softmax's where it is not saturated
        np.testing.assert_allclose(df[f"logodds_{c}"], np.log(df[f"p_{c}"] / (1 - df[f"p_{c}"])), rtol=1e-4, atol=1e-5)
    z = np.load(out / "cams.npz")
    assert z["cam"].shape == (4, 2, 2) and z["cam"].dtype == np.float32  # resnet18 layer4 at 64 px
    assert list(z["image_id"]) == list(df["image_id"].astype(str)) and str(z["layer"]) == "layer4"
    s = json.loads((out / "summary.json").read_text())
    assert s["data"]["n"] == 4 and s["data"]["n_skipped"] == 0 and s["cam"]["layer"] == "layer4"
    assert s["calibration"]["ece"]["n"] == 4 and s["calibration"]["ece"]["too_small"]  # 4 images < min_n 10
    assert (out / "config.resolved.yaml").exists() and not (out / "errors.csv").exists()


def test_split_limit_layer_and_unreadable_image(tiny_run, tmp_path):
    data = tiny_run.parent / "data"
    m = pd.read_csv(data / "manifest.csv")
    (data / "images" / "broken.png").write_bytes(b"not a png")
    m.loc[len(m)] = ["images/broken.png", "a", "val", "x"]
    m.loc[len(m)] = ["images/missing.png", "b", "val", "y"]
    m.to_csv(data / "manifest.csv", index=False)
    out = tmp_path / "out"
    rc = cli.main(["audit", "--run-dir", str(tiny_run), "--out", str(out), "--split", "val", "--layer", "layer3",
                   "--target", "true", "--workers", "0", "--quiet", "--n-boot", "20"])
    assert rc == 0
    df = pd.read_csv(out / "per_image.csv")
    assert len(df) == 2 and (df["explained"] == df["label"]).all()
    err = pd.read_csv(out / "errors.csv")
    assert set(err["image_id"]) == {"broken", "missing"}
    assert any("unreadable" in r for r in err["reason"]) and any("not found" in r for r in err["reason"])
    assert np.load(out / "cams.npz")["cam"].shape[1:] == (4, 4)
    assert json.loads((out / "summary.json").read_text())["data"]["n_skipped"] == 2


def _bad_manifest(tiny_run, text):
    p = tiny_run.parent / "data" / "bad.csv"
    p.write_text(text)
    return p


@pytest.mark.parametrize("args,match", [          # the key tokens: the file, option or column, what was expected
    (["--run-dir", "{tmp}/nope"], ["{tmp}/nope", "not found"]),
    (["--run-dir", "{tmp}"], ["{tmp}", "config.yaml", "config.json", "args.yaml"]),
    (["--run-dir", "{run}", "--layer", "layer9"], ["--layer", "'layer9'"]),
    (["--run-dir", "{run}", "--target", "zebra"], ["--target", "'zebra'"]),
    (["--run-dir", "{run}", "--split", "holdout"], ["--split", "'holdout'", "not found"]),
    (["--run-dir", "{run}", "--data", "{tmp}/none.csv"], ["{tmp}/none.csv", "not found"]),
    (["--run-dir", "{run}", "--data", "{nolabel}"], ["{nolabel}", "'label'"]),
    (["--run-dir", "{run}", "--data", "{badlabel}"], ["{badlabel}", "'zebra'", "classes"]),
    (["--run-dir", "{run}", "--config", "{badyaml}"], ["{badyaml}", "YAML"]),
    (["--run-dir", "{run}", "--by", "nope"], ["--by", "'nope'", "not found"]),
    (["--run-dir", "{run}", "--n-boot", "0"], ["--n-boot", "positive integer", "0"]),
    (["--run-dir", "{run}", "--gallery-n", "-1"], ["--gallery-n", "≥ 0", "-1"]),
    (["--run-dir", "{run}", "--seed", "-1"], ["--seed", "[0, 2^32)", "-1"]),
    (["--run-dir", "{run}", "--batch-size", "0"], ["--batch-size", "positive integer", "0"]),
    (["--run-dir", "{run}", "--config", "{topkey}"], ["{topkey}", "'gate'"]),
    (["--run-dir", "{run}", "--device", "cuda:0"], None),
], ids=["run-dir", "no-config", "layer", "target", "split", "manifest", "no-label", "bad-label", "bad-yaml", "by", "n-boot",
        "gallery-n", "seed", "batch-size", "preset-section", "device"])
def test_bad_input_exit_2(tiny_run, tmp_path, capsys, args, match):
    import torch
    if match is None:
        if torch.cuda.is_available():
            pytest.skip("this machine has CUDA")
        match = ["cuda:0", "CUDA"]
    nolabel = _bad_manifest(tiny_run, "image\nimages/img000.png\n")
    badlabel = tiny_run.parent / "data" / "badlabel.csv"
    badlabel.write_text("image,label\nimages/img000.png,zebra\n")
    badyaml = tmp_path / "bad.yaml"
    badyaml.write_text("regions: [unclosed\n")
    topkey = tmp_path / "topkey.yaml"
    topkey.write_text("gate:\n  max_artifact_lift: 2.0\n")  # misspelt: the gates would silently not be checked
    fmt = {"tmp": tmp_path, "run": tiny_run, "nolabel": nolabel, "badlabel": badlabel, "badyaml": badyaml,
           "topkey": topkey}
    argv = ["audit", *[a.format(**fmt) for a in args], "--out", str(tmp_path / "o"), "--workers", "0", "--quiet"]
    rc = cli.main(argv)
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert err.startswith("error: ") and "\n" not in err, err
    missing = [t for t in (m.format(**fmt) for m in match) if t not in err]
    assert not missing, (missing, err)
    assert "Traceback" not in err


@pytest.mark.parametrize("opt,val", [("--k", "0"), ("--min-n", "-3"), ("--seed", "-1")])
def test_discover_refuses_bad_numbers_before_any_work(tiny_run, tmp_path, capsys, opt, val):
    rc = cli.main(["discover", "--run-dir", str(tiny_run), "--out", str(tmp_path / "o"), opt, val, "--quiet"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith(f"error: {opt}: expected") and val in err and "\n" not in err
    assert not (tmp_path / "o").exists()  # refused before the audit it would have run


def test_masks_command_counts_failures_and_refuses_bad_input(tmp_path, capsys):
    """`cli.py masks`: a bad --limit is one line and exit 2; an unreadable image is counted in the summary
    line; when no image can be read the run exits 2 but regions.csv (with each image's reason) is kept."""
    from PIL import Image
    Image.fromarray(np.full((40, 60, 3), 180, np.uint8)).save(tmp_path / "a.png")
    ok = tmp_path / "ok.csv"
    ok.write_text("image,label\na.png,x\ngone.png,x\n")
    gone = tmp_path / "gone.csv"
    gone.write_text("image,label\ngone.png,x\n")
    preset = str(ROOT / "configs" / "isic.yaml")
    base = ["masks", "--config", preset, "--out"]
    assert cli.main([*base, str(tmp_path / "o0"), "--data", str(ok), "--limit", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --limit: ") and "\n" not in err and "positive integer" in err and "got 0" in err
    with pytest.warns(UserWarning, match="unreadable image"):
        assert cli.main([*base, str(tmp_path / "o1"), "--data", str(ok)]) == 0
    out = " ".join(capsys.readouterr().err.split())  # the status line goes to stderr, as progress does
    assert (pd.read_csv(tmp_path / "o1" / "regions.csv")["status"] != "ok").sum() == 1
    assert "1 of 2" in out and "1 unreadable" in out and "regions.csv" in out        # the counts, where to look
    with pytest.warns(UserWarning, match="unreadable image"):
        assert cli.main([*base, str(tmp_path / "o2"), "--data", str(gone)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {gone}: ") and "\n" not in err and "regions.csv" in err   # the file, the record
    assert "unreadable" in pd.read_csv(tmp_path / "o2" / "regions.csv")["status"][0]


def test_cli_subprocess_exit_code_and_json(tiny_run, tmp_path):
    r = run_cli("audit", "--run-dir", tiny_run, "--out", tmp_path / "o", "--workers", "0", "--json", "--n-boot", "20")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["data"]["n"] == 4
    r = run_cli("audit", "--run-dir", tmp_path / "missing")
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "Traceback" not in r.stderr


def test_demo_reduced(tmp_path):
    """The embedded demo at a reduced size: data, two trained runs, two audits, and the models differ. Run from
    another folder with a relative --out, as the README's `cli.py demo` (reports/demo) is."""
    r = run_cli("demo", "--small", "--out", "demo", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    s = {}
    for v in ("shortcut", "clean"):
        s[v] = json.loads((tmp_path / "demo" / "reports" / v / "summary.json").read_text())
        assert s[v]["data"]["n"] == 64 and {"lungs", "text", "border"} <= set(s[v]["regions"])
        assert (tmp_path / "demo" / "reports" / v / "report.html").exists()
    # the marker is independent of the label in the test split: the shortcut model pays for having used it
    assert s["shortcut"]["accuracy"]["value"] < s["clean"]["accuracy"]["value"]
    assert s["shortcut"]["verdict"] == "fail"
    # the marker lies inside the border band: the border's flips are given to the marker, and the border is not
    # named as a shortcut of its own (#26)
    att = {(a["region"], a["contains"]): a for a in s["shortcut"]["counterfactual"]["attribution"]}
    assert att[("border", "text")]["decision"] == "contained"
    assert "border" not in [h["region"] for h in s["shortcut"]["counterfactual"]["hidden"]]
    # the demo ends with a paired compare of its two runs: its figures are those of the two audits, and the table
    # gives the marker's lift (not its raw share)
    cmp = json.loads((tmp_path / "demo" / "reports" / "compare" / "compare.json").read_text())
    fig = {f["key"]: f for f in cmp["figures"]}
    assert fig["accuracy"]["baseline"]["value"] == s["shortcut"]["accuracy"]["value"]
    assert fig["accuracy"]["candidate"]["value"] == s["clean"]["accuracy"]["value"]
    assert fig["accuracy"]["difference"]["n"] == 64 and "lift[text]" in fig and "flip_rate[text]" in fig
    out = " ".join(r.stdout.split())                # the compare table (its wording: tests/golden/compare_table.txt)
    assert all(d in out for d in ("shortcut", "clean", "baseline", "candidate", "lift", "text"))


def test_validation_split_named_validation_tunes_the_thresholds(tiny_run, tmp_path, capsys):
    m = tiny_run.parent / "data" / "manifest.csv"
    df = pd.read_csv(m)
    df["split"] = df["split"].replace({"val": "validation"})
    df.to_csv(tiny_run.parent / "data" / "m2.csv", index=False)
    out = tmp_path / "o"
    assert cli.main(["audit", "--run-dir", str(tiny_run), "--data", str(tiny_run.parent / "data" / "m2.csv"),
                     "--out", str(out), "--workers", "0", "--n-boot", "20", "--positive", "b", "--no-report"]) == 0
    op = json.loads((out / "summary.json").read_text())["operating_points"]  # 'b': the validation split holds one
    assert op["tuning"] == "validation split" and op["validation_split"] == "validation" and op["warning"] is None
    # tuned on the validation images' log-odds (one positive: every target's threshold is its log-odds, as the
    # audit of that split reports it), reported as a probability
    out_val = tmp_path / "v"
    assert cli.main(["audit", "--run-dir", str(tiny_run), "--data", str(tiny_run.parent / "data" / "m2.csv"),
                     "--out", str(out_val), "--workers", "0", "--n-boot", "20", "--split", "validation", "--quiet",
                     "--no-report"]) == 0
    val_lo = pd.read_csv(out_val / "per_image.csv").query("label == 'b'")["logodds_b"]
    assert len(val_lo) == 1
    for pt in op["points"]:
        assert pt["threshold_logodds"] == pytest.approx(float(val_lo.iloc[0]), abs=1e-5)
        assert pt["threshold"] == pytest.approx(1 / (1 + math.exp(-pt["threshold_logodds"])))
    ops = next(ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("Operating points"))
    assert op["tuning"] in ops and f"'{op['validation_split']}'" in ops    # how, and on which split, as shown


def test_audit_with_regions_gates_counterfactual(tiny_run, tmp_path):
    preset = tmp_path / "p.yaml"
    preset.write_text("regions:\n  border: {width: 0.1}\n  corners: {size: 0.2}\n"
                      "gates: {max_artifact_lift: 100.0, min_accuracy: 0.99}\n")
    out = tmp_path / "o"
    rc = cli.main(["audit", "--run-dir", str(tiny_run), "--config", str(preset), "--out", str(out), "--workers", "0",
                   "--quiet", "--n-boot", "20", "--counterfactual", "--positive", "a", "--by", "site",
                   "--high-conf", "0.01"])
    s = json.loads((out / "summary.json").read_text())
    df = pd.read_csv(out / "per_image.csv")
    top = s["high_conf_errors"]["top"]  # every error counts at --high-conf 0.01 (3 classes: top-1 ≥ 1/3)
    assert len(top) == (~df["correct"]).sum() > 0
    for e in top:
        row = df.set_index("image_id").loc[e["image_id"]]
        assert e["flips_without"] == [a for a in ("border", "corners") if row[f"cf_flip_{a}"] == 1]
    for col in ("frac_border", "lift_corners", "cf_delta_border", "cf_flip_corners", "flag_off_target",
                "flag_high_conf_error"):
        assert col in df, col
    assert s["operating_points"]["tuning"] == "validation split" and s["operating_points"]["positive_class"] == "a"
    assert s["operating_points"]["validation_split"] == "val"
    assert {g["name"] for g in s["gates"]} == {"max_artifact_lift[border]", "max_artifact_lift[corners]",
                                              "min_accuracy"}
    acc_gate = next(g for g in s["gates"] if g["name"] == "min_accuracy")
    assert acc_gate["passed"] is (s["accuracy"]["value"] >= 0.99)
    assert rc == {"pass": 0, "fail": 1, "inconclusive": 3}[s["verdict"]]
    assert "border" in s["counterfactual"]["regions"] and s["counterfactual"]["regions"]["border"]["n"] == 4
    typed = AuditSummary.from_json(s)
    assert typed.to_json() == s           # the one to/from-JSON pair round-trips a real audit's summary exactly
    assert [h.to_json() for h in hidden_shortcuts(typed)] == s["counterfactual"]["hidden"]  # on the finished summary
    from audit.summary_schema import undocumented
    assert undocumented(s) == []          # every top-level key is in docs/summary_schema.md (audit/summary_types.py)
    assert s["cam"]["finer_layer"] == {"layer": "layer3", "resolution": [4, 4]}   # resnet18 at 64 px: layer4 is 2×2
    assert s["by_group"]["columns"] == ["label", "site"]


def test_scan_command(tiny_run, tmp_path, capsys):
    preset = tmp_path / "p.yaml"
    preset.write_text("regions:\n  ink: {}\n  patches: {}\n")
    data = tiny_run.parent / "data" / "manifest.csv"
    rc = cli.main(["scan", "--data", str(data), "--config", str(preset), "--out", str(tmp_path / "scan"),
                   "--workers", "0", "--by", "site", "--json"])
    assert rc == 0
    s = json.loads(capsys.readouterr().out)
    assert (tmp_path / "scan" / "scan.csv").exists() and s["schema_version"]
    assert len(pd.read_csv(tmp_path / "scan" / "scan.csv")) == 6
    rc = cli.main(["scan", "--data", str(data), "--config", str(preset), "--out", str(tmp_path / "scan"),
                   "--by", "nope"])
    assert rc == 2


def test_discover_and_sanity(tiny_run, tmp_path, capsys):
    out = tmp_path / "o"
    preset = tmp_path / "p.yaml"
    preset.write_text("regions:\n  border: {width: 0.1}\ngates: {max_sanity_correlation: 0.5}\n")
    rc = cli.main(["audit", "--run-dir", str(tiny_run), "--out", str(out), "--workers", "0", "--quiet",
                   "--n-boot", "20", "--split", "all", "--config", str(preset), "--no-report"])
    s = json.loads((out / "summary.json").read_text())
    san = s["sanity"]
    assert san["steps"] and {st["mode"] for st in san["steps"]} == {"cascade", "independent"}
    gate = s["gates"][0]
    assert gate["name"] == "max_sanity_correlation" and gate["value"] == san["gate_value"]
    assert rc == (0 if gate["passed"] else 1)
    rc = cli.main(["discover", "--out", str(out), "--min-n", "2", "--json"])
    assert rc == 0
    d = json.loads(capsys.readouterr().out)
    assert "ranking" in d and (out / "discover.csv").exists()
    s = json.loads((out / "summary.json").read_text())
    assert "discover" in s
    # the reports were re-rendered: the top group's prototypes are overlays in the gallery and the page
    top = s["discover"]["ranking"][0]
    folder = out / "gallery" / f"discover_{top['kind']}_{top['id']}"
    pngs = sorted(folder.glob("*.png"))
    assert top["prototypes"] and len(pngs) == min(8, len(top["prototypes"]))
    assert str(top["prototypes"][0]) in pngs[0].name
    html = (out / "report.html").read_text()
    assert f"Discovered {top['kind']} {top['id']}" in html and f"mean map of {top['kind']} {top['id']}" in html
    assert f"Discovered {top['kind']} {top['id']}" in (out / "GALLERY.md").read_text()
    assert cli.main(["discover", "--out", str(tmp_path / "empty")]) == 2


def test_mask_warnings_reach_per_image(tiny_run, tmp_path):
    """A mask warning raised in a DataLoader worker is written beside the image, not lost: here a mask with
    another aspect ratio than the 48×64 images, which is resized and kept (so only the warning tells)."""
    from PIL import Image
    data = tiny_run.parent / "data"
    m = pd.read_csv(data / "manifest.csv")
    wide = np.zeros((10, 40), np.uint8)
    wide[:, :20] = 255
    Image.fromarray(wide).save(data / "wide_mask.png")
    m["mask"] = "wide_mask.png"
    m.to_csv(data / "manifest.csv", index=False)
    preset = tmp_path / "p.yaml"
    preset.write_text("regions:\n  lungs: {source: file, values: [255]}\n")
    out = tmp_path / "o"
    assert cli.main(["audit", "--run-dir", str(tiny_run), "--config", str(preset), "--out", str(out),
                     "--workers", "0", "--quiet", "--n-boot", "20", "--no-report"]) == 0
    df = pd.read_csv(out / "per_image.csv")
    assert df["frac_lungs"].notna().all()
    assert df["region_notes"].str.contains("aspect ratio differs").all(), df["region_notes"].tolist()


def test_interrupted_audit_keeps_its_rows_and_resumes_from_the_cache(tiny_run, tmp_path, monkeypatch, capsys):
    """Ctrl-C after the first batch: per_image.partial.csv holds those rows, the model outputs stay in the cache,
    and the rerun reads them instead of recomputing, then removes the partial file."""
    from audit.config import resolve_config
    from audit.pipeline import run_audit
    cfg = resolve_config({"run_dir": str(tiny_run), "out": str(tmp_path / "o"), "workers": 0, "n_boot": 20,
                          "batch_size": 2, "split": "all"})

    def stop(done, total):
        if done >= 2:
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        run_audit(cfg, progress=stop)
    part = pd.read_csv(tmp_path / "o" / "per_image.partial.csv")
    assert len(part) == 2 and "_row" not in part and {"pred", "confidence", "margin"} <= set(part.columns)
    assert not (tmp_path / "o" / "summary.json").exists()
    res = run_audit(cfg)
    assert res.summary.cache.from_cache == 2 and res.summary.cache.computed == 4
    assert not (tmp_path / "o" / "per_image.partial.csv").exists()
    full = pd.read_csv(tmp_path / "o" / "per_image.csv").set_index("image_id")
    np.testing.assert_allclose(full.loc[part["image_id"], "confidence"], part["confidence"], rtol=1e-6)
    # the CLI says where things are
    import audit.pipeline

    def interrupted(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(audit.pipeline, "run_audit", interrupted)
    assert cli.main(["audit", "--run-dir", str(tiny_run), "--out", str(tmp_path / "o2"), "--quiet"]) == 130
    assert "per_image.partial.csv" in capsys.readouterr().err


def test_audit_splits_by_a_file_artifact_whose_absence_is_known(tiny_run, tmp_path):
    """with vs without a file region: images with an artifact mask, and (absent_when_empty) those without one."""
    from PIL import Image

    from audit.config import resolve_config
    from audit.pipeline import run_audit
    man = tiny_run.parent / "data" / "manifest.csv"
    df = pd.read_csv(man)
    m = np.zeros((64, 64), np.uint8)
    m[:8, :8] = 255
    Image.fromarray(m).save(tmp_path / "sq.png")
    df["sq_mask"] = [str(tmp_path / "sq.png"), None, str(tmp_path / "sq.png"), None, None, None]
    df.to_csv(man, index=False)
    preset = tmp_path / "p.yaml"
    preset.write_text("regions:\n  patches: {source: file, column: sq_mask, absent_when_empty: true}\n")
    res = run_audit(resolve_config({"run_dir": str(tiny_run), "out": str(tmp_path / "o"), "workers": 0,
                                    "n_boot": 20, "split": "all"}, str(preset)))
    ba = res.summary.by_artifact["patches"]
    assert (ba["with"]["n"], ba["without"]["n"], ba["n_unknown"]) == (2, 4, 0)
    assert res.per_image["present_patches"].tolist() == [True, False, True, False, False, False]
    assert res.summary.regions["patches"].n_missing == 4  # no mask: the fraction stays undefined, not 0


def test_preset_grid_that_differs_from_the_model_is_named_not_applied(tiny_run, tmp_path):
    from audit.config import resolve_config
    from audit.pipeline import run_audit
    from audit.scan import scan_input_spec
    preset = tmp_path / "p.yaml"
    preset.write_text("input: {size: 224, resize: stretch}\nregions: {border: {}}\n")
    res = run_audit(resolve_config({"run_dir": str(tiny_run), "out": str(tmp_path / "o"), "workers": 0,
                                    "n_boot": 20}, str(preset)))
    note = res.summary.data.grid_note         # the preset's value and the model's own, which is applied
    assert "size 224" in note and "size 64" in note and "resize" not in note and "\n" not in note
    assert np.load(tmp_path / "o" / "cams.npz")["cam"].shape[1:] == (2, 2)  # 64 px input, not 224
    same = tmp_path / "same.yaml"
    same.write_text("input: {size: 64}\n")
    res = run_audit(resolve_config({"run_dir": str(tiny_run), "out": str(tmp_path / "o2"), "workers": 0,
                                    "n_boot": 20}, str(same)))
    assert res.summary.data.grid_note is None
    same.write_text("input: {size: 64, scale16: full}\n")  # how 16-bit images are scaled is part of the grid
    res = run_audit(resolve_config({"run_dir": str(tiny_run), "out": str(tmp_path / "o3"), "workers": 0,
                                    "n_boot": 20}, str(same)))
    note = res.summary.data.grid_note
    assert "scale16 full" in note and "scale16 max" in note and "size" not in note
    assert scan_input_spec({"input": {"scale16": "12"}}).scale16 == 12
    from audit.errors import ConfigError
    with pytest.raises(ConfigError, match=r"input\.scale16: expected one of"):
        scan_input_spec({"input": {"scale16": "half"}})
    with pytest.raises(ConfigError, match=r"\['mean'\] belong to the run's config.yaml"):
        scan_input_spec({"input": {"mean": [0.5, 0.5, 0.5]}})


def test_audit_of_16_bit_copies_with_scale16_full_matches_the_8_bit_audit(tiny_run, tmp_path):
    """The run's `input.scale16: full` makes an audit of 16-bit copies (× 257) of 8-bit grayscale images give the
    8-bit audit's probabilities and maps exactly; the default ("max", each image's own maximum) does not, and
    config.resolved.yaml records the rule."""
    import yaml
    from PIL import Image
    data = tiny_run.parent / "data"
    man = pd.read_csv(data / "manifest.csv")
    rng = np.random.default_rng(1)
    for name in man["image"]:
        v = rng.integers(0, 200, (48, 64), dtype=np.uint8)  # maxima < 255: "max" stretches them
        Image.fromarray(v).save(data / name.replace(".png", "_8.png"))
        Image.fromarray(v.astype(np.uint16) * 257).save(data / name.replace(".png", "_16.png"))
    for bits in ("8", "16"):
        man.assign(image=man["image"].str.replace(".png", f"_{bits}.png")).to_csv(data / f"m{bits}.csv", index=False)

    def audit(bits: str, tag: str) -> tuple[pd.DataFrame, np.ndarray]:
        out = tmp_path / tag
        assert cli.main(["audit", "--run-dir", str(tiny_run), "--data", str(data / f"m{bits}.csv"), "--out",
                         str(out), "--workers", "0", "--quiet", "--no-report", "--n-boot", "20"]) == 0
        return pd.read_csv(out / "per_image.csv"), np.load(out / "cams.npz")["cam"]

    ref, ref_cam = audit("8", "ref")
    default, _ = audit("16", "default")
    assert not np.allclose(default["p_a"], ref["p_a"], atol=1e-6)
    cfg = yaml.safe_load((tiny_run / "config.yaml").read_text())
    cfg["input"]["scale16"] = "full"
    (tiny_run / "config.yaml").write_text(yaml.safe_dump(cfg))
    full, full_cam = audit("16", "full")
    np.testing.assert_array_equal(full[["p_a", "p_b", "p_c"]].to_numpy(), ref[["p_a", "p_b", "p_c"]].to_numpy())
    np.testing.assert_array_equal(full_cam, ref_cam)
    assert set(full["bit_depth"]) == {16} and set(ref["bit_depth"]) == {8}
    sdata = json.loads((tmp_path / "full" / "summary.json").read_text())["data"]
    note = sdata["bit_depth_note"]                  # how many, the scale16 rule applied; one bit depth: no --by hint
    assert "4 of 4" in note and "16-bit" in note and "65535" in note and "input.scale16: full" in note
    assert "src_mode" not in note
    assert "bit_depth_note" not in json.loads((tmp_path / "ref" / "summary.json").read_text())["data"]
    # a set mixing 8- and 16-bit images: the note says so, and --by takes the image-format columns
    mixed = man.assign(image=[n.replace(".png", "_8.png" if i % 2 else "_16.png") for i, n in enumerate(man["image"])])
    mixed.to_csv(data / "mixed.csv", index=False)
    preset = tmp_path / "p.yaml"
    preset.write_text("regions:\n  border: {width: 0.1}\n")
    out = tmp_path / "mixed"
    assert cli.main(["audit", "--run-dir", str(tiny_run), "--data", str(data / "mixed.csv"), "--config", str(preset),
                     "--out", str(out), "--workers", "0", "--quiet", "--no-report", "--n-boot", "20", "--split", "all",
                     "--by", "src_mode"]) == 0
    s = json.loads((out / "summary.json").read_text())
    note = s["data"]["bit_depth_note"]              # how many, and (mixed) the --by that compares them
    assert "3 of 6" in note and "16-bit" in note and "--by src_mode" in note
    per = pd.read_csv(out / "per_image.csv")
    assert per.groupby("src_mode")["bit_depth"].unique().map(list).to_dict() == {"gray 16-bit": [16],
                                                                                "gray 8-bit": [8]}
    assert set(per["src_format"]) == {"PNG"} and set(per["src_short_side"]) == {"<256"}
    groups = {(r["group_col"], r["group"]) for r in s["by_group"]["rows"]}
    assert {("src_mode", "gray 16-bit"), ("src_mode", "gray 8-bit")} <= groups
    acc = s["accuracy_by_group"]["src_mode"]
    for g, want in per.groupby("src_mode")["correct"].agg(["sum", "size"]).iterrows():
        assert acc[g]["n"] == want["size"] == 3 and acc[g]["too_small"]
        assert acc[g]["accuracy"]["value"] == pytest.approx(want["sum"] / 3)
    assert yaml.safe_load((tmp_path / "full" / "config.resolved.yaml").read_text())["run"]["input"]["scale16"] == "full"


def test_undefined_gate_gives_inconclusive_exit_3_named_in_terminal_and_report(tiny_run, tmp_path, capsys):
    """#26: a gate that cannot be measured (here: a sensitivity gate with no positive class) no longer turns a
    model whose measured gates all pass into a FAIL: the verdict is INCONCLUSIVE (exit 3), the headline names the
    undefined gate, and `--undefined-gates` (CLI > preset's gates.undefined) sets the policy."""
    preset = tmp_path / "p.yaml"
    preset.write_text("regions:\n  border: {width: 0.1}\n"
                      "gates: {min_accuracy: 0.0, min_sensitivity_at_0.90: 0.5, undefined: inconclusive}\n")
    base = ["audit", "--run-dir", str(tiny_run), "--config", str(preset), "--workers", "0", "--n-boot", "20"]
    out = tmp_path / "o"
    assert cli.main(base + ["--out", str(out)]) == 3
    s = json.loads((out / "summary.json").read_text())
    assert s["verdict"] == "inconclusive" and s["verdict_detail"]["decided_by"] == ["min_sensitivity_at_0.90"]
    assert (s["verdict_detail"]["n_pass"], s["verdict_detail"]["n_undefined"]) == (1, 1)
    gate = next(g for g in s["gates"] if g["name"] == "min_sensitivity_at_0.90")
    assert gate["status"] == "undefined" and gate["note"]                  # why: no operating point
    head = s["verdict_detail"]["headline"]
    assert gate["name"] in head and gate["note"] in head and "gates.undefined: inconclusive" in head
    text = " ".join(capsys.readouterr().out.split())
    line = next(ln for ln in text.split("Verdict: ")[1:] if ln.startswith("INCONCLUSIVE"))
    assert " ".join(head.split()) in line                                  # the verdict and its headline, shown
    import html as _html
    page = (out / "report.html").read_text()
    assert "INCONCLUSIVE" in page and _html.escape(head[1:], quote=True) in page   # (its first letter capitalised)
    cfg = yaml.safe_load((out / "config.resolved.yaml").read_text())
    assert cfg["options"]["undefined_gates"] == "inconclusive"
    for policy, rc in (("ignore", 0), ("fail", 1)):
        o = tmp_path / policy
        assert cli.main(base + ["--out", str(o), "--quiet", "--no-report", "--undefined-gates", policy]) == rc
        assert json.loads((o / "summary.json").read_text())["verdict"] == {"ignore": "pass", "fail": "fail"}[policy]


def test_manifest_without_split_column_says_it_may_audit_training_data(tiny_run, tmp_path, capsys):
    """#26: no split column → every row audited; the terminal, summary.json and report.html say so."""
    data = tiny_run.parent / "data"
    pd.read_csv(data / "manifest.csv").drop(columns="split").to_csv(data / "nosplit.csv", index=False)
    out = tmp_path / "o"
    assert cli.main(["audit", "--run-dir", str(tiny_run), "--data", str(data / "nosplit.csv"), "--out", str(out),
                     "--workers", "0", "--n-boot", "20", "--positive", "b"]) == 0
    s = json.loads((out / "summary.json").read_text())
    assert s["data"]["n"] == 6 and s["data"]["split"] == "all"
    assert s["data"]["split_note"] and "split" in s["data"]["split_note"]
    text = capsys.readouterr().out
    line = next(ln for ln in text.splitlines() if ln.startswith("Split:"))   # one line: stdout is not a terminal
    assert line.endswith(s["data"]["split_note"])
    assert s["data"]["split_note"] in (out / "report.html").read_text()
    # per_image.csv: each raw map's peak share and normalised entropy (#26 §1.5), as computed from cams.npz
    from audit.cam import map_concentration
    df = pd.read_csv(out / "per_image.csv")
    cams = np.load(out / "cams.npz")["cam"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        peak, ent = map_concentration(cams)
    np.testing.assert_allclose(df["cam_peak_share"], peak, rtol=1e-6)
    np.testing.assert_allclose(df["cam_entropy"], ent, rtol=1e-6)
    assert ((df["cam_peak_share"] >= 0.25 - 1e-9) & (df["cam_peak_share"] <= 1)).all()   # 2×2 maps: ≥ 1/4
    # 2 positives of 'b' and no validation split: cross-fitted with 2 folds, and said so
    from audit.thresholds import TUNING_CROSS_FIT
    op = s["operating_points"]
    assert op["folds"] == 2 and op["n_pos"] == 2 and op["positive_class"] == "b" and op["tuning"] == TUNING_CROSS_FIT
    assert "2-fold" in op["warning"] and "class b" in op["warning"]
    # the default split of the tiny manifest is 'test': no note
    out2 = tmp_path / "o2"
    assert cli.main(["audit", "--run-dir", str(tiny_run), "--out", str(out2), "--workers", "0", "--n-boot", "20",
                     "--quiet", "--no-report"]) == 0
    assert "split_note" not in json.loads((out2 / "summary.json").read_text())["data"]


def test_top_level_help_is_for_users(capsys, monkeypatch):
    """#26: the --help read like a note to developers; it names the tool, each command in one line, an example;
    --batch-size and --seed have help text."""
    monkeypatch.setenv("COLUMNS", "100")
    with pytest.raises(SystemExit) as e:
        cli.main(["--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    assert text.split("\n\n")[1].startswith("Audit a medical image classifier for shortcuts: is its Grad-CAM evidence")
    assert "call the library" not in text and "map errors" not in text
    for cmd in ("audit", "scan", "discover", "masks", "compare", "demo"):
        line = next(ln for ln in text.splitlines() if ln.startswith(f"    {cmd} "))
        i = text.splitlines().index(line)
        assert len(line.split(None, 1)[1]) > 20                       # a description on the same line
        assert not text.splitlines()[i + 1].startswith(" " * 10)      # ... and only one line
    assert "python cli.py audit --run-dir" in text and "exit codes: 0" in text
    with pytest.raises(SystemExit):
        cli.main(["audit", "--help"])
    sub = " ".join(capsys.readouterr().out.split())
    assert "--batch-size BATCH_SIZE images per model pass (default 32" in sub
    assert "--seed SEED seed of the bootstrap CIs" in sub


@pytest.mark.parametrize("param,text,printed", [
    ("batch_size", "batch_size: expected a positive integer, got 0", "--batch-size: expected a positive integer, got 0"),
    ("preset", "preset: not found", "--config: not found"),
    ("split", "/d/split/m.csv: split 'x' not found in column 'split'", "/d/split/m.csv: --split 'x' not found in column 'split'"),
    ("data", "no manifest: pass data (a manifest CSV) or set data.manifest", "no manifest: pass --data (a manifest CSV) or set data.manifest"),
    ("sensitivities", "p.yaml: audit.sensitivities: expected", "p.yaml: audit.sensitivities: expected"),
    (None, "batch_size: x", "batch_size: x"),
])
def test_library_parameter_names_become_flags_when_printed(param, text, printed):
    """Library errors name parameters; the CLI prints the flag that sets it, at the first bare occurrence only
    (a path, a quoted column or a dotted preset key holding the same word is left alone)."""
    from audit.errors import ConfigError
    assert cli.flag_message(ConfigError(text, param=param)) == printed
