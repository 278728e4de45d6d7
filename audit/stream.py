"""The one streaming loop of a dataset pass (the audit, the multi-label audit and the scan): batches from the
DataLoader (`audit.data.Batch`), the unreadable images recorded and skipped, one table chunk per batch, progress,
and on an interruption the rows done so far kept in a partial CSV (nothing computed is lost)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, NamedTuple

import pandas as pd

from .data import Batch

Progress = Callable[[int, int], None]  # (done, total)


class Failure(NamedTuple):
    """An image that could not be read: its manifest row, id, path and the one-line reason (errors.csv)."""

    row: int
    image_id: str
    image: str
    reason: str


@dataclass
class Streamed:
    """What `stream_batches` hands back: the per-batch table chunks (in streaming order), the failures, and the
    seconds the workers spent decoding images and building region masks."""

    frames: list[pd.DataFrame] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    t_decode: float = 0.0
    t_regions: float = 0.0

    def table(self) -> pd.DataFrame:
        return concat_frames(self.frames)


def concat_frames(frames: list[pd.DataFrame]) -> pd.DataFrame:
    """The per-batch chunks as one table (columns in order of first appearance; NaN where a chunk lacks one)."""
    frames = [f for f in frames if len(f)]
    return pd.concat(frames, ignore_index=True, sort=False) if frames else pd.DataFrame()


def stream_batches(loader: Iterable[Batch], rows: pd.DataFrame, on_batch: Callable[[Batch], pd.DataFrame | None],
                   *, progress: Progress | None = None, partial: Path | None = None, row_col: str | None = None,
                   drop_in_partial: tuple[str, ...] = ()) -> Streamed:
    """Run `on_batch` on every batch that holds a readable image; record the others' images as `Failure`s.

    rows: the streamed manifest rows (the loader's order; `batch.idx` indexes them). on_batch(batch) → the batch's
    table chunk (one row per readable image) or None. row_col: the column giving a failure's manifest row (e.g.
    the audit's `_row`; default the streamed position). progress(done, len(rows)) after each batch. partial: where
    the chunks so far are written (without `drop_in_partial`) when the pass is interrupted or fails, before the
    exception goes on; removed when the pass completes."""
    out = Streamed()
    done = 0
    try:
        for batch in loader:
            out.t_decode += batch.t_decode
            out.t_regions += batch.t_regions
            for i, err in batch.failed:
                r = rows.iloc[i]
                out.failures.append(Failure(int(r[row_col]) if row_col else int(i), str(r["image_id"]),
                                            str(r["image"]), err))
            done += len(batch.failed)
            if batch.img is not None:
                chunk = on_batch(batch)
                if chunk is not None:
                    out.frames.append(chunk)
                done += len(batch.idx)
            if progress:
                progress(done, len(rows))
    except BaseException:  # interrupted (Ctrl-C) or failed: the rows done so far are kept
        if partial is not None and out.frames:
            out.table().drop(columns=list(drop_in_partial), errors="ignore").to_csv(partial, index=False)
        raise
    if partial is not None:
        partial.unlink(missing_ok=True)  # a finished pass replaces an interrupted one
    return out


def write_errors(path: Path, failures: list[Failure]) -> None:
    """errors.csv (image_id, image, reason) when an image could not be read; a stale one is removed."""
    if failures:
        pd.DataFrame([f[1:] for f in failures], columns=["image_id", "image", "reason"]).to_csv(path, index=False)
    elif path.exists():
        path.unlink()
