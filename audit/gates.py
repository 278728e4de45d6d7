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

from .errors import ConfigError

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


def _entry(name, est, threshold, higher_is_better, note=""):
    v = None if est is None else est.get("value")
    ci = None if est is None or est.get("lo") is None else [est.get("lo"), est.get("hi")]
    passed = None if v is None else (v >= threshold if higher_is_better else v <= threshold)
    if est is not None and est.get("too_small"):
        note = (note + "; " if note else "") + f"too small (n={est.get('n')})"
    status = {True: "pass", False: "fail", None: "undefined"}[passed]
    return {"name": name, "value": v, "ci": ci, "threshold": threshold, "passed": passed, "status": status,
            "n": None if est is None else est.get("n"), "note": note or ("not measured" if v is None else "")}


def _fmt_gate(g: dict) -> str:
    v = g.get("value")
    if g.get("passed") is None:
        n = g.get("n")
        return g["name"] + (f" (n={n})" if n is not None else f" ({g.get('note') or 'not measured'})")
    op = "<" if g["passed"] is False and g["name"].startswith("min_") else ">"
    return f"{g['name']} {v:.3g} {op} {g['threshold']:g}"


def _passes(n: int, what: str) -> str:
    return f"the {n} {what}s pass" if n != 1 else f"the 1 {what} passes"


def decide_verdict(entries: list[dict], policy: str = "inconclusive") -> dict:
    """The verdict of gate entries under the undefined-gate policy, and what decided it.

    Returns {verdict: pass|fail|inconclusive|none, policy, n_pass, n_fail, n_undefined, decided_by: [gate names],
    headline: one sentence naming the deciding gates (with their values, or their n when undefined)}.
    Under "ignore", a set in which no gate could be measured is still inconclusive: nothing was checked.
    """
    if policy not in UNDEFINED_POLICIES:
        raise ConfigError(f"gates.{POLICY_KEY}: expected one of {', '.join(UNDEFINED_POLICIES)}, got {policy!r}")
    fails = [g for g in entries if g.get("passed") is False]
    undef = [g for g in entries if g.get("passed") is None]
    n_pass = len(entries) - len(fails) - len(undef)
    out = {"policy": policy, "n_pass": n_pass, "n_fail": len(fails), "n_undefined": len(undef)}

    def names(gs, k=6):
        s = ", ".join(_fmt_gate(g) for g in gs[:k])
        return s + (f" and {len(gs) - k} more" if len(gs) > k else "")

    if not entries:
        return {**out, "verdict": "none", "decided_by": [], "headline": "no sign-off gates configured"}
    und_txt = (f"{len(undef)} could not be measured: {names(undef)}") if undef else ""
    if fails:
        head = f"{len(fails)} of {len(entries)} gates fail: {names(fails)}"
        if undef:
            head += f"; {und_txt}"
        return {**out, "verdict": "fail", "decided_by": [g["name"] for g in fails], "headline": head}
    if undef and (policy != "ignore" or n_pass == 0):
        measured = _passes(n_pass, "measured gate") if n_pass else "no gate was measured"
        verdict = "fail" if policy == "fail" else "inconclusive"
        return {**out, "verdict": verdict, "decided_by": [g["name"] for g in undef],
                "headline": f"{measured}; {und_txt} (gates.undefined: {policy})"}
    head = (f"all {n_pass} gates pass" if n_pass > 1 else _passes(n_pass, "gate")) if not undef else (
        f"{_passes(n_pass, 'measured gate')}; {len(undef)} undefined ignored (gates.undefined: ignore): {names(undef)}")
    return {**out, "verdict": "pass", "decided_by": [], "headline": head}


def evaluate_gates(gates: dict, summary: dict, policy: str | None = None) -> tuple[list[dict], dict]:
    """(entries, verdict detail: see `decide_verdict`). `policy` (what an undefined gate does) defaults to the
    gates' own `undefined` key, else "inconclusive"."""
    gates, own = split_policy(gates)
    policy = policy or own or "inconclusive"
    out: list[dict] = []
    for name, t in gates.items():
        if name not in KNOWN and not name.startswith("min_sensitivity_at_"):
            raise ConfigError(f"gates.{name}: unknown gate; expected one of {', '.join(KNOWN)}, "
                              "min_sensitivity_at_<s>")
        if isinstance(t, dict):  # per finding: checked here, measured by a multi-label audit only
            for f, v in t.items():
                _check_threshold(name, v)
            if summary:
                out.append(_entry(name, None, 0.0, True, "per-finding thresholds need a multi-label audit"))
            continue
        t = _check_threshold(name, t)
        regions = summary.get("regions", {})
        if name == "min_median_target_frac":
            targets = {r: e for r, e in regions.items() if e["kind"] == "target"}
            if not targets:
                out.append(_entry(name, None, t, True, "no target region configured"))
            for r, e in targets.items():
                out.append(_entry(f"{name}[{r}]", e["stats"]["median_all"], t, True))
        elif name == "max_artifact_lift":
            arts = {r: e for r, e in regions.items() if e["kind"] == "artifact"}
            if not arts:
                out.append(_entry(name, None, t, False, "no artifact region configured"))
            for r, e in arts.items():
                out.append(_entry(f"{name}[{r}]", e.get("lift"), t, False))
        elif name.startswith("min_sensitivity_at_"):
            s = name[len("min_sensitivity_at_"):]
            pts = (summary.get("operating_points") or {}).get("points") or []
            pt = next((p for p in pts if abs(float(p["target_sensitivity"]) - float(s)) < 1e-9), None)
            out.append(_entry(name, None if pt is None else pt["sensitivity"], t, True,
                              "" if pt else f"no operating point for sensitivity {s} (positive class set?)"))
        elif name == "max_high_conf_error_rate":
            out.append(_entry(name, (summary.get("high_conf_errors") or {}).get("rate"), t, False))
        elif name == "max_counterfactual_flip_rate":
            cf = (summary.get("counterfactual") or {}).get("regions")
            if not cf:
                out.append(_entry(name, None, t, False, "counterfactual check not run (--counterfactual)"))
            for r, e in (cf or {}).items():
                out.append(_entry(f"{name}[{r}]", e.get("flip_rate"), t, False))
        elif name == "max_sanity_correlation":
            san = summary.get("sanity")
            est = None
            if san and san.get("gate_value") is not None:
                sp = (san.get("full_randomisation") or {}).get("spearman") or {}
                est = {"value": san["gate_value"], "lo": sp.get("lo"), "hi": sp.get("hi"), "n": sp.get("n")}
            out.append(_entry(name, est, t, False, "" if san else "sanity check not run (--sanity)"))
        elif name == "min_accuracy":
            out.append(_entry(name, summary.get("accuracy"), t, True))
        elif name == "min_auroc":
            out.append(_entry(name, None, t, True, "min_auroc is a multi-label (per finding) gate"))
    return out, decide_verdict(out, policy)
