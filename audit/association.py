"""Association statistics of categorical tables, shared by the scan, the format-by-label table and device bias.

  odds_ratio_2x2      OR of a 2×2 table with its Woolf logit CI and Fisher's exact p (Haldane–Anscombe 0.5 on a
                      zero cell);
  cramers_v           Pearson's χ² and Cramér's V of an r×c table, bias-corrected (Bergsma 2013) with a bootstrap
                      CI, its p by Monte Carlo over tables with the same margins when the table is sparse;
  prevalence          k/n with its Wilson CI, "too small" below min_n;
  one_vs_rest         the one-vs-rest 2×2 analyses of one artifact against the label;
  by_table            prevalence per group and Cramér's V of group × artifact;
  model_by_artifact   a model's accuracy, sensitivity / specificity and mean P(positive) of the negatives with vs
                      without each artifact (Winkler et al. 2019, JAMA Dermatology 155(10):1135).
"""
from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd

from .errors import UndefinedMetricWarning
from .stats import Estimate, bootstrap_ci, proportion_ci

__all__ = ["odds_ratio_2x2", "corrected_v", "cramers_v", "monte_carlo_chi2_p", "prevalence", "association_strength",
           "one_vs_rest", "by_table", "diff_means_ci", "model_by_artifact", "fmt_p", "fmt_pct",
           "fmt_or"]

NAN = float("nan")


def odds_ratio_2x2(a: int, b: int, c: int, d: int, alpha: float = 0.05) -> dict:
    """Odds ratio of the 2×2 table [[a, b], [c, d]] (rows: group / rest; columns: artifact / none), its Woolf
    logit CI and Fisher's exact two-sided p (scipy.stats.fisher_exact on the raw counts).

    OR = a·d / (b·c); CI = exp(log OR ± z·sqrt(1/a + 1/b + 1/c + 1/d)). When any cell is 0, 0.5 is added to all
    four (Haldane–Anscombe) for the estimate and the CI (`corrected` True). E.g. (8, 2, 1, 9) → OR 36.
    Returns {value, lo, hi, p, corrected}.
    """
    from scipy.stats import fisher_exact, norm
    cells = [int(a), int(b), int(c), int(d)]
    if min(cells) < 0:
        raise ValueError(f"odds_ratio_2x2: expected non-negative counts, got {cells}")
    p = float(fisher_exact([[cells[0], cells[1]], [cells[2], cells[3]]], alternative="two-sided")[1])
    corrected = min(cells) == 0
    fa, fb, fc, fd = (x + 0.5 for x in cells) if corrected else map(float, cells)
    lor = math.log(fa * fd / (fb * fc))
    se = math.sqrt(1 / fa + 1 / fb + 1 / fc + 1 / fd)
    z = float(norm.ppf(1 - alpha / 2))
    return {"value": math.exp(lor), "lo": math.exp(lor - z * se), "hi": math.exp(lor + z * se), "p": p,
            "corrected": corrected}


