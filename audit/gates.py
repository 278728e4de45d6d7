"""Sign-off gates: thresholds from the preset's `gates:` section checked against the summary → verdict.

Each gate is an entry {name, value, ci, threshold, passed, status, n, note}. A gate passes when its point
estimate is on the right side of the threshold (the CI is reported beside it so a reader sees how close the call
is). A configured gate that could not be measured (an artifact present in too few images, no positive class, no
counterfactual run, no target region) is *undefined*: `passed` is null, `status` "undefined", and its note says
why (with its n).

The verdict is three-valued (`decide_verdict`):
  fail          a measured gate failed (or, under `gates.undefined: fail`, a gate could not be measured);
  inconclusive  no measured gate failed but some could not be measured (the default policy): a model cannot be
                signed off on a check that was not made, and it has not failed one either. Exit code 3;
  pass          every gate passed (under `gates.undefined: ignore`: every measured gate passed, at least one).
  none          no gate is configured.
The policy is `gates.undefined: fail | inconclusive | ignore` in a preset (or `--undefined-gates`).

Supported gates (defaults in the presets; why in docs/audit.md, "Sign-off gates"):
  min_median_target_frac        each target region's median evidence fraction ≥ t
  max_artifact_lift             each artifact region's median lift (frac/area, over images where present) ≤ t
  min_sensitivity_at_<s>        sensitivity of the positive class at the threshold tuned for sensitivity s ≥ t
  max_high_conf_error_rate      share of images wrong with confidence ≥ high_conf ≤ t
  max_counterfactual_flip_rate  each artifact region's flip rate when the region is removed ≤ t
  min_accuracy                  top-1 accuracy ≥ t
  min_auroc                     AUROC ≥ t (multi-label audits, per finding; audit/multilabel.py)
  max_sanity_correlation        mean Spearman ρ between the maps of the trained and the fully randomised model ≤ t
                                (Adebayo et al. 2018: maps that survive randomisation say little about the model)
"""
from __future__ import annotations

import math

from .errors import ConfigError
from .stats import Estimate
from .summary_types import AuditSummary, Gate, VerdictDetail, estimate_from_json

KNOWN = ("min_median_target_frac", "max_artifact_lift", "max_high_conf_error_rate", "max_counterfactual_flip_rate",
         "min_accuracy", "max_sanity_correlation", "min_auroc")
# A multi-label audit also takes a gate as {finding: threshold} (audit/multilabel.py, evaluate_multilabel_gates).

#: What an undefined gate does to the verdict (`gates.undefined` in a preset; `--undefined-gates`).
UNDEFINED_POLICIES = ("fail", "inconclusive", "ignore")
POLICY_KEY = "undefined"


def split_policy(gates: dict | None, where: str = "gates") -> tuple[dict, str | None]:
    """(the gates without the policy key, the policy or None when not set); a bad policy is refused."""
    gates = dict(gates or {})
    pol = gates.pop(POLICY_KEY, None)
    if pol is not None and pol not in UNDEFINED_POLICIES:
        raise ConfigError(f"{where}.{POLICY_KEY}: expected one of {', '.join(UNDEFINED_POLICIES)}, got {pol!r}")
    return gates, pol


RANGES = {"min_median_target_frac": (0.0, 1.0), "max_artifact_lift": (0.0, float("inf")),
          "max_high_conf_error_rate": (0.0, 1.0), "max_counterfactual_flip_rate": (0.0, 1.0),
          "min_accuracy": (0.0, 1.0), "min_auroc": (0.0, 1.0), "max_sanity_correlation": (-1.0, 1.0), "min_sensitivity_at_": (0.0, 1.0)}


