"""Per-image arrays kept on disk while an audit streams, and written into an `.npz` without holding them.

An audit of N images produces, besides its table, one h×w map and one K-float embedding per image (K = 512 for
ResNet-18). Held in memory they cost N·(h·w + K)·4 bytes (≈ 2.2 KB per image for ResNet-18 at 224 px), and
`np.savez_compressed` would need them all at once. `SpillArray` appends each batch's rows to a temporary file
instead; `write_npz` streams those files (and small in-memory arrays) into one `.npz` that `np.load` reads as
usual. Files are read back with explicit reads, not memory maps, so the pages never count towards the
process's resident set.
"""
from __future__ import annotations

import os
import tempfile
import weakref
import zipfile
from pathlib import Path

import numpy as np

__all__ = ["SpillArray", "write_npz"]

_CHUNK_BYTES = 4 << 20  # rows are copied into the .npz ~4 MB at a time


class SpillArray:
    """Rows of one array (shape (n, *row_shape), `dtype`) appended batch by batch to an anonymous file in `folder`.

    `append(a)` takes a (b, *row_shape) array (cast to dtype); the first call fixes row_shape, later calls must
    match. `read(start, stop)` returns rows [start, stop) as a new array. The file has no name (it is deleted
    when closed, or when the process ends however it ends), so an interrupted audit leaves nothing behind;
    `discard()` closes it now, and an array dropped without it (an audit that stops on an error) closes it when
    collected.
    """

    def __init__(self, folder: Path, name: str, dtype=np.float32):
        self.name = name
        self.dtype = np.dtype(dtype)
        self.row_shape: tuple[int, ...] | None = None
        self.n = 0
        self._f = tempfile.TemporaryFile(dir=folder, prefix=f".{name}.")
        self._close = weakref.finalize(self, self._f.close)  # no "unclosed file" warning on an error path

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.n, *(self.row_shape or ()))

    def append(self, a: np.ndarray) -> None:
        a = np.ascontiguousarray(a, dtype=self.dtype)
        if self.row_shape is None:
            self.row_shape = tuple(a.shape[1:])
        elif tuple(a.shape[1:]) != self.row_shape:
            raise ValueError(f"{self.name}: rows of shape {a.shape[1:]} appended to rows of shape {self.row_shape}")
        self._f.seek(0, os.SEEK_END)
        self._f.write(a.tobytes())
        self.n += len(a)

    @property
    def _row_bytes(self) -> int:
        return self.dtype.itemsize * int(np.prod(self.row_shape or (), dtype=np.int64))

    def read(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Rows [start, stop) (stop defaults to n), as an array of shape (stop - start, *row_shape)."""
        stop = self.n if stop is None else min(stop, self.n)
        count = max(stop - start, 0)
        self._f.flush()
        self._f.seek(start * self._row_bytes)
        buf = self._f.read(count * self._row_bytes)
        return np.frombuffer(buf, dtype=self.dtype).reshape(count, *(self.row_shape or ())).copy()

    def rows_per_chunk(self) -> int:
        return max(1, _CHUNK_BYTES // max(self._row_bytes, 1))

    def discard(self) -> None:
        self._close()


def write_npz(path: Path, arrays: dict, compress: bool = True) -> None:
    """Write `arrays` (name → ndarray or SpillArray) as an .npz file that `np.load` reads like `np.savez_compressed`'s.

    A SpillArray is copied a chunk of rows at a time, so the whole array is never in memory. The file is written
    under a temporary name and renamed, so a reader never sees half of it.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    mode = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    with zipfile.ZipFile(tmp, "w", compression=mode, allowZip64=True) as zf:
        for name, a in arrays.items():
            with zf.open(f"{name}.npy", "w", force_zip64=True) as f:
                if isinstance(a, SpillArray):
                    np.lib.format.write_array_header_1_0(
                        f, {"descr": np.lib.format.dtype_to_descr(a.dtype), "fortran_order": False,
                            "shape": a.shape})
                    step = a.rows_per_chunk()
                    for s in range(0, a.n, step):
                        f.write(a.read(s, s + step).tobytes())
                else:
                    np.lib.format.write_array(f, np.asanyarray(a), allow_pickle=False)
    os.replace(tmp, path)
