"""Preset files: one YAML per dataset (``configs/*.yaml``); this package owns the ``regions:`` section."""
from __future__ import annotations

from pathlib import Path

import yaml

from audit.errors import ConfigError

from .registry import build_regions

#: The sections a preset may hold: `regions` (this package), `input` (the grid for `masks` / `scan`; an audit
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
    from audit.config import AUDIT_KEYS, audit_value
    from audit.gates import evaluate_gates
    from audit.manifest import DataSpec
    from audit.scan.core import scan_options, scan_input_spec
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
    evaluate_gates(gates, {})
    compare_gates(cfg)


def compare_gates(cfg: dict) -> dict[str, float]:
    """The preset's `compare: {gates: {name: margin}}` (empty when absent), checked by `audit.compare.parse_gates`."""
    from audit.compare import parse_gates
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