def _check_threshold(name: str, t) -> float:
    """The gate's threshold as a float, refused (one line naming the gate) when it is not a number or lies
    outside what its figure can take (a share in [0, 1], a lift ≥ 0, a correlation in [−1, 1]): such a gate
    would pass or fail every model whatever it does."""
    try:
        t = float(t)
    except (TypeError, ValueError):
        raise ConfigError(f"gates.{name}: expected a number, got {t!r}") from None
    key = "min_sensitivity_at_" if name.startswith("min_sensitivity_at_") else name
    lo, hi = RANGES.get(key, (-float("inf"), float("inf")))
    if not (lo <= t <= hi):  # NaN fails too
        want = f"≥ {lo:g}" if hi == float("inf") else f"in [{lo:g}, {hi:g}]"
        raise ConfigError(f"gates.{name}: expected a threshold {want}, got {t!r}")
    if key == "min_sensitivity_at_":
        s = name[len(key):]
        try:
            ok = 0.0 < float(s) < 1.0
        except ValueError:
            ok = False
        if not ok:
            raise ConfigError(f"gates.{name}: expected min_sensitivity_at_<s> with s a target sensitivity in "
                              f"(0, 1), e.g. min_sensitivity_at_0.90; got {s!r}")
    return t


def _entry(name: str, est: Estimate | dict | None, threshold: float, higher_is_better: bool, note: str = "") -> Gate:
    """One gate: `est` (an Estimate, or an estimate dict of a multi-label summary) against `threshold`; None, a
    NaN value or a too-small estimate is undefined."""
    if isinstance(est, dict):
        est = estimate_from_json(est, name)
    v = None if est is None or not math.isfinite(est.value) else float(est.value)
    ci = None if est is None or not math.isfinite(est.lo) else [float(est.lo), float(est.hi)]
    passed = None if v is None else bool(v >= threshold if higher_is_better else v <= threshold)
    if est is not None and est.too_small:
        note = (note + "; " if note else "") + f"too small (n={est.n})"
    status = {True: "pass", False: "fail", None: "undefined"}[passed]
    return Gate(name=name, value=math.nan if v is None else v, ci=ci, threshold=float(threshold), passed=passed,
                status=status, n=None if est is None else int(est.n),
                note=note or ("not measured" if v is None else ""))


def _fmt_gate(g: Gate) -> str:
    if g.passed is None:
        return g.name + (f" (n={g.n})" if g.n is not None else f" ({g.note or 'not measured'})")
    op = "<" if g.passed is False and g.name.startswith("min_") else ">"
    return f"{g.name} {g.value:.3g} {op} {g.threshold:g}"


def _passes(n: int, what: str) -> str:
    return f"the {n} {what}s pass" if n != 1 else f"the 1 {what} passes"


def decide_verdict(entries: list[Gate], policy: str = "inconclusive") -> VerdictDetail:
    """The verdict of gate entries under the undefined-gate policy, and what decided it.

    Returns a VerdictDetail: verdict (pass|fail|inconclusive|none), policy, n_pass, n_fail, n_undefined, decided_by
    (gate names), headline (one sentence naming the deciding gates, with their values or their n when undefined).
    Under "ignore", a set in which no gate could be measured is still inconclusive: nothing was checked.
    """
    if policy not in UNDEFINED_POLICIES:
        raise ConfigError(f"gates.{POLICY_KEY}: expected one of {', '.join(UNDEFINED_POLICIES)}, got {policy!r}")
    fails = [g for g in entries if g.passed is False]
    undef = [g for g in entries if g.passed is None]
    n_pass = len(entries) - len(fails) - len(undef)

    def out(verdict: str, decided: list[Gate], headline: str) -> VerdictDetail:
        return VerdictDetail(policy=policy, n_pass=n_pass, n_fail=len(fails), n_undefined=len(undef),
                             verdict=verdict, decided_by=[g.name for g in decided], headline=headline)

    def names(gs, k=6):
        s = ", ".join(_fmt_gate(g) for g in gs[:k])
        return s + (f" and {len(gs) - k} more" if len(gs) > k else "")

    if not entries:
        return out("none", [], "no sign-off gates configured")
    und_txt = (f"{len(undef)} could not be measured: {names(undef)}") if undef else ""
    if fails:
        head = f"{len(fails)} of {len(entries)} gates fail: {names(fails)}"
        if undef:
            head += f"; {und_txt}"
        return out("fail", fails, head)
    if undef and (policy != "ignore" or n_pass == 0):
        measured = _passes(n_pass, "measured gate") if n_pass else "no gate was measured"
        verdict = "fail" if policy == "fail" else "inconclusive"
        return out(verdict, undef, f"{measured}; {und_txt} (gates.undefined: {policy})")
    head = (f"all {n_pass} gates pass" if n_pass > 1 else _passes(n_pass, "gate")) if not undef else (
        f"{_passes(n_pass, 'measured gate')}; {len(undef)} undefined ignored (gates.undefined: ignore): {names(undef)}")
    return out("pass", [], head)


