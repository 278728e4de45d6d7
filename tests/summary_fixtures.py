"""Hand-built summaries for the tests: `complete(d)` fills in what the schema requires and `d` leaves out.

A test builds the figures it is about (a region's lift, a gate, an operating point); `complete` adds every other
required key of `audit.summary_types.AuditSummary` with a neutral value (an estimate with value null and n 0, a
null number, 0, "", [], {}; a record filled in the same way), so that the dict parses with
`AuditSummary.from_json` as summary.json does. Keys with a default in the schema are left to it.
"""
from __future__ import annotations

import copy
import types
import typing
from dataclasses import MISSING, fields
from typing import Any, Union, get_args, get_origin

from audit.stats import Estimate
from audit.summary_types import SCHEMA_VERSION, AuditSummary, Record


def neutral_estimate(n: int = 0) -> dict:
    return {"value": None, "lo": None, "hi": None, "n": n, "too_small": False, "p": None, "note": ""}


def _neutral(tp: Any) -> Any:
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        return None
    if tp is Estimate:
        return neutral_estimate()
    if isinstance(tp, type) and issubclass(tp, Record):
        return complete({}, tp)
    if origin is list or tp is list:
        return []
    if origin is dict or tp is dict or tp is Any:
        return {}
    return {float: None, int: 0, str: "", bool: False}[tp]


def _fill(tp: Any, v: Any) -> Any:
    """v (present) with its records completed."""
    origin, args = get_origin(tp), get_args(tp)
    if v is None:
        return v
    if origin in (Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        return _fill(inner[0], v) if len(inner) == 1 else v
    if isinstance(tp, type) and issubclass(tp, Record) and isinstance(v, dict):
        return complete(v, tp)
    if origin is list and isinstance(v, list):
        return [_fill(args[0], x) for x in v]
    if origin is dict and isinstance(v, dict) and len(args) == 2:
        return {k: _fill(args[1], x) for k, x in v.items()}
    return v


def complete(d: dict, cls: type = AuditSummary) -> dict:
    """A copy of `d` (a summary.json dict, or one section of it with `cls` its record type) with every required
    key it lacks filled in with a neutral value, recursively."""
    out = copy.deepcopy(d)
    if cls is AuditSummary:
        out.setdefault("schema_version", SCHEMA_VERSION)
    hints = typing.get_type_hints(cls)
    for f in fields(cls):
        if f.name in out:
            out[f.name] = _fill(hints[f.name], out[f.name])
        elif f.default is MISSING and f.default_factory is MISSING:
            out[f.name] = _neutral(hints[f.name])
    return out


def parse(d: dict) -> AuditSummary:
    """`complete(d)` as an `AuditSummary`."""
    return AuditSummary.from_json(complete(d))
