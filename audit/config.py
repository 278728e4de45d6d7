"""One typed config for an audit, resolved once: CLI options > YAML preset (`audit:` section) > defaults; and the
preset files themselves (`load_preset`: one YAML per dataset, configs/*.yaml, every section checked).

The resolved config is written into every output folder (`config.resolved.yaml`) with the run's own config and
the package versions, so a report says everything that decided its numbers.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import yaml

from .errors import ConfigError


@dataclass
class AuditConfig:
    """Options of an audit: `audit.run_audit(..., **options)` and `cli.py audit` (`python cli.py audit --help`).

    Validated on construction (`_validate`): a bad value raises ConfigError (a ValueError) naming the parameter,
    e.g. "batch_size: expected a positive integer, got 0"; its `.param` is the field name."""

    run_dir: str | None = None
    arch: str | None = None
    source: str | None = None
    classes: list[str] | None = None
    checkpoint: str | None = None
    data: str | None = None
    split: str | None = None
    out: str | None = None
    layer: str | None = None
    target: str = "pred"
    batch_size: int = 32
    device: str = "cpu"
    limit: int | None = None
    workers: int = field(default_factory=lambda: min(4, max(0, (os.cpu_count() or 1) - 1)))
    preset: str | None = None
    positive: str | None = None
    by: list[str] = field(default_factory=list)
    seed: int = 0
    n_boot: int = 1000
    min_n: int = 10
    high_conf: float = 0.9
    hit_tolerance: int = 0
    off_target_frac: float = 0.5
    artifact_lift: float = 3.0
    counterfactual: bool = False
    discover: bool = False
    sanity: bool = False
    sanity_n: int = 32
    amp: str | None = None  # None (fp32), "bf16", "fp16"
    channels_last: bool = True  # NHWC model and inputs (faster convolutions on CPU and CUDA; benchmarks/speed.py)
    fold_bn: bool = True  # fold eval-mode BatchNorm into the convolution before it (audit/fold.py; same outputs)
    cache: bool = True
    sensitivities: list[float] = field(default_factory=lambda: [0.80, 0.90, 0.95])
    findings: list[str] | None = None  # multi-label: the findings audited (default all; audit/multilabel.py)
    maps: str = "needed"  # multi-label: "needed" (positive in truth or prediction) or "all" (image, finding) maps
    uncertain: str | None = None  # multi-label: how a label -1 is read (ignore | zeros | ones; default the run's)
    undefined_gates: str | None = None  # what a gate that could not be measured does: fail | inconclusive | ignore
    #                                     (default: the preset's gates.undefined, else inconclusive; audit/gates.py)
    # from the preset
    regions: dict = field(default_factory=dict)
    data_spec: dict = field(default_factory=dict)
    preset_input: dict = field(default_factory=dict)  # the preset's grid for scan/masks; the audit uses the run's
    gates: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        _validate(self)

    def to_dict(self) -> dict:
        return asdict(self)


AUDIT_KEYS = {f.name for f in fields(AuditConfig)} - {"regions", "data_spec", "gates", "preset_input"}


_TYPES = {f.name: str(f.type) for f in fields(AuditConfig)}


def audit_value(key: str, v, preset: str | Path | None = None) -> object:
    """A preset's `audit.<key>` value checked against the field's type (ints stay ints; a float field takes an
    int); one line naming the file and the key otherwise."""
    t = _TYPES.get(key, "")
    optional = t.endswith("| None")
    base = t.replace(" | None", "")
    if v is None and optional:
        return v
    num = lambda x: isinstance(x, (int, float)) and not isinstance(x, bool)  # noqa: E731
    if base == "str" and num(v):  # a class named 1 written unquoted: the name is the text
        v = str(v)
    if base == "list[str]" and isinstance(v, list) and all(num(x) or isinstance(x, str) for x in v):
        v = [str(x) for x in v]
    ok, what = {
        "int": (isinstance(v, int) and not isinstance(v, bool), "an integer"),
        "float": (num(v), "a number"),
        "bool": (isinstance(v, bool), "true or false"),
        "str": (isinstance(v, str), "a string"),
        "list[str]": (isinstance(v, list) and all(isinstance(x, str) for x in v), "a list of strings"),
        "list[float]": (isinstance(v, list) and all(num(x) for x in v), "a list of numbers"),
    }.get(base, (True, ""))
    if not ok:
        raise ConfigError(f"{preset + ': ' if preset else ''}audit.{key}: expected {what}"
                          f"{' or null' if optional else ''}, got {v!r}")
    return float(v) if base == "float" else v


def resolve_config(cli: dict, preset: str | Path | None = None) -> AuditConfig:
    """Merge CLI options (None = not given) over the preset's `audit:` section over the defaults."""
    merged: dict = {}
    pre: dict = {}
    if preset:
        pre = load_preset(preset)
        # keys and values were checked by load_preset; audit_value also coerces (an int to a float field)
        merged.update({k: audit_value(k, v, str(preset)) for k, v in (pre.get("audit") or {}).items()})
        merged["regions"] = pre.get("regions") or {}
        merged["data_spec"] = pre.get("data") or {}
        merged["preset_input"] = pre.get("input") or {}
        merged["gates"] = pre.get("gates") or {}
        merged["preset"] = str(preset)
    for k, v in cli.items():
        if k not in AUDIT_KEYS:
            raise ConfigError(f"unknown option {k!r}", param=k)
        if v is not None and not (isinstance(v, (list, tuple)) and len(v) == 0 and k == "by"):
            merged[k] = v
    cfg = AuditConfig(**merged)
    if "max_counterfactual_flip_rate" in (cfg.gates or {}):
        cfg.counterfactual = True  # a gate cannot be checked on a measurement that was not made
    if "max_sanity_correlation" in (cfg.gates or {}):
        cfg.sanity = True
    return cfg


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _expect(ok: bool, param: str, what: str, v) -> None:
    if not ok:
        raise ConfigError(f"{param}: expected {what}, got {v!r}", param=param)


