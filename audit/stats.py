"""Dataset-level statistics of a per-region "fraction" score against correctness and confidence.

The fraction is any per-image score in a region, e.g. the share of positive Grad-CAM mass inside the lesion
(Σ cam·mask / Σ cam). The question asked is whether it differs between correct and incorrect predictions and
whether it tracks the model's confidence.

Conventions (every public function):
  * NaN in `frac` means "missing" (no mask, all-zero CAM): those rows are dropped and `n` counts valid rows only.
  * Every figure is an `Estimate`: value, a 95 % percentile-bootstrap (or Wilson) CI, n, and `too_small`.
  * A group with n < `min_n` is reported as too small: `too_small=True`, value and CI NaN, no number.
  * An undefined figure (empty group, constant input, a single class) is NaN plus an `UndefinedMetricWarning`,
    never a silent 0.
  * Bootstraps are seeded (`numpy.random.default_rng(seed)`), 1,000 resamples by default, percentile intervals
    (Efron & Tibshirani 1993, *An Introduction to the Bootstrap*, ch. 13).

Bootstrap speed: a chunk of resamples is an index matrix `idx` of shape (b, n) drawn with `rng.integers`; it is
turned into a multiplicity matrix `W` (b, n) (how often each row appears in each resample) so that means,
medians, mid-ranks, Spearman's ρ and the AUROC of all b resamples come out of a few cumulative sums over data
sorted once, without sorting each resample. The results equal those of computing each statistic on `x[idx[r]]`.
"""
from __future__ import annotations

import math
import re
import warnings
from dataclasses import asdict, dataclass
from typing import Callable, Iterator, Sequence

import numpy as np
import pandas as pd
from scipy import stats as _sps
from sklearn.metrics import roc_auc_score

from .errors import UndefinedMetricWarning

__all__ = ["Estimate", "bootstrap_ci", "region_stats", "grouped_region_stats", "proportion_ci", "small_text",
           "REGION_STATS", "TIDY_COLUMNS"]

NAN = float("nan")
_CHUNK_ELEMS = 1 << 18          # at most 262,144 resampled entries (b × n) per bootstrap chunk (~17 MB peak)

#: Names of the statistics `region_stats` returns, in order.
REGION_STATS = (
    "mean_all", "median_all", "spearman_conf_all",
    "mean_correct", "median_correct", "spearman_conf_correct",
    "mean_incorrect", "median_incorrect", "spearman_conf_incorrect",
    "diff_mean", "diff_median", "mannwhitney_u", "auroc_error",
)
#: Columns of the tidy table `grouped_region_stats` returns.
TIDY_COLUMNS = ("region", "group_col", "group", "n", "stat", "value", "lo", "hi", "too_small", "p", "note")


@dataclass
class Estimate:
    """One reported figure.

    value: the point estimate (NaN when too small or undefined). lo, hi: the CI bounds (NaN when not computed).
    n: the number of valid observations it rests on. too_small: n below `min_n` (value is then NaN).
    p: a p-value where a test goes with the figure (Mann–Whitney, Spearman), else None.
    note: why a value is NaN or how n splits (e.g. "n_correct=40, n_incorrect=7"); empty otherwise.
    """

    value: float
    lo: float = NAN
    hi: float = NAN
    n: int = 0
    too_small: bool = False
    p: float | None = None
    note: str = ""

    def to_dict(self) -> dict:
        """Plain-Python dict (floats, ints, bools, str, None): JSON-serialisable (NaN as float('nan'))."""
        d = asdict(self)
        for k in ("value", "lo", "hi"):
            d[k] = float(d[k])
        d["n"] = int(d["n"])
        d["too_small"] = bool(d["too_small"])
        d["p"] = None if d["p"] is None else float(d["p"])
        return d


# ----------------------------------------------------------------------------------------------------------------
# input checks

def _as_float_1d(name: str, x, allow_nan: bool = True) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D array, got shape {a.shape}; pass one value per image")
    if np.isinf(a).any() or (not allow_nan and np.isnan(a).any()):
        bad = "inf" if np.isinf(a).any() else "NaN"
        raise ValueError(f"{name}: contains {bad}; expected finite values"
                         + (" (NaN marks a missing value)" if allow_nan else ""))
    return a


