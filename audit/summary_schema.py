"""docs/summary_schema.md, written from the typed summary (audit/summary_types.py: every field's type and doc):
`python -m audit.summary_schema` rewrites it; tests/test_scores_gates.py checks that the file is current and
tests/test_cli.py that an audit writes no undocumented key."""
from __future__ import annotations

import sys
from dataclasses import fields
from pathlib import Path

from .summary_types import SCHEMA_VERSION, AuditSummary, Record, record_types, type_name

INTRO = (
    'Strict JSON (NaN is written as `null`). An **estimate** is `{value, lo, hi, n, too_small, p, note}`: `value` is '
    '`null` when undefined or when the group is too small (`too_small: true`, n below `min_n`, default 10); `lo`/`hi` '
    'are a 95% CI (Wilson for rates, seeded percentile bootstrap otherwise, `n_boot` resamples). A key marked '
    '*optional* is present only when its section was computed. In Python, `audit.summary_types.AuditSummary.from_json` '
    'reads the file into these types and `to_json` writes it.'
)


def _rows(tp: type[Record]) -> list[str]:
    hints = tp.hints()
    out = []
    for f in fields(tp):  # type: ignore[arg-type]
        opt = " *(optional)*" if f.metadata.get("omit_none") else ""
        out.append(f"| `{f.name}` | {type_name(hints[f.name])}{opt} | {f.metadata.get('doc', '')} |")
    return out


def markdown() -> str:
    """docs/summary_schema.md as a string: the top-level keys, then one table per typed section."""
    out = [f"# `summary.json` schema (schema_version {SCHEMA_VERSION})", "",
           "<!-- written by `python -m audit.summary_schema` from the types in audit/summary_types.py; edit those, "
           "not this file -->", "", INTRO, "", "## Top level (`AuditSummary`)", "", "| key | type | content |",
           "|---|---|---|", *_rows(AuditSummary)]
    for key, tp in record_types()[1:]:
        out += ["", f"## `{key}` ({tp.__name__})", "", "| key | type | content |", "|---|---|---|", *_rows(tp)]
    return "\n".join(out) + "\n"


def undocumented(summary: dict) -> list[str]:
    """The top-level keys of a summary that the schema does not document."""
    known = {f.name for f in fields(AuditSummary)}
    return sorted(k for k in summary if k not in known)


if __name__ == "__main__":
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[1] / "docs" / "summary_schema.md"
    path.write_text(markdown(), encoding="utf-8")
    print(f"wrote {path}")