def corrected_v(t: np.ndarray) -> np.ndarray:
    """Bias-corrected Cramér's V of B stacked r×c count tables (B×r×c → B), rows and columns with zero totals left
    out per table; NaN where fewer than two non-empty rows or columns remain (the formula of `cramers_v`)."""
    t = t.astype(np.float64)
    n = t.sum((1, 2))
    rs, cs = t.sum(2), t.sum(1)
    exp = rs[:, :, None] * cs[:, None, :] / np.maximum(n, 1)[:, None, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        chi2 = np.where(exp > 0, (t - exp) ** 2 / np.where(exp > 0, exp, 1), 0.0).sum((1, 2))
        r, c = (rs > 0).sum(1), (cs > 0).sum(1)
        phi2 = np.maximum(0.0, chi2 / n - (r - 1) * (c - 1) / (n - 1))
        denom = np.minimum(r - (r - 1) ** 2 / (n - 1), c - (c - 1) ** 2 / (n - 1)) - 1
        v = np.sqrt(phi2 / denom)
    return np.where((r >= 2) & (c >= 2) & (n >= 2) & (denom > 0), v, np.nan)


def cramers_v(table, n_mc: int = 4000, seed: int = 0, n_boot: int = 1000, alpha: float = 0.05) -> dict:
    """Cramér's V of an r×c contingency table with Pearson's χ² (scipy.stats.chi2_contingency, correction=False),
    bias-corrected.

    The plain V = sqrt(φ² / (min(r, c) − 1)), φ² = χ²/n, is inflated when groups are small: under independence
    E[φ²] ≈ (r−1)(c−1)/(n−1), so the plain V averages about 0.28 for 6 labels × present/absent at n = 60
    (tests/test_scan.py). `value` is Bergsma's
    (2013, J. Korean Stat. Soc. 42:323) correction:
    sqrt(max(0, φ² − (r−1)(c−1)/(n−1)) / min(r̃ − 1, c̃ − 1)),
    r̃ = r − (r−1)²/(n−1), c̃ likewise (R: rcompanion::cramerV(bias.correct = TRUE)); `uncorrected` is the
    plain V. Rows/columns with zero totals are dropped first; fewer than 2 left, or n < 2 →
    undefined (value NaN, note). lo, hi: percentile bootstrap CI of the corrected V (n_boot tables drawn
    multinomially from the observed cell shares, i.e. the images resampled; seeded; None when n_boot = 0).
    Returns {value, lo, hi, uncorrected, chi2, p, p_method, dof, n, note}. When more than 20 % of the
    expected counts are below 5, the χ² distribution does not hold (a small group can make the χ² p far too small): p is then
    the Monte Carlo p of the same statistic over `n_mc` tables with the observed margins (the exact conditional
    test, as R's chisq.test(simulate.p.value = TRUE); Hope 1968), p_method "monte carlo", and the note says so.
    """
    from scipy.stats import chi2_contingency
    t = np.asarray(table, dtype=np.float64)
    t = t[t.sum(1) > 0][:, t.sum(0) > 0] if t.size else t
    n = int(t.sum())
    if t.ndim != 2 or min(t.shape) < 2 or n < 2:
        return {"value": NAN, "lo": NAN, "hi": NAN, "uncorrected": NAN, "chi2": NAN, "p": NAN, "p_method": "",
                "dof": 0, "n": n, "note": "undefined: fewer than two non-empty rows or columns"}
    chi2, p, dof, exp = chi2_contingency(t, correction=False)
    r, c = t.shape
    v_plain = math.sqrt(chi2 / (n * (min(r, c) - 1)))
    phi2 = max(0.0, chi2 / n - (r - 1) * (c - 1) / (n - 1))
    denom = min(r - (r - 1) ** 2 / (n - 1), c - (c - 1) ** 2 / (n - 1)) - 1
    v = math.sqrt(phi2 / denom) if denom > 0 else NAN
    low = int((exp < 5).sum())
    note, method = "", "chi2"
    if low > 0.2 * exp.size:
        p, method = monte_carlo_chi2_p(t, chi2, exp, n_mc, seed), "monte carlo"
        note = (f"{low} of {exp.size} expected counts < 5: p by Monte Carlo over {n_mc} tables with the same "
                "margins (the χ² approximation does not hold)")
    lo = hi = None
    if n_boot > 0:
        draws = np.random.default_rng(seed).multinomial(n, (t / n).ravel(), size=n_boot).reshape(n_boot, r, c)
        vb = corrected_v(draws)
        vb = vb[np.isfinite(vb)]
        lo, hi = (float(x) for x in np.quantile(vb, [alpha / 2, 1 - alpha / 2])) if vb.size else (NAN, NAN)
    return {"value": float(v), "lo": lo, "hi": hi, "uncorrected": float(v_plain), "chi2": float(chi2), "p": float(p),
            "p_method": method, "dof": int(dof), "n": n, "note": note}


def monte_carlo_chi2_p(t: np.ndarray, chi2: float, exp: np.ndarray, n_mc: int, seed: int) -> float:
    """P(χ² ≥ observed) over random tables with the margins of `t` (r×c counts): the column labels of the n
    observations are permuted against their row labels, which draws tables from the exact conditional
    (multivariate hypergeometric) distribution; p = (1 + #{χ²* ≥ χ²}) / (1 + n_mc) (Davison & Hinkley 1997)."""
    r, c = t.shape
    counts = t.astype(np.int64).ravel()
    rows = np.repeat(np.repeat(np.arange(r), c), counts)
    cols = np.repeat(np.tile(np.arange(c), r), counts).astype(np.int16)
    rng = np.random.default_rng(seed)
    ge, done, chunk = 0, 0, max(1, min(n_mc, 2_000_000 // max(len(cols), 1)))
    while done < n_mc:
        b = min(chunk, n_mc - done)
        perm = rng.permuted(np.broadcast_to(cols, (b, len(cols))), axis=1)
        idx = rows[None, :] * c + perm + (np.arange(b) * r * c)[:, None]
        tabs = np.bincount(idx.ravel(), minlength=b * r * c).reshape(b, r, c)
        stat = ((tabs - exp) ** 2 / exp).sum(axis=(1, 2))
        ge += int((stat >= chi2 * (1 - 1e-9)).sum())
        done += b
    return (1 + ge) / (1 + n_mc)


def prevalence(k: int, n: int, min_n: int, alpha: float) -> dict:
    """Prevalence k/n with its Wilson CI; n < min_n → too small (value and CI NaN, k and n kept)."""
    if n < min_n:
        d = Estimate(NAN, NAN, NAN, n, True, None, f"too small (n={n} < {min_n})").to_dict()
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UndefinedMetricWarning)
            d = proportion_ci(k, n, alpha).to_dict()
    d["k"] = int(k)
    return d


def fmt_pct(x: float) -> str:
    return f"{100 * x:.0f}%"


def fmt_or(x: float) -> str:
    return "∞" if math.isinf(x) else (f"{x:.2g}" if x < 1 else f"{x:.1f}")


def association_strength(e: dict) -> tuple:
    """Sort key (ascending = strongest first): defined before too small/undefined, then the CI bound nearer
    OR = 1 on the log scale (0 when the CI spans 1), then |log OR|."""
    v, lo, hi = e["odds_ratio"]["value"], e["odds_ratio"]["lo"], e["odds_ratio"]["hi"]
    if e["too_small"] or not np.isfinite(v) or v <= 0:
        return (1, 0.0, 0.0)
    sep = max(0.0, math.log(lo), -math.log(hi))
    return (0, -sep, -abs(math.log(v)))


def one_vs_rest(labels: np.ndarray, pres: np.ndarray, artifact: str, classes: list[str], positive: str | None,
                  min_n: int, alpha: float) -> list[dict]:
    """One-vs-rest 2×2 analyses of one artifact (labels: str array without NA; pres: bool array)."""
    if len(classes) < 2:
        return []
    if len(classes) == 2:
        counts = {c: int((labels == c).sum()) for c in classes}
        first = positive if positive in classes else min(classes, key=lambda c: (counts[c], c))
        pairs = [(first, next(c for c in classes if c != first))]
    else:
        pairs = [(c, None) for c in classes]
    out = []
    for cls, other in pairs:
        g = labels == cls
        a, b = int((g & pres).sum()), int((g & ~pres).sum())
        c, d = int((~g & pres).sum()), int((~g & ~pres).sum())
        vs = other if other is not None else "the rest"
        n1, n0 = a + b, c + d
        e = {"artifact": artifact, "class": cls, "vs": vs, "table": [[a, b], [c, d]], "n_class": n1, "n_rest": n0,
             "prevalence_class": a / n1 if n1 else NAN, "prevalence_rest": c / n0 if n0 else NAN,
             "too_small": bool(min(n1, n0) < min_n), "note": ""}
        if e["too_small"]:
            e["odds_ratio"] = {"value": NAN, "lo": NAN, "hi": NAN, "p": NAN, "corrected": False}
            e["note"] = f"too small (n_{cls}={n1}, n_rest={n0}; min_n={min_n})"
            e["text"] = f"{artifact} × {cls}: too small ({cls} n={n1}, {vs} n={n0})"
        elif a + c == 0 or b + d == 0:
            e["odds_ratio"] = {"value": NAN, "lo": NAN, "hi": NAN, "p": 1.0, "corrected": False}
            e["note"] = "undefined: the artifact is " + ("never" if a + c == 0 else "always") + " present"
            e["text"] = f"{artifact} × {cls}: {e['note']}"
        else:
            o = odds_ratio_2x2(a, b, c, d, alpha)
            e["odds_ratio"] = o
            e["note"] = "Haldane–Anscombe 0.5 added (a zero cell)" if o["corrected"] else ""
            vs_w = vs if other is not None else "the other classes"
            e["text"] = (f"{artifact} in {fmt_pct(a / n1)} of {cls} ({a}/{n1}) vs {fmt_pct(c / n0)} of {vs_w} "
                         f"({c}/{n0}): OR {fmt_or(o['value'])} "
                         f"[{fmt_or(o['lo'])}, {fmt_or(o['hi'])}], Fisher p {'' if o['p'] <= 0 else '= '}{fmt_p(o['p'])}")
        out.append(e)
    return out


def by_table(keys: np.ndarray, pres: np.ndarray, min_n: int, alpha: float, n_boot: int = 1000,
              seed: int = 0) -> tuple[dict, dict]:
    """Prevalence per group and Cramér's V of group × artifact (keys: str array; pres: bool array)."""
    groups = sorted(pd.unique(keys), key=str)
    prev = {str(g): prevalence(int(pres[keys == g].sum()), int((keys == g).sum()), min_n, alpha) for g in groups}
    tab = [[int((pres & (keys == g)).sum()), int((~pres & (keys == g)).sum())] for g in groups]
    return prev, cramers_v(tab, seed=seed, n_boot=n_boot, alpha=alpha)


def diff_means_ci(x: np.ndarray, y: np.ndarray, n_boot: int, seed: int, alpha: float) -> tuple[float, float]:
    """Percentile bootstrap CI of mean(x) − mean(y), resampling each group independently (seeded)."""
    rng = np.random.default_rng(seed)

    def reps(v: np.ndarray) -> np.ndarray:
        out, rows = [], max(1, (1 << 20) // max(len(v), 1))
        for s in range(0, n_boot, rows):
            out.append(v[rng.integers(0, len(v), (min(rows, n_boot - s), len(v)))].mean(1))
        return np.concatenate(out)
    dif = reps(x) - reps(y)
    lo, hi = np.percentile(dif, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return float(lo), float(hi)


def model_by_artifact(df: pd.DataFrame, artifacts: list[str], positive: str | None, min_n: int, alpha: float,
                       n_boot: int, seed: int) -> dict:
    """Accuracy, sensitivity/specificity of `positive` and mean P(positive) of negatives, with vs without."""
    from scipy.stats import mannwhitneyu
    lab = df["label"].astype(object)
    ok = lab.notna().to_numpy() & df["pred"].notna().to_numpy()
    out = {}
    for a in artifacts:
        pres = df[f"present_{a}"].astype("boolean")
        known = ok & pres.notna().to_numpy()
        p = pres.fillna(False).to_numpy(dtype=bool)
        entry: dict = {"n_known": int(known.sum())}
        pneg: dict = {}
        for name, m in (("with", known & p), ("without", known & ~p)):
            sub = df[m]
            correct = (sub["label"].astype(str) == sub["pred"].astype(str)).to_numpy()
            e = {"n": int(m.sum()), "accuracy": prevalence(int(correct.sum()), len(sub), min_n, alpha)}
            if positive is not None:
                yp = (sub["label"].astype(str) == positive).to_numpy()
                pp = (sub["pred"].astype(str) == positive).to_numpy()
                e["sensitivity"] = prevalence(int((yp & pp).sum()), int(yp.sum()), min_n, alpha)
                e["specificity"] = prevalence(int((~yp & ~pp).sum()), int((~yp).sum()), min_n, alpha)
                v = (sub.loc[~yp, f"p_{positive}"].to_numpy(dtype=np.float64) if f"p_{positive}" in sub
                     else np.array([]))
                v = v[np.isfinite(v)]
                pneg[name] = v
                if len(v) < min_n:
                    e["mean_p_positive_neg"] = Estimate(NAN, NAN, NAN, len(v), True, None,
                                                        f"too small (n={len(v)} < {min_n})").to_dict()
                else:
                    lo, hi = bootstrap_ci(v, lambda s: s.mean(axis=1), n_boot=n_boot, seed=seed, alpha=alpha,
                                          vectorized=True)
                    e["mean_p_positive_neg"] = Estimate(float(v.mean()), lo, hi, len(v)).to_dict()
            entry[name] = e
        if positive is not None:
            x, y = pneg["with"], pneg["without"]
            if min(len(x), len(y)) < min_n:
                entry["diff_mean_p_positive_neg"] = Estimate(
                    NAN, NAN, NAN, len(x) + len(y), True, None,
                    f"too small (n_with={len(x)}, n_without={len(y)}; min_n={min_n})").to_dict()
            else:
                lo, hi = diff_means_ci(x, y, n_boot, seed, alpha)
                mw = mannwhitneyu(x, y, alternative="two-sided")
                entry["diff_mean_p_positive_neg"] = Estimate(float(x.mean() - y.mean()), lo, hi, len(x) + len(y),
                                                             False, float(mw.pvalue),
                                                             "with − without; p: Mann–Whitney U").to_dict()
            w, wo = entry["with"], entry["without"]

            def f(e):
                return "too small" if e["too_small"] else (
                    "n/a" if not np.isfinite(e["value"]) else f"{e['value']:.2f} [{e['lo']:.2f}, {e['hi']:.2f}]")
            entry["text"] = (f"{a}: specificity for {positive} {f(w['specificity'])} with vs "
                             f"{f(wo['specificity'])} without (n={w['n']} vs {wo['n']}); mean P({positive}) of "
                             f"negatives {f(w['mean_p_positive_neg'])} vs {f(wo['mean_p_positive_neg'])}")
        out[a] = entry
    return out


def fmt_p(p) -> str:
    """A p-value: 2 significant digits; one that underflowed to 0 in float64 reads "< 1e-300", not "0"."""
    if p is None:
        return "—"
    return "< 1e-300" if p <= 0 else f"{p:.2g}"
