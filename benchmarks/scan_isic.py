"""`audit.scan` on real dermoscopy: agreement of the scan's artifact flags with the Bissoto et al. 2020 labels.

    python benchmarks/scan_isic.py [--workers N] [--out DIR]

Data: ../shared/data/isic2017_artifacts next to the repository (override the data root with AUDIT_SHARED_DATA);
exits cleanly (code 0, a message) when it is absent. Runs `run_scan` with configs/isic.yaml, the label mapped
onto `isic2017_class` (a DataSpec columns mapping) and the `bissoto_*` columns scanned as metadata flags, then
prints and writes benchmarks/results/scan_isic.md: per artifact, the detector's sensitivity, specificity
(Wilson 95 % CIs) and Cohen's κ against the Bissoto label, and the scan's prevalence-by-label table. The same
tables replace the block between the `scan_isic` markers in docs/scan.md, so the documented numbers are the
script's.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from audit.errors import UndefinedMetricWarning  # noqa: E402
from audit.manifest import DataSpec, load_manifest  # noqa: E402
from audit.scan import run_scan, scan_input_spec  # noqa: E402
from audit.stats import proportion_ci  # noqa: E402
from audit.config import load_preset  # noqa: E402

DETECTOR_VS_LABEL = {"ruler": "bissoto_ruler", "ink": "bissoto_ink", "dark_corners": "bissoto_dark_corner",
                     "patches": "bissoto_patches", "gel_border": "bissoto_gel_border"}
FLAGS = ["bissoto_ruler", "bissoto_ink", "bissoto_dark_corner", "bissoto_patches", "bissoto_gel_border",
         "bissoto_gel_bubble", "bissoto_hair"]
COMMAND = "python benchmarks/scan_isic.py"
BEGIN, END = "<!-- scan_isic:begin (written by benchmarks/scan_isic.py) -->", "<!-- scan_isic:end -->"


def data_dir() -> Path:
    env = os.environ.get("AUDIT_SHARED_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[1] / ".." / "shared" / "data"


def kappa(a: np.ndarray, b: np.ndarray) -> float:
    """Cohen's κ of two binary ratings: (p_o − p_e) / (1 − p_e); NaN when p_e = 1."""
    po = float((a == b).mean())
    pe = float(a.mean() * b.mean() + (1 - a.mean()) * (1 - b.mean()))
    return (po - pe) / (1 - pe) if pe < 1 else float("nan")


def fmt(e) -> str:
    return "n/a" if not np.isfinite(e.value) else f"{e.value:.2f} [{e.lo:.2f}, {e.hi:.2f}]"


def fmt_prev(d: dict) -> str:
    if d.get("too_small"):
        return f"small ({d['k']}/{d['n']})"
    return "n/a" if d.get("value") is None else f"{100 * d['value']:.0f}% ({d['k']}/{d['n']})"


def fmt_v(cv: dict) -> str:
    """Cramér's V as the tables below print it: "0.48 [0.20, 0.72] (0.0077*)"."""
    mc = "*" if cv.get("p_method") == "monte carlo" else ""
    ci = f" [{cv['lo']:.2f}, {cv['hi']:.2f}]" if cv.get("lo") is not None else ""
    return "n/a" if cv["value"] is None else f"{cv['value']:.2f}{ci} ({cv['p']:.2g}{mc})"


def format_lines(s: dict) -> list[str]:
    """The scan's image-format table (scan.json `format`) as markdown: each attribute's levels with their share of
    every class, and the attribute's Cramér's V; the constant attributes in a sentence."""
    fmt, classes = s.get("format") or {}, s["data"]["classes"]
    lines = []
    if fmt.get("attributes"):
        lines += ["", "Image format by label (share of each class that has the level; Cramér's V of the level × "
                  "class table, as above):", ""]
        lines += ["| attribute | level | n | overall | " + " | ".join(classes) + " | Cramér's V [95% CI] (p) |",
                  "|---|---|---|---|" + "---|" * len(classes) + "---|"]
        for a, e in fmt["attributes"].items():
            for i, (x, lv) in enumerate(e["levels"].items()):
                lines.append(f"| {a if i == 0 else ''} | {x} | {lv['n']} | {fmt_prev(lv['prevalence'])} | "
                             + " | ".join(fmt_prev(lv["by_label"][c]) for c in classes)
                             + f" | {fmt_v(e['association']) if i == 0 else ''} |")
    if fmt.get("constant"):
        lines += ["", "Image format, the same for every image: "
                  + ", ".join(f"{a} {v}" for a, v in fmt["constant"].items()) + "."]
    return lines


def prevalence_lines(s: dict) -> list[str]:
    """The scan's artifact prevalence by label (scan.json `artifacts`) as markdown rows, with Cramér's V."""
    classes = s["data"]["classes"]
    lines = ["| artifact | source | overall | " + " | ".join(classes) + " | Cramér's V [95% CI] (p) |",
             "|---|---|---|" + "---|" * len(classes) + "---|"]
    for a, e in s["artifacts"].items():
        lines.append(f"| {a} | {e['source']} | {fmt_prev(e['prevalence'])} | "
                     + " | ".join(fmt_prev(e["by_label"][c]) for c in classes)
                     + f" | {fmt_v(e['label_association'])} |")
    return lines


