"""The live view's spike raster: per-column spike sums of unit groups, folded in compiled code.

:class:`LiveRaster` owns the downsampled raster of one rig: units grouped into at most
``max_rows`` rows per hemisphere (left rows first), frames summed into columns of ``column_ns``
of rig time, the last ``n_columns`` columns kept in a :class:`ColumnRing`. A rig's spike-count
frame is the one record the recorder writes for every bin (1 kHz), so it is the one that must
not cost Python per record: :meth:`LiveRaster.fold_span` reads consecutive SPIKE_COUNTS records
straight out of a span of the recorder's ring (record layout of rig/record_ring.py) in one
compiled call that releases the GIL, and stops at the first record it does not fold (any other
kind, another layout, anything it would have to validate further), which the caller hands to the
per-record Python path (:meth:`LiveRaster.add`). Both paths share the column-closing kernel, so
they produce the same raster.
"""

from __future__ import annotations

import struct
from typing import Any

import numba
import numpy as np
import numpy.typing as npt

from rig import wire
from rig.record_ring import RECORD_SIZE

#: state vector of the fold: the open column's id, whether one is open, frames folded, rig time
_COL, _OPEN, _FRAMES, _T_LAST = 0, 1, 2, 3
_MAGIC = struct.unpack("<I", wire.MAGIC)[0]
_VERSION = wire.VERSION
#: itemsize of the SPIKE_COUNTS dtypes the fold adds into the int64 accumulator (F32 is left to
#: the Python path, which refuses it the same way it always did)
_ITEMSIZE = np.zeros(16, dtype=np.int64)
for _dt, _size in ((wire.DType.U8, 1), (wire.DType.U16, 2), (wire.DType.I16, 2), (wire.DType.I32, 4),
                   (wire.DType.U32, 4)):
    _ITEMSIZE[int(_dt)] = _size
_SIGNED = np.zeros(16, dtype=np.bool_)
_SIGNED[int(wire.DType.I16)] = _SIGNED[int(wire.DType.I32)] = True
_KIND_COUNTS = int(wire.Kind.SPIKE_COUNTS)


class ColumnRing:
    """A fixed-capacity ring of rows with a monotonic write counter (kept in an array, for kernels)."""

    def __init__(self, capacity: int, width: int, dtype: npt.DTypeLike) -> None:
        self.capacity = capacity
        self.data = np.zeros((capacity, width), dtype=dtype)
        self.count = np.zeros(1, dtype=np.int64)  #: rows written so far

    @property
    def written(self) -> int:
        """Rows written so far (monotonic)."""
        return int(self.count[0])

    def push_many(self, rows: npt.NDArray[Any]) -> None:
        """Write rows in order (one vectorised assignment; only the last ``capacity`` can be kept)."""
        rows = rows[-self.capacity:]
        self.data[(self.count[0] + np.arange(rows.shape[0])) % self.capacity] = rows
        self.count[0] += rows.shape[0]

    def since(self, cursor: int) -> tuple[npt.NDArray[Any], bool]:
        """Rows written after ``cursor`` (all held rows if the cursor is too old: reset=True)."""
        written = self.written
        first = written - min(written, self.capacity)
        reset = cursor < first - 1 or cursor < 0
        start = max(cursor + 1, first)
        idx = np.arange(start, written) % self.capacity
        return self.data[idx], reset


@numba.njit(inline="always")
def _uint(buf: Any, o: int, size: int) -> int:  # pragma: no cover - compiled
    v = 0
    for i in range(size):
        v |= int(buf[o + i]) << (8 * i)
    return v


@numba.njit(nogil=True, cache=True)
def _close_column(st: Any, acc: Any, group: Any, rows: Any, raster: Any, raster_count: Any,
                  ends: Any, ends_count: Any, column_ns: int) -> None:  # pragma: no cover - compiled
    """Sum the open column's accumulator into its group rows (clipped to uint16) and push it."""
    rows[:] = 0
    for i in range(acc.shape[0]):
        rows[group[i]] += acc[i]
        acc[i] = 0
    slot = raster_count[0] % raster.shape[0]
    for r in range(rows.shape[0]):
        raster[slot, r] = min(max(rows[r], 0), 65535)
    raster_count[0] += 1
    ends[ends_count[0] % ends.shape[0], 0] = (st[_COL] + 1) * column_ns
    ends_count[0] += 1