def _as_bool_1d(name: str, x) -> np.ndarray:
    a = np.asarray(x)
    if a.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D array, got shape {a.shape}; pass one value per image")
    if a.dtype != bool:
        if a.size and not np.isin(a, (0, 1)).all():
            raise ValueError(f"{name}: expected booleans (or 0/1), got values such as "
                             f"{a[~np.isin(a, (0, 1))][:3].tolist()}")
        a = a.astype(bool)
    return a


def _same_length(**arrays: np.ndarray) -> int:
    lengths = {k: len(v) for k, v in arrays.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"inputs differ in length: {lengths}; expected one value per image in each")
    return next(iter(lengths.values()))


def _undefined(msg: str) -> None:
    warnings.warn(msg, UndefinedMetricWarning, stacklevel=3)


# ----------------------------------------------------------------------------------------------------------------
# bootstrap machinery

def _index_chunks(rng: np.random.Generator, n: int, n_boot: int) -> Iterator[np.ndarray]:
    """Yield int64 index matrices of shape (b, n), b summing to n_boot; chunked to bound memory."""
    rows = max(1, _CHUNK_ELEMS // max(n, 1))
    for start in range(0, n_boot, rows):
        yield rng.integers(0, n, size=(min(rows, n_boot - start), n))


def _counts(idx: np.ndarray, n: int) -> np.ndarray:
    """Multiplicities W (b, n) float64 of an index matrix idx (b, n): W[r, i] = #{j: idx[r, j] == i}."""
    b = idx.shape[0]
    flat = (np.arange(b, dtype=np.int64)[:, None] * n + idx).ravel()
    return np.bincount(flat, minlength=b * n).reshape(b, n).astype(np.float64)


def _percentile_ci(reps: np.ndarray, alpha: float) -> tuple[float, float]:
    """Percentile interval of the finite replicates (non-finite ones, e.g. a resample with one class, dropped)."""
    reps = np.asarray(reps, dtype=np.float64)
    reps = reps[np.isfinite(reps)]
    if reps.size == 0:
        return NAN, NAN
    lo, hi = np.percentile(reps, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return float(lo), float(hi)


def bootstrap_ci(x, stat_fn: Callable, n_boot: int = 1000, seed: int = 0, alpha: float = 0.05,
                 vectorized: bool = False) -> tuple[float, float]:
    """Percentile bootstrap CI (lo, hi) of `stat_fn` over rows of `x`.

    x: a 1-D array (n,), or a tuple of equal-length arrays resampled jointly (paired data, e.g. (frac, conf)).
    stat_fn: called as stat_fn(*resampled_arrays). With vectorized=False each argument has shape (n,) and it
    returns a scalar; with vectorized=True each has shape (b, n) (b resamples at once) and it returns (b,),
    e.g. `lambda a: a.mean(axis=1)`.
    Resampling: `numpy.random.default_rng(seed)`, n_boot resamples of size n with replacement; the interval is
    the [alpha/2, 1 − alpha/2] percentiles of the finite replicates. Empty input → (NaN, NaN) and an
    UndefinedMetricWarning.
    """
    arrays = tuple(np.asarray(a) for a in x) if isinstance(x, tuple) else (np.asarray(x),)
    n = _same_length(**{f"x[{i}]": a for i, a in enumerate(arrays)})
    if not 0 < alpha < 1:
        raise ValueError(f"alpha: expected a value in (0, 1), got {alpha}")
    if n == 0 or n_boot <= 0:
        if n == 0:
            _undefined("bootstrap_ci: empty input; the interval is NaN")
        return NAN, NAN
    rng = np.random.default_rng(seed)
    reps = []
    for idx in _index_chunks(rng, n, n_boot):
        if vectorized:
            r = np.asarray(stat_fn(*(a[idx] for a in arrays)), dtype=np.float64).reshape(len(idx))
        else:
            r = np.array([stat_fn(*(a[row] for a in arrays)) for row in idx], dtype=np.float64)
        reps.append(r)
    return _percentile_ci(np.concatenate(reps), alpha)


class _Sorted:
    """x sorted once (ascending, stable) with its blocks of ties, for weighted statistics of resamples."""

    def __init__(self, x: np.ndarray):
        self.order = np.argsort(x, kind="stable")
        self.inverse = np.argsort(self.order)
        self.xs = x[self.order]
        last = np.r_[self.xs[1:] != self.xs[:-1], True]
        self.ties = not last.all()
        self.ends = np.flatnonzero(last)                           # index of the last member of each tie block
        self.block = np.r_[0, np.cumsum(last[:-1])]                # tie block of each sorted position

    def cumweights(self, W: np.ndarray) -> np.ndarray:
        """Cumulative multiplicities (b, n) along the sorted order."""
        return np.cumsum(W[:, self.order], axis=1)

    def midranks(self, cw: np.ndarray) -> np.ndarray:
        """Mid-ranks (b, n), original row order, of x within each resample, from `cumweights` cw (b, n).

        A resample repeating row i w times gives all copies (and all ties) the same average rank, as
        scipy.stats.rankdata(method="average") does."""
        if self.ties:
            cw = cw[:, self.ends]                                  # weight up to the end of each tie block
        start = np.concatenate([np.zeros((len(cw), 1)), cw[:, :-1]], axis=1)
        rank = start + (cw - start + 1.0) / 2.0                    # average rank of the block's members
        if self.ties:
            rank = rank[:, self.block]
        return rank[:, self.inverse]

    def median(self, cw: np.ndarray) -> np.ndarray:
        """np.median (b,) of each resample: order statistics k = n//2 (+1) found on cumulative weights cw."""
        n = int(round(cw[0, -1]))
        def kth(k: int) -> np.ndarray:                             # k-th smallest (1-based) of each resample
            return self.xs[(cw < k).sum(axis=1)]
        return kth((n + 1) // 2) if n % 2 else (kth(n // 2) + kth(n // 2 + 1)) / 2.0


def _weighted_pearson(W: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson r (b,) of a, b (b, n) over resamples with multiplicities W; NaN where either is constant."""
    n = W.sum(axis=1, keepdims=True)
    da = a - (W * a).sum(axis=1, keepdims=True) / n
    db = b - (W * b).sum(axis=1, keepdims=True) / n
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (W * da * db).sum(axis=1) / np.sqrt((W * da * da).sum(axis=1) * (W * db * db).sum(axis=1))
    return np.clip(r, -1.0, 1.0)


def _weighted_auroc(W: np.ndarray, ranks: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """AUROC (b,) = U / (n_pos n_neg) (Mann & Whitney 1947; Hanley & McNeil 1982) from mid-ranks of the score."""
    wp = W * pos
    n_pos = wp.sum(axis=1)
    n_neg = W.sum(axis=1) - n_pos
    u = (wp * ranks).sum(axis=1) - n_pos * (n_pos + 1) / 2.0
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where((n_pos > 0) & (n_neg > 0), u / (n_pos * n_neg), np.nan)


def _group_replicates(rng: np.random.Generator, x: np.ndarray, q: np.ndarray, n_boot: int,
                      err: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Bootstrap replicates (n_boot,) of mean, median, Spearman(x, q) and, if err is given, AUROC(err, x)."""
    n = len(x)
    sx, sq = _Sorted(x), _Sorted(q)
    out: dict[str, list] = {"mean": [], "median": [], "spearman": [], "auroc": []}
    for idx in _index_chunks(rng, n, n_boot):
        W = _counts(idx, n)
        out["mean"].append(W @ x / n)
        cw = sx.cumweights(W)
        out["median"].append(sx.median(cw))
        rx = sx.midranks(cw)
        out["spearman"].append(_weighted_pearson(W, rx, sq.midranks(sq.cumweights(W))))
        if err is not None:
            out["auroc"].append(_weighted_auroc(W, rx, err))
    return {k: np.concatenate(v) for k, v in out.items() if v}


# ----------------------------------------------------------------------------------------------------------------
# public statistics

def _ece_rows(conf: np.ndarray, correct: np.ndarray, n_bins: int) -> np.ndarray:
    """ECE of each row of (b, n) arrays: (1/n) Σ_bins |Σ_{i in bin} (correct_i − conf_i)| (the same as
    Σ_b (n_b/n)·|accuracy_b − mean confidence_b|)."""
    b, n = conf.shape
    idx = np.clip(np.digitize(conf, np.linspace(0.0, 1.0, n_bins + 1)[1:-1]), 0, n_bins - 1)
    flat = (idx + n_bins * np.arange(b)[:, None]).ravel()
    sums = np.bincount(flat, weights=(correct - conf).ravel(), minlength=b * n_bins).reshape(b, n_bins)
    return np.abs(sums).sum(axis=1) / n


def expected_calibration_error(confidence, correct, n_boot: int = 1000, seed: int = 0, min_n: int = 10,
                               n_bins: int = 10, alpha: float = 0.05) -> Estimate:
    """Expected calibration error of the top-1 confidence (Guo et al. 2017): Σ_b (n_b/N)·|accuracy_b − mean
    confidence_b| over `n_bins` equal-width bins of [0, 1] (the last closed), in [0, 1]; percentile bootstrap
    CI over images. NaN confidences are left out. The binned plug-in estimate is biased upward at small n
    (Kumar et al. 2019): a perfectly calibrated model with confidences uniform on [0.5, 1] reads about 0.10 at
    n = 50 and 0.05 at n = 200 (see `ece_if_calibrated` for the figure with the observed confidences)."""
    conf = _as_float_1d("confidence", confidence)
    ok = _as_bool_1d("correct", correct)
    _same_length(confidence=conf, correct=ok)
    keep = np.isfinite(conf)
    conf, ok = conf[keep], ok[keep].astype(np.float64)
    n = len(conf)
    if n < max(min_n, 1):
        _undefined(f"ECE: too small (n={n} < {min_n})")
        return Estimate(NAN, n=n, too_small=True, note=f"too small (n={n} < {min_n})")
    value = float(_ece_rows(conf[None], ok[None], n_bins)[0])
    lo, hi = bootstrap_ci((conf, ok), lambda c, k: _ece_rows(c, k, n_bins), n_boot=n_boot, seed=seed,
                          alpha=alpha, vectorized=True)
    return Estimate(value, lo, hi, n, note=f"{n_bins} equal-width bins")


def ece_if_calibrated(confidence, n_bins: int = 10, n_sim: int = 200, seed: int = 0) -> float:
    """The ECE a perfectly calibrated model with these top-1 confidences would read on average: each image
    correct with probability equal to its confidence, `n_sim` draws; the plug-in estimator's floor at this n
    (NaN for no finite confidence). Compare `expected_calibration_error` with it, not with 0."""
    conf = _as_float_1d("confidence", confidence)
    conf = conf[np.isfinite(conf)]
    if not len(conf):
        return NAN
    rng = np.random.default_rng(seed)
    rows = max(1, _CHUNK_ELEMS // len(conf))  # draws in chunks of rows: memory flat in N, the same random stream
    eces = []
    for start in range(0, n_sim, rows):
        c = np.broadcast_to(conf, (min(rows, n_sim - start), len(conf)))
        eces.append(_ece_rows(c, (rng.random(c.shape) < c).astype(np.float64), n_bins))
    return float(np.concatenate(eces).mean())


def proportion_ci(k: int, n: int, alpha: float = 0.05) -> Estimate:
    """Wilson score interval of a proportion k/n (Wilson 1927, JASA 22:209; Brown, Cai & DasGupta 2001).

    For rates: accuracy, flip rates, sensitivity, specificity, PPV, NPV. Returns Estimate(value=k/n, lo, hi, n);
    lo, hi in [0, 1]: (p̂ + z²/2n ± z·sqrt(p̂(1−p̂)/n + z²/4n²)) / (1 + z²/n), z = Φ⁻¹(1 − alpha/2).
    E.g. k=8, n=10 → 0.8 [0.4902, 0.9433]. n = 0 → NaN and an UndefinedMetricWarning.
    """
    if int(k) != k or int(n) != n or not 0 <= k <= n:
        raise ValueError(f"proportion_ci: expected integers 0 <= k <= n, got k={k}, n={n}")
    k, n = int(k), int(n)
    if n == 0:
        _undefined("proportion_ci: n = 0 (empty denominator); the rate is NaN")
        return Estimate(NAN, NAN, NAN, 0, False, None, "n = 0")
    z = float(_sps.norm.ppf(1 - alpha / 2))
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    lo = 0.0 if k == 0 else max(0.0, centre - half)           # exact bounds at k = 0 and k = n
    hi = 1.0 if k == n else min(1.0, centre + half)
    return Estimate(p, lo, hi, n)


def region_stats(frac, correct, confidence, n_boot: int = 1000, seed: int = 0, min_n: int = 10,
                 alpha: float = 0.05) -> dict[str, Estimate]:
    """Statistics of one region's fraction score against correctness and confidence.

    frac: (n,) float, NaN = missing (dropped). correct: (n,) bool, the prediction was right.
    confidence: (n,) float in [0, 1], e.g. the top-1 softmax probability.
    Returns {name: Estimate} with the names in `REGION_STATS`:
      mean_/median_{all,correct,incorrect}: mean and median fraction with bootstrap CIs;
      spearman_conf_{all,correct,incorrect}: Spearman ρ(frac, confidence) (scipy.stats.spearmanr; p = its
        two-sided p), bootstrap CI resampling (frac, confidence) pairs;
      diff_mean, diff_median: correct − incorrect, CI by resampling within each group independently;
      mannwhitney_u: U of the correct group (scipy.stats.mannwhitneyu(frac_correct, frac_incorrect,
        alternative="two-sided"); p its p). U is a test statistic with no CI (lo, hi NaN); its effect size
        is auroc_error = 1 − U / (n_correct · n_incorrect);
      auroc_error: ROC AUC of the fraction for telling errors (positive class) from correct predictions
        (sklearn roc_auc_score; > 0.5: errors have the higher fraction), bootstrap CI over images.
    Too small: a one-group figure whose group has n < min_n; a two-group figure (diff_*, mannwhitney_u,
    auroc_error) where either group has n < min_n. Its value is NaN, too_small=True; n is still reported.
    Undefined (n = 0, constant input): NaN and one UndefinedMetricWarning naming the figures.
    The resamples of each group are shared by its statistics (one `default_rng(seed)` stream, groups drawn in
    the order all, correct, incorrect).
    """
    frac = _as_float_1d("frac", frac)
    correct = _as_bool_1d("correct", correct)
    conf = _as_float_1d("confidence", confidence, allow_nan=False)
    _same_length(frac=frac, correct=correct, confidence=conf)
    if conf.size and (conf.min() < 0 or conf.max() > 1):
        raise ValueError(f"confidence: expected probabilities in [0, 1], got range [{conf.min()}, {conf.max()}]")
    if min_n < 1 or n_boot < 0:
        raise ValueError(f"min_n: expected >= 1 (got {min_n}); n_boot: expected >= 0 (got {n_boot})")

    keep = np.isfinite(frac)
    x, c, q = frac[keep], correct[keep], conf[keep]
    rng = np.random.default_rng(seed)
    out: dict[str, Estimate] = {}
    undefined: list[str] = []
    reps: dict[str, dict[str, np.ndarray]] = {}
    data = {"all": (x, q), "correct": (x[c], q[c]), "incorrect": (x[~c], q[~c])}

    for g, (xg, qg) in data.items():
        n = len(xg)
        if n < min_n:
            note = f"too small (n={n} < min_n={min_n})"
            if n == 0:
                undefined += [f"mean_{g}", f"median_{g}", f"spearman_conf_{g}"]
            for s in ("mean", "median", "spearman_conf"):
                out[f"{s}_{g}"] = Estimate(NAN, NAN, NAN, n, True, None, note)
            continue
        r = _group_replicates(rng, xg, qg, n_boot, err=~c if g == "all" else None) if n_boot else {}
        reps[g] = r
        ci = (lambda k: _percentile_ci(r[k], alpha)) if n_boot else (lambda _k: (NAN, NAN))
        out[f"mean_{g}"] = Estimate(float(np.mean(xg)), *ci("mean"), n)
        out[f"median_{g}"] = Estimate(float(np.median(xg)), *ci("median"), n)
        if np.ptp(xg) == 0 or np.ptp(qg) == 0:
            undefined.append(f"spearman_conf_{g}")
            out[f"spearman_conf_{g}"] = Estimate(NAN, NAN, NAN, n, False, None, "constant input")
        else:
            res = _sps.spearmanr(xg, qg)
            out[f"spearman_conf_{g}"] = Estimate(float(res.statistic), *ci("spearman"), n, False,
                                                 float(res.pvalue))

    n_c, n_i = int(c.sum()), int((~c).sum())
    n_tot, split = n_c + n_i, _split_note(n_c, n_i)
    two = ("diff_mean", "diff_median", "mannwhitney_u", "auroc_error")
    if min(n_c, n_i) < min_n or len(x) < min_n:
        if min(n_c, n_i) == 0:
            undefined += list(two)
        for s in two:
            out[s] = Estimate(NAN, NAN, NAN, n_tot, True, None, f"too small ({split}; min_n={min_n})")
    else:
        xc, xi = x[c], x[~c]
        def dci(k: str) -> tuple[float, float]:
            return _percentile_ci(reps["correct"][k] - reps["incorrect"][k], alpha) if n_boot else (NAN, NAN)
        out["diff_mean"] = Estimate(float(xc.mean() - xi.mean()), *dci("mean"), n_tot, note=split)
        out["diff_median"] = Estimate(float(np.median(xc) - np.median(xi)), *dci("median"), n_tot, note=split)
        mw = _sps.mannwhitneyu(xc, xi, alternative="two-sided")
        out["mannwhitney_u"] = Estimate(float(mw.statistic), NAN, NAN, n_tot, False, float(mw.pvalue),
                                        split + "; U of the correct group")
        auc = float(roc_auc_score(~c, x))
        lo, hi = _percentile_ci(reps["all"]["auroc"], alpha) if n_boot else (NAN, NAN)
        out["auroc_error"] = Estimate(auc, lo, hi, n_tot, note=split + "; errors are the positive class")

    if undefined:
        _undefined(f"region_stats: undefined (NaN): {', '.join(undefined)} "
                   f"(n_valid={len(x)}, {split}; empty group or constant input)")
    return {k: out[k] for k in REGION_STATS}


_SPLIT = re.compile(r"n_correct=(\d+), n_incorrect=(\d+)")


def _split_note(n_c: int, n_i: int) -> str:
    """How a correct-vs-wrong figure's note states its groups; `small_text` reads it back with `_SPLIT`."""
    return f"n_correct={n_c}, n_incorrect={n_i}"


def small_text(e) -> str:
    """How a too-small estimate (an `Estimate`, its dict or a tidy row) is shown: "small n=7"; for a
    correct-vs-wrong figure (diff_*, auroc_error: its note holds the split) the short group is named instead of
    the total, which may be large: "no errors", "small: 3 wrong", "none correct", "small: 4 correct"."""
    if isinstance(e, Estimate):
        e = e.to_dict()
    m = _SPLIT.search(str(e.get("note") or ""))
    if m:
        n_c, n_i = int(m.group(1)), int(m.group(2))
        if n_c + n_i == 0:  # no image with a value (e.g. every map all-zero): nothing was split
            return "small n=0"
        if n_i <= n_c:
            return "no errors" if n_i == 0 else f"small: {n_i} wrong"
        return "none correct" if n_c == 0 else f"small: {n_c} correct"
    try:
        n = str(int(float(e.get("n"))))
    except (TypeError, ValueError, OverflowError):
        n = "?"
    return f"small n={n}"



def is_finite(v) -> bool:
    """Whether v is a finite number (None, NaN, ±inf and non-numbers are not)."""
    try:
        return v is not None and math.isfinite(float(v))
    except (TypeError, ValueError):
        return False


def fmt_estimate(e, pct: bool = False, digits: int = 2, compact: bool = False, sign: bool = False,
                 sep: str = ",") -> str:
    """The one way an estimate is written, in the terminal, report.html, the scan and compare: "0.61 [0.58,0.64]".

    e: an Estimate, or its dict {value, lo, hi, n, too_small, note} (a bare number is written alone; None → "—"). Too
    small → `small_text` ("small n=7", "no errors"); value undefined (None, NaN) → "n/a"; the CI only when both
    bounds are finite. pct: "61%"; compact: ".61" for narrow cells; sign: "+0.125"; sep: between the bounds
    ("," in the terminal, ", " in HTML)."""
    if e is None:
        return "—"
    if isinstance(e, Estimate):
        e = e.to_dict()

    def f(x) -> str:
        x = float(x)
        if pct:
            return f"{100 * x:.0f}%"
        if sign:
            return f"{x:+.{digits}f}"
        t = f"{x:.{digits}f}"
        return t.replace("0.", ".", 1) if compact and t.startswith(("0.", "-0.")) else t

    if not isinstance(e, dict):
        try:
            return f(e) if is_finite(e) else "n/a"
        except (TypeError, ValueError):
            return str(e)
    if e.get("too_small"):
        return small_text(e)
    if not is_finite(e.get("value")):
        return "n/a"
    lo, hi = e.get("lo"), e.get("hi")
    ci = f" [{f(lo)}{sep}{f(hi)}]" if is_finite(lo) and is_finite(hi) else ""
    return f(e["value"]) + ci

def group_keys(values: pd.Series) -> pd.Series:
    """A metadata column as group names (str), a missing value as the group "<missing>"."""
    return values.astype(object).where(values.notna(), "<missing>").astype(str)


def grouped_region_stats(df: pd.DataFrame, region_cols: Sequence[str], by: str | Sequence[str] | None,
                         correct_col: str = "correct", confidence_col: str = "confidence",
                         n_boot: int = 1000, seed: int = 0, min_n: int = 10, alpha: float = 0.05,
                         include_overall: bool = True) -> pd.DataFrame:
    """`region_stats` per region × per group, as a tidy table (one row per region, group and statistic).

    df: one row per image with the region fraction columns `region_cols` (float, NaN = missing), a bool
    `correct_col` and a float `confidence_col`. by: a column (or several, each grouped on separately) whose
    values define the groups, e.g. "label" or a metadata column "sex"; missing values form the group
    "<missing>". include_overall adds the whole set as group_col = group = "(all)".
    Returns a DataFrame with columns TIDY_COLUMNS = (region, group_col, group, n, stat, value, lo, hi,
    too_small, p, note); groups with n < min_n have too_small=True and NaN values. The UndefinedMetricWarnings of
    the individual groups are collected into one warning.
    """
    by_cols = [] if by is None else ([by] if isinstance(by, str) else list(by))
    region_cols = [region_cols] if isinstance(region_cols, str) else list(region_cols)
    missing = [col for col in [*region_cols, *by_cols, correct_col, confidence_col] if col not in df.columns]
    if missing:
        raise ValueError(f"grouped_region_stats: column(s) {missing} not in the table; "
                         f"available: {list(df.columns)}")
    parts: list[tuple[str, object, np.ndarray]] = []
    if include_overall:
        parts.append(("(all)", "(all)", np.ones(len(df), bool)))
    for col in by_cols:
        keys = df[col].astype(object).where(df[col].notna(), "<missing>").to_numpy()
        for g in sorted(pd.unique(keys), key=str):
            parts.append((col, g, keys == g))

    rows: list[dict] = []
    undefined = 0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UndefinedMetricWarning)
        for region in region_cols:
            frac = df[region].to_numpy(dtype=np.float64, na_value=np.nan)
            corr, conf = df[correct_col].to_numpy(), df[confidence_col].to_numpy(dtype=np.float64)
            for col, g, m in parts:
                res = region_stats(frac[m], corr[m], conf[m], n_boot=n_boot, seed=seed, min_n=min_n, alpha=alpha)
                for stat, e in res.items():
                    rows.append({"region": region, "group_col": col, "group": g, "n": e.n, "stat": stat,
                                 "value": e.value, "lo": e.lo, "hi": e.hi, "too_small": e.too_small,
                                 "p": NAN if e.p is None else e.p, "note": e.note})
    for w in caught:
        if issubclass(w.category, UndefinedMetricWarning):
            undefined += 1
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    if undefined:
        _undefined(f"grouped_region_stats: {undefined} region × group combination(s) have undefined (NaN) "
                   "figures (empty group or constant input)")
    return pd.DataFrame(rows, columns=list(TIDY_COLUMNS))