_BOOL_FIELDS = ("counterfactual", "discover", "sanity", "channels_last", "fold_bn", "cache")
_STR_FIELDS = ("run_dir", "arch", "source", "checkpoint", "data", "split", "out", "layer", "preset", "positive",
               "amp", "uncertain")


def _validate(cfg: AuditConfig) -> None:
    """Every option checked, in the config object itself: ConfigError (a ValueError) naming the parameter, what
    was expected and what came ("batch_size: expected a positive integer, got 0"); `.param` holds its name."""
    for k in _STR_FIELDS:
        v = getattr(cfg, k)
        _expect(v is None or isinstance(v, (str, os.PathLike)), k, "a string or None", v)
        if isinstance(v, os.PathLike):
            setattr(cfg, k, os.fspath(v))
    for k in _BOOL_FIELDS:
        _expect(isinstance(getattr(cfg, k), bool), k, "True or False", getattr(cfg, k))
    for k in ("target", "maps", "device"):
        _expect(isinstance(getattr(cfg, k), str), k, "a string", getattr(cfg, k))
    for k in ("classes", "findings"):
        v = getattr(cfg, k)
        _expect(v is None or (isinstance(v, (list, tuple)) and all(isinstance(x, str) for x in v)), k,
                "a list of strings or None", v)
        if isinstance(v, tuple):
            setattr(cfg, k, list(v))
    _expect(isinstance(cfg.by, (list, tuple)) and all(isinstance(x, str) for x in cfg.by), "by",
            "a list of column names", cfg.by)
    cfg.by = list(cfg.by)
    _expect(_is_int(cfg.batch_size) and cfg.batch_size >= 1, "batch_size", "a positive integer", cfg.batch_size)
    _expect(cfg.limit is None or (_is_int(cfg.limit) and cfg.limit >= 1), "limit", "a positive integer or None",
            cfg.limit)
    _expect(_is_int(cfg.n_boot) and cfg.n_boot >= 1, "n_boot", "a positive integer (bootstrap resamples per CI)",
            cfg.n_boot)
    _expect(_is_int(cfg.seed) and 0 <= cfg.seed < 2 ** 32, "seed", "an integer in [0, 2^32)", cfg.seed)
    _expect(_is_int(cfg.min_n) and cfg.min_n >= 1, "min_n", "a positive integer (smallest group reported)",
            cfg.min_n)
    _expect(_is_int(cfg.sanity_n) and cfg.sanity_n >= 1, "sanity_n", "a positive integer", cfg.sanity_n)
    _expect(_is_int(cfg.hit_tolerance) and cfg.hit_tolerance >= 0, "hit_tolerance", "an integer ≥ 0 (pixels)",
            cfg.hit_tolerance)
    _expect(_is_int(cfg.workers) and cfg.workers >= 0, "workers", "an integer ≥ 0", cfg.workers)
    num = lambda x: isinstance(x, (int, float)) and not isinstance(x, bool)  # noqa: E731
    _expect(num(cfg.high_conf) and 0 < cfg.high_conf <= 1, "high_conf", "a probability in (0, 1]", cfg.high_conf)
    _expect(num(cfg.off_target_frac) and 0 <= cfg.off_target_frac <= 1, "off_target_frac", "a share in [0, 1]",
            cfg.off_target_frac)
    _expect(num(cfg.artifact_lift) and cfg.artifact_lift >= 0, "artifact_lift", "a lift ≥ 0", cfg.artifact_lift)
    if not (isinstance(cfg.sensitivities, (list, tuple)) and cfg.sensitivities
            and all(num(x) and 0 < float(x) <= 1 for x in cfg.sensitivities)):
        where = f"{cfg.preset}: audit.sensitivities" if cfg.preset else "sensitivities"
        raise ConfigError(f"{where}: expected target sensitivities in (0, 1], got {cfg.sensitivities!r}",
                          param="sensitivities")
    cfg.sensitivities = [float(x) for x in cfg.sensitivities]
    if cfg.device != "cpu" and not cfg.device.startswith("cuda") and cfg.device != "mps":
        raise ConfigError(f"device: expected cpu, cuda[:N] or mps, got {cfg.device!r}", param="device")
    _expect(cfg.amp in (None, "bf16", "fp16"), "amp", "bf16, fp16 or None", cfg.amp)
    _expect(cfg.maps in ("needed", "all"), "maps", "needed or all", cfg.maps)
    _expect(cfg.uncertain in (None, "ignore", "zeros", "ones"), "uncertain", "ignore, zeros, ones or None",
            cfg.uncertain)
    from .gates import UNDEFINED_POLICIES, evaluate_gates, split_policy
    _expect(cfg.undefined_gates in (None, *UNDEFINED_POLICIES), "undefined_gates",
            f"one of {', '.join(UNDEFINED_POLICIES)} or None", cfg.undefined_gates)
    evaluate_gates(cfg.gates, None)  # unknown gate names and non-numeric thresholds fail here, before any work
    if cfg.undefined_gates is None:  # resolved once: the preset's policy, else the default, written into the report
        cfg.undefined_gates = split_policy(cfg.gates)[1] or "inconclusive"
    if not isinstance(cfg.regions, dict):
        raise ConfigError(f"{cfg.preset}: 'regions' must be a mapping of region name → options")