@numba.njit(nogil=True, cache=True)
def _fold(buf: Any, pos: int, n: int, rig_id: int, column_ns: int, st: Any, acc: Any, group: Any,
          rows: Any, raster: Any, raster_count: Any, ends: Any, ends_count: Any,
          itemsizes: Any, signed: Any) -> tuple[int, int]:  # pragma: no cover - compiled
    """Fold up to ``n`` consecutive records at ``buf[pos:]`` while they are this layout's frames.

    A record is folded when it is a valid 1-D SPIKE_COUNTS message of an integer dtype with as
    many units as the layout, from ``rig_id``, with a positive rig time; a valid frame of another
    rig (not rigd's own, id 0) is passed over, as the Python path does. Returns
    ``(records consumed, position of the first one not consumed)``.
    """
    n_units = acc.shape[0]
    k = 0
    while k < n:
        hl = _uint(buf, pos, 4) & 0xFFFF
        pl = _uint(buf, pos + 4, 4)
        h = pos + RECORD_SIZE
        if hl != 56 or _uint(buf, h, 4) != _MAGIC or _uint(buf, h + 4, 2) != _VERSION:
            break
        if _uint(buf, h + 6, 2) != _KIND_COUNTS or buf[h + 9] != 1:
            break
        dt = buf[h + 8]
        size = itemsizes[dt] if dt < itemsizes.shape[0] else 0
        d0 = _uint(buf, h + 12, 4)
        if size == 0 or pl != size * d0 or _uint(buf, h + 52, 4) != pl:
            break
        rig = _uint(buf, h + 20, 4)
        if rig != rig_id:
            if rig == 0:
                break
            k += 1  # another rig's frame: not this raster's
            pos = h + hl + pl
            continue
        t = _uint(buf, h + 36, 8)
        if d0 != n_units or t <= 0:  # (a rig time with its top bit set reads negative)
            break
        col = t // column_ns
        if st[_OPEN] and col != st[_COL]:
            _close_column(st, acc, group, rows, raster, raster_count, ends, ends_count, column_ns)
        st[_COL] = col
        st[_OPEN] = 1
        p = h + hl
        if size == 1:
            for i in range(n_units):
                acc[i] += buf[p + i]
        else:
            sign = signed[dt]
            top = 1 << (8 * size - 1)
            for i in range(n_units):
                v = _uint(buf, p + i * size, size)
                if sign and v >= top:
                    v -= 2 * top
                acc[i] += v
        st[_FRAMES] += 1
        st[_T_LAST] = max(st[_T_LAST], t)
        k += 1
        pos = p + pl
    return k, pos


class LiveRaster:
    """One rig's downsampled raster (rows: unit groups per hemisphere; columns: ``column_ns`` bins).

    Args:
        n_columns: columns kept.
        column_ns: width of a column in rig time.
        max_rows: raster rows per hemisphere; more units are summed in groups.
    """

    def __init__(self, n_columns: int, column_ns: int, max_rows: int) -> None:
        self.n_columns = n_columns
        self.column_ns = column_ns
        self.max_rows = max_rows
        self.n_units = 0
        self.units_left = 0
        self.rows_left = 0
        self.rows_right = 0
        self._st = np.zeros(4, dtype=np.int64)
        self._group = np.zeros(0, dtype=np.intp)
        self._acc = np.zeros(0, dtype=np.int64)
        self._rows = np.zeros(0, dtype=np.int64)
        self.columns: ColumnRing | None = None  #: the raster's columns (uint16 rows)
        self.ends: ColumnRing | None = None  #: each column's end, rig ns

    @property
    def frames(self) -> int:
        """Frames summed into the raster so far (every layout)."""
        return int(self._st[_FRAMES])

    def layout(self, n_units: int, units_left: int) -> None:
        """Group units into at most ``max_rows`` raster rows per hemisphere (a fresh raster)."""
        units_left = min(max(units_left, 0), n_units)
        units_right = n_units - units_left
        self.n_units, self.units_left = n_units, units_left
        self.rows_left = min(units_left, self.max_rows)
        self.rows_right = min(units_right, self.max_rows)
        group = np.empty(n_units, dtype=np.intp)
        if units_left:
            group[:units_left] = np.arange(units_left) * self.rows_left // units_left
        if units_right:
            group[units_left:] = self.rows_left + np.arange(units_right) * self.rows_right // units_right
        self._group = group
        self._acc = np.zeros(n_units, dtype=np.int64)
        self._rows = np.zeros(self.rows_left + self.rows_right, dtype=np.int64)
        self._st[_OPEN] = 0
        self.columns = ColumnRing(self.n_columns, self.rows_left + self.rows_right, np.uint16)
        self.ends = ColumnRing(self.n_columns, 1, np.int64)

    def _close(self) -> None:
        assert self.columns is not None and self.ends is not None
        _close_column(self._st, self._acc, self._group, self._rows, self.columns.data, self.columns.count,
                      self.ends.data, self.ends.count, self.column_ns)

    def add(self, t_rig_ns: int, counts: npt.NDArray[Any]) -> None:
        """Add one frame of this layout's size (the per-record path). TypeError for float counts."""
        col = t_rig_ns // self.column_ns
        if self._st[_OPEN] and col != self._st[_COL]:
            self._close()
        self._st[_COL] = col
        self._st[_OPEN] = 1
        self._acc += counts
        self._st[_FRAMES] += 1

    def fold_span(self, buf: npt.NDArray[np.uint8], pos: int, n: int, rig_id: int,
                  t_last_ns: int) -> tuple[int, int, int]:
        """Fold the leading frames of ``n`` records at ``buf[pos:]`` in one compiled call.

        Returns ``(records consumed, position of the next record, latest rig time seen)``; the
        record at that position, if any are left, is for the per-record path.
        """
        if self.columns is None or self.ends is None or not self.n_units:
            return 0, pos, t_last_ns
        self._st[_T_LAST] = t_last_ns
        k, pos = _fold(buf, pos, n, rig_id, self.column_ns, self._st, self._acc, self._group, self._rows,
                       self.columns.data, self.columns.count, self.ends.data, self.ends.count,
                       _ITEMSIZE, _SIGNED)
        return k, pos, int(self._st[_T_LAST])