def evaluate_gates(gates: dict, summary: AuditSummary | None, policy: str | None = None
                   ) -> tuple[list[Gate], VerdictDetail]:
    """(entries, verdict detail: see `decide_verdict`) of the preset's gates against a summary; summary=None only
    checks the gates' names and thresholds (config validation). `policy` (what an undefined gate does) defaults to
    the gates' own `undefined` key, else "inconclusive"."""
    gates, own = split_policy(gates)
    policy = policy or own or "inconclusive"
    out: list[Gate] = []
    for name, t in gates.items():
        if name not in KNOWN and not name.startswith("min_sensitivity_at_"):
            raise ConfigError(f"gates.{name}: unknown gate; expected one of {', '.join(KNOWN)}, "
                              "min_sensitivity_at_<s>")
        if isinstance(t, dict):  # per finding: checked here, measured by a multi-label audit only
            for f, v in t.items():
                _check_threshold(name, v)
            if summary is not None:
                out.append(_entry(name, None, 0.0, True, "per-finding thresholds need a multi-label audit"))
            continue
        t = _check_threshold(name, t)
        if summary is None:
            continue
        if name in ("min_median_target_frac", "max_artifact_lift"):
            kind = "target" if name == "min_median_target_frac" else "artifact"
            sel = {r: e for r, e in summary.regions.items() if e.kind == kind}
            if not sel:
                out.append(_entry(name, None, t, kind == "target", f"no {kind} region configured"))
            for r, e in sel.items():
                out.append(_entry(f"{name}[{r}]", e.stats.get("median_all") if kind == "target" else e.lift, t,
                                  kind == "target"))
        elif name.startswith("min_sensitivity_at_"):
            s = name[len("min_sensitivity_at_"):]
            pts = summary.operating_points.points if summary.operating_points else []
            pt = next((p for p in pts if abs(p.target_sensitivity - float(s)) < 1e-9), None)
            out.append(_entry(name, None if pt is None else pt.sensitivity, t, True,
                              "" if pt else f"no operating point for sensitivity {s} (positive class set?)"))
        elif name == "max_high_conf_error_rate":
            out.append(_entry(name, summary.high_conf_errors.rate, t, False))
        elif name == "max_counterfactual_flip_rate":
            cf = summary.counterfactual.regions if summary.counterfactual else {}
            if not cf:
                out.append(_entry(name, None, t, False, "counterfactual check not run (--counterfactual)"))
            for r, e in cf.items():
                out.append(_entry(f"{name}[{r}]", e.flip_rate, t, False))
        elif name == "max_sanity_correlation":
            san = summary.sanity
            est = None
            if san and san.get("gate_value") is not None:
                sp = estimate_from_json((san.get("full_randomisation") or {}).get("spearman") or {})
                est = Estimate(float(san["gate_value"]), sp.lo, sp.hi, sp.n)
            out.append(_entry(name, est, t, False, "" if san else "sanity check not run (--sanity)"))
        elif name == "min_accuracy":
            out.append(_entry(name, summary.accuracy, t, True))
        elif name == "min_auroc":
            out.append(_entry(name, None, t, True, "min_auroc is a multi-label (per finding) gate"))
    return out, decide_verdict(out, policy)


def apply_gates(summary: AuditSummary, gates: dict, policy: str | None = None) -> None:
    """Evaluate `gates` on `summary` and set its gates, verdict and verdict_detail."""
    summary.gates, summary.verdict_detail = evaluate_gates(gates, summary, policy)
    summary.verdict = summary.verdict_detail.verdict