def scan_dataset(name: str, preset_file: str, label_col: str, argv: list[str] | None, doc: str, **scan_kw):
    """Parse the benchmark's arguments and scan ../shared/data/<name>/labels.csv with configs/<preset_file>, the
    label read from `label_col`: (ScanResult, InputSpec, args), or None (with a message) when the data is absent."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--workers", type=int, default=2, help="DataLoader workers (default 2)")
    ap.add_argument("--out", help="scan output folder (default: a temporary folder)")
    args = ap.parse_args(argv)
    base = data_dir() / name
    if not (base / "labels.csv").is_file():
        print(f"{name}: {base}/labels.csv not found (set AUDIT_SHARED_DATA); nothing to do")
        return None
    preset = load_preset(ROOT / "configs" / preset_file)
    df = load_manifest(base / "labels.csv", DataSpec(columns={"label": label_col}))
    spec = scan_input_spec(preset)
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        out = Path(args.out) if args.out else Path(tmp)
        res = run_scan(preset, df, out, spec, workers=args.workers, **scan_kw)
    return res, spec, args


def write_results(stem: str, title: str, body: str, begin: str, end: str) -> None:
    """Print `body`, write benchmarks/results/<stem>.md and replace the block between `begin` and `end` in
    docs/scan.md, so the documented numbers are the script's."""
    print(body)
    res_dir = ROOT / "benchmarks" / "results"
    res_dir.mkdir(parents=True, exist_ok=True)
    (res_dir / f"{stem}.md").write_text(f"# {title}\n\n" + body + "\n")
    doc = ROOT / "docs" / "scan.md"
    if doc.is_file():
        t = doc.read_text()
        if begin in t and end in t:
            head, rest = t.split(begin, 1)
            doc.write_text(head + begin + "\n" + body + "\n" + end + rest.split(end, 1)[1])
    print(f"\nwrote {res_dir / (stem + '.md')}" + (" and docs/scan.md" if doc.is_file() else ""))


def main(argv: list[str] | None = None) -> int:
    got = scan_dataset("isic2017_artifacts", "isic.yaml", "isic2017_class", argv, __doc__, flag_cols=FLAGS)
    if got is None:
        return 0
    res, spec, args = got
    s, pi = res.summary, res.per_image

    counts = ", ".join(f"{k} {v}" for k, v in s["data"]["label_counts"].items())
    lines = [f"Generated by `{COMMAND}` on `isic2017_artifacts` (n = {s['data']['n_scanned']} of "
             f"{s['data']['n_rows']} images; labels {counts}"
             f"), preset `configs/isic.yaml` ({spec.size}-px grid, resize={spec.resize}), "
             f"{s['timing']['scan_pass_s']:.1f} s for the pass with {args.workers} worker(s).", "",
             "Agreement of the scan's detector flags (`present_<artifact>`) with the Bissoto et al. 2020 labels "
             "(sensitivity and specificity with Wilson 95 % CIs; Cohen's κ):", "",
             "| artifact | Bissoto label | n | label + | scan + | sensitivity | specificity | Cohen's κ | "
             "score AUROC |",
             "|---|---|---|---|---|---|---|---|---|"]
    for det, lab in DETECTOR_VS_LABEL.items():
        if f"present_{det}" not in pi:
            continue
        m = pi[f"present_{det}"].notna() & pi[f"present_{lab}"].notna()
        x = pi.loc[m, f"present_{det}"].to_numpy(dtype=bool)
        y = pi.loc[m, f"present_{lab}"].to_numpy(dtype=bool)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UndefinedMetricWarning)
            sens, spec_ = proportion_ci(int((x & y).sum()), int(y.sum())), proportion_ci(int((~x & ~y).sum()),
                                                                                         int((~y).sum()))
        k = kappa(x.astype(float), y.astype(float))
        sc = pi.loc[m, f"score_{det}"].to_numpy(dtype=np.float64)
        ok = np.isfinite(sc)
        auc = roc_auc_score(y[ok], sc[ok]) if ok.any() and 0 < y[ok].sum() < ok.sum() else float("nan")
        lines.append(f"| {det} | {lab} | {int(m.sum())} | {int(y.sum())} | {int(x.sum())} | {fmt(sens)} | "
                     f"{fmt(spec_)} | {'n/a' if not np.isfinite(k) else f'{k:.2f}'} | "
                     f"{'n/a' if not np.isfinite(auc) else f'{auc:.2f}'} |")
    lines += ["", f"Prevalence by label (the scan's table; groups with n < {s['options']['min_n']} are too small; "
              "Cramér's V over all classes, bias-corrected, with its bootstrap 95% CI and its χ² p, or * a Monte Carlo "
              "p where expected counts are < 5):", ""] + prevalence_lines(s)
    top = [e for e in s["associations"] if not e["too_small"] and e["odds_ratio"]["value"] is not None][:5]
    if top:
        lines += ["", "Strongest label associations (one class vs the rest):", ""]
        lines += [f"- {e['text']}" for e in top]
    lines += format_lines(s)
    nd = s["leakage"]["near_duplicates"]
    lines += ["", f"Near-duplicate image pairs {nd['scope']} (64-bit pHash, Hamming ≤ {nd['threshold']}): "
              f"{nd['n_pairs']}" + "".join(f"; {p['image_id_a']} ~ {p['image_id_b']} ({p['distance']})"
                                          for p in nd["pairs"][:5]) + ".",
              "",
              "Sensitivity/specificity/κ judge the detector's yes/no flag at its preset threshold; the score "
              "AUROC judges its ranking, whatever the threshold. n = 35 and melanoma n = 7: CIs are wide and "
              "per-class melanoma figures are reported as too small."]
    write_results("scan_isic", "`cli.py scan` on ISIC 2017 images with Bissoto artifact labels", "\n".join(lines),
                  BEGIN, END)
    return 0


if __name__ == "__main__":
    sys.exit(main())