def write_resolved(path: Path, cfg: AuditConfig, run: dict, extra: dict | None = None) -> None:
    from ._version import __version__, package_versions
    doc = {"auditor_version": __version__, "options": cfg.to_dict(), "run": run, "versions": package_versions()}
    if extra:
        doc.update(extra)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))


# ================================================================================================ preset files

#: The sections a preset may hold: `regions` (masks/registry.py), `input` (the grid for `masks` / `scan`; an audit
#: takes its input from the run), `data` (manifest columns), `audit` (AuditConfig options), `gates`, `scan`,
#: `compare` (`gates:` the non-inferiority margins of `cli.py compare`, audit/compare.py GATES).
SECTIONS = ("regions", "input", "data", "audit", "gates", "scan", "compare")


def load_preset(path: str | Path) -> dict:
    """Parse a preset YAML into a dict and validate its ``regions:`` section.

    Raises ConfigError (one line naming the file) when the file is missing, is not valid YAML, is not a
    mapping, has a top-level section other than `SECTIONS` (a misspelt or mis-indented section would otherwise
    be ignored without a word), or names an unknown region, option, data / input / scan / audit key or gate.
    """
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: preset not found")
    try:
        cfg = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{p}: invalid YAML{where}: {problem}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{p}: cannot read preset ({type(e).__name__}: {e})") from None
    if cfg is None:
        cfg = {}
    if not isinstance(cfg, dict):
        raise ConfigError(f"{p}: expected a mapping of sections at the top level, got {type(cfg).__name__}")
    unknown = [k for k in cfg if k not in SECTIONS]
    if unknown:
        raise ConfigError(f"{p}: unknown top-level section(s) {unknown}; expected some of {list(SECTIONS)}")
    try:
        _check_sections(cfg)
    except ConfigError as e:
        raise ConfigError(f"{p}: {e}") from None
    return cfg


def _check_sections(cfg: dict) -> None:
    """Every section checked key by key, whichever command reads the preset (a typo in `gates:` fails `scan`
    too, so that a preset that scans also audits)."""
    from masks import build_regions

    from .gates import evaluate_gates
    from .manifest import DataSpec
    from .scan.config import scan_options
    from .scan.core import scan_input_spec
    build_regions(cfg.get("regions"))
    DataSpec.from_dict(cfg.get("data"))
    scan_input_spec(cfg)
    scan_options(cfg)
    audit = cfg.get("audit") or {}
    if not isinstance(audit, dict):
        raise ConfigError(f"audit: expected a mapping of options, got {type(audit).__name__}")
    unknown = sorted(set(audit) - AUDIT_KEYS)
    if unknown:
        raise ConfigError(f"unknown key(s) in audit: {unknown}")
    for k, v in audit.items():
        audit_value(k, v)
    gates = cfg.get("gates") or {}
    if not isinstance(gates, dict):
        raise ConfigError(f"gates: expected a mapping of gate name → threshold, got {type(gates).__name__}")
    evaluate_gates(gates, None)
    compare_gates(cfg)


def compare_gates(cfg: dict) -> dict[str, float]:
    """The preset's `compare: {gates: {name: margin}}` (empty when absent), checked by `audit.compare.parse_gates`."""
    from .compare import parse_gates
    c = cfg.get("compare") or {}
    if not isinstance(c, dict) or set(c) - {"gates"}:
        raise ConfigError("compare: expected a mapping with one key, gates (non-inferiority margins), got "
                          f"{sorted(c) if isinstance(c, dict) else type(c).__name__}")
    g = c.get("gates") or {}
    if not isinstance(g, dict):
        raise ConfigError(f"compare.gates: expected a mapping of gate name → margin, got {type(g).__name__}")
    try:
        return parse_gates(g)
    except ConfigError as e:
        raise ConfigError(f"compare.gates: {e}") from None
