"""Shared machinery of the rigd decoders: windowed rates, cross-validation, save/load, a base class.

Owns what every decoder needs and none should duplicate: the causal-window rates a fit uses
(the batch twin of what ``step`` computes frame by frame), stratified folds, the inverse-variance
decision boundary of the authors' CD (docs/decoders.md), the on-disk format (one ``.npz``: arrays plus a JSON
``meta`` with name, format version, parameters and the fit's provenance; no pickle), and
:class:`WindowedLinearDecoder`, the base of every decoder whose output is a linear read-out of
spike counts in a causal window (coding direction, logistic regression, LDA). Pure computation:
no clocks, sockets or files other than the path ``save``/``load`` are given.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any, Self

import numpy as np
import numpy.typing as npt

from decoders import kernels
from decoders.base import Decoder, Estimate, FitReport, TrialSet

FORMAT_VERSION = 1  #: version of the on-disk decoder format written by :func:`save_npz`
FloatArray = npt.NDArray[np.float64]
LAST_DELAY_S = (-0.3, 0.0)  #: "last 300 ms of the delay": windows ending in (-0.3, 0] s


def window_rates(counts: npt.NDArray[Any], bin_s: float, window_s: float) -> FloatArray:
    """Causal windowed rates (spikes/s) ending at each bin's end: (trials, bins, units).

    The window at bin ``b`` covers bins ``b - n_win + 1 .. b`` (``n_win = window_s / bin_s``);
    early bins use the bins available (as ``step`` does before its window has filled).
    """
    n_win = n_window(window_s, bin_s)
    out = np.empty(counts.shape, dtype=np.float64)
    kernels.windowed_sums(np.ascontiguousarray(counts), n_win, out)
    filled = np.minimum(np.arange(1, counts.shape[1] + 1), n_win).astype(np.float64)
    out /= (filled * bin_s)[None, :, None]
    return out


def n_window(window_s: float, bin_s: float) -> int:
    """Return the bins in a window, which must be a whole number of bins (within 1 %)."""
    n = round(window_s / bin_s)
    if n < 1 or abs(n * bin_s - window_s) > 0.01 * bin_s:
        raise ValueError(f"window_s={window_s} s is not a whole number of bins of {bin_s} s; "
                         "choose a window that is a multiple of the bin width")
    return int(n)


def bin_ends(trials: TrialSet) -> FloatArray:
    """End time of every bin relative to the go cue (the time a causal window ending there is known)."""
    return trials.times_s() + trials.bin_s


def time_mask(trials: TrialSet, t_range_s: tuple[float, float]) -> npt.NDArray[np.bool_]:
    """Bins whose end lies in ``(t_lo, t_hi]`` (small tolerance for float bin edges)."""
    te = bin_ends(trials)
    eps = 1e-6 * trials.bin_s
    return np.asarray((te > t_range_s[0] + eps) & (te <= t_range_s[1] + eps))


def require_bins(trials: TrialSet, t_range_s: tuple[float, float], what: str) -> npt.NDArray[np.bool_]:
    """:func:`time_mask`, raising a clear error when the trials do not cover the range."""
    m = time_mask(trials, t_range_s)
    if not m.any():
        te = bin_ends(trials)
        raise ValueError(f"{what} needs bins ending in {t_range_s} s but the trials' bins end in "
                         f"[{te[0]:.3f}, {te[-1]:.3f}] s")
    return m


def labels_of(trials: TrialSet, label: str) -> npt.NDArray[np.int8]:
    """+1/-1 labels (0 = none) by ``"choice"`` or ``"instructed"``."""
    if label == "choice":
        return np.asarray(trials.choice, dtype=np.int8)
    if label == "instructed":
        return np.asarray(trials.instructed, dtype=np.int8)
    raise ValueError(f"label must be 'choice' or 'instructed', got {label!r}")


def stratified_folds(y: npt.NDArray[Any], folds: int, seed: int = 0) -> list[npt.NDArray[np.int64]]:
    """Test indices of ``folds`` folds with the classes of ``y`` spread evenly."""
    rng = np.random.default_rng(seed)
    parts: list[list[int]] = [[] for _ in range(folds)]
    k = 0
    for cls in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == cls))
        for i in idx:
            parts[k % folds].append(int(i))
            k += 1
    return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]


def inverse_variance_boundary(p_left: FloatArray, p_right: FloatArray) -> float:
    """The authors' CD boundary: ``db = (m_L/v_L + m_R/v_R) / (1/v_L + 1/v_R)`` (variances floored)."""
    mL, mR = float(np.mean(p_left)), float(np.mean(p_right))
    vL = max(float(np.var(p_left, ddof=1)) if p_left.size > 1 else 0.0, 1e-12)
    vR = max(float(np.var(p_right, ddof=1)) if p_right.size > 1 else 0.0, 1e-12)
    return (mL / vL + mR / vR) / (1.0 / vL + 1.0 / vR)


def logistic_scale(values: FloatArray, y: npt.NDArray[Any]) -> float:
    """Slope turning a signed value into log-odds under equal-variance Gaussian classes.

    ``(m_R - m_L) / pooled variance``: confidence = logistic(scale * value). Zero if undefined.
    """
    r, lft = values[y > 0], values[y < 0]
    if r.size < 2 or lft.size < 2:
        return 0.0
    pooled = float((np.var(r, ddof=1) * (r.size - 1) + np.var(lft, ddof=1) * (lft.size - 1))
                   / (r.size + lft.size - 2))
    return max(float(np.mean(r) - np.mean(lft)), 0.0) / max(pooled, 1e-12)


def concat_trials(a: TrialSet, b: TrialSet) -> TrialSet:
    """Trials of ``a`` then ``b`` (same bins and units); provenance lists both sources."""
    if a.counts.shape[1:] != b.counts.shape[1:] or a.bin_s != b.bin_s or a.t0_s != b.t0_s:
        raise ValueError(f"cannot join trial sets with shapes {a.counts.shape} / {b.counts.shape}, "
                         f"bins {a.bin_s}/{b.bin_s} s, t0 {a.t0_s}/{b.t0_s} s")
    prov = {"sources": [a.provenance, b.provenance]}
    return TrialSet(np.concatenate([a.counts, b.counts]), a.bin_s, a.t0_s,
                    np.concatenate([a.choice, b.choice]), np.concatenate([a.instructed, b.instructed]),
                    np.concatenate([a.correct, b.correct]), a.hemisphere, prov)


def last_trials(ts: TrialSet, n: int) -> TrialSet:
    """Return the last ``n`` trials (all if fewer)."""
    return ts if ts.n_trials <= n else ts.subset(np.arange(ts.n_trials - n, ts.n_trials))


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.floating):
        return float(x)
    if isinstance(x, np.bool_):
        return bool(x)
    if isinstance(x, str | int | float | bool) or x is None:
        return x
    return str(x)


def save_npz(path: Path, name: str, version: int, *, params: dict[str, Any],
             provenance: dict[str, Any], arrays: dict[str, npt.NDArray[Any]]) -> None:
    """Write one decoder file: arrays plus JSON meta (name, versions, params, provenance)."""
    meta = {"name": name, "format_version": FORMAT_VERSION, "decoder_version": version,
            "params": _jsonable(params), "provenance": _jsonable(provenance)}
    path = Path(path)
    with path.open("wb") as f:
        np.savez(f, __meta__=np.asarray(json.dumps(meta)), **arrays)  # type: ignore[arg-type]


def read_npz(path: Path) -> tuple[dict[str, Any], dict[str, npt.NDArray[Any]]]:
    """Read a decoder file written by :func:`save_npz` (refuses unknown format versions)."""
    with np.load(Path(path), allow_pickle=False) as z:
        meta = json.loads(str(z["__meta__"]))
        arrays = {k: np.asarray(z[k]) for k in z.files if k != "__meta__"}
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path}: decoder format version {meta.get('format_version')} is not supported "
                         f"(this rigd reads version {FORMAT_VERSION}); refit the decoder")
    return meta, arrays


def read_named_npz(path: Path, name: str) -> tuple[dict[str, Any], dict[str, npt.NDArray[Any]]]:
    """:func:`read_npz`, refusing a file that holds another decoder than ``name``."""
    meta, arrays = read_npz(path)
    if meta["name"] != name:
        raise ValueError(f"{path} holds a {meta['name']!r} decoder, not {name!r}")
    return meta, arrays


def retrain_set(previous: TrialSet | None, new: TrialSet, max_trials: int) -> TrialSet | None:
    """The trials an ``update`` refits on: previous training trials plus ``new``, the last ``max_trials``.

    None when ``new`` is empty (nothing to do).
    """
    if new.n_trials == 0:
        return None
    joined = new if previous is None else concat_trials(previous, new)
    return last_trials(joined, max_trials)


def frames_per_bin(decoder: str, bin_s: float, frame_s: float) -> int:
    """How many live frames make one training bin; ValueError unless the frame divides the bin."""
    k = round(bin_s / frame_s)
    if k < 1 or abs(k * frame_s - bin_s) > 0.01 * frame_s:
        raise ValueError(f"{decoder}: frame_s={frame_s} s must divide the training bin {bin_s} s")
    return int(k)


def trials_provenance(trials: TrialSet) -> dict[str, Any]:
    """Provenance of a fit: the trial set's own provenance plus the trials and their count."""
    prov = dict(trials.provenance)
    prov.setdefault("trials", list(range(trials.n_trials)))
    prov["n_trials"] = trials.n_trials
    return prov


def batch_values(decoder: Any, trials: TrialSet) -> FloatArray:
    """Value at every bin end (trials, bins): the decoder's own batch twin, else ``step`` frame by frame."""
    fn = getattr(decoder, "batch_values", None)
    if fn is not None:
        return np.asarray(fn(trials), dtype=np.float64)
    out = np.empty(trials.counts.shape[:2])
    times = bin_ends(trials)
    set_frame = getattr(decoder, "set_frame_s", None)
    if set_frame is not None:
        set_frame(trials.bin_s)
    for t in range(trials.n_trials):
        decoder.reset()
        for b in range(trials.counts.shape[1]):
            out[t, b] = decoder.step(trials.counts[t, b], b, float(times[b])).value
    return out


def _fit_quiet(decoder: Any, trials: TrialSet) -> None:
    fit_only = getattr(decoder, "fit_only", None)
    if fit_only is not None:
        fit_only(trials)
    else:
        decoder.fit(trials)


def cross_validate(factory: Callable[[], Decoder], trials: TrialSet, folds: int = 5,
                   label: str = "choice", seed: int = 0) -> tuple[FloatArray, FloatArray, int]:
    """Cross-validated accuracy at every bin end.

    Returns ``(bin end times, accuracy per time, number of trials scored)``; a trial is scored
    against its ``label`` (``"choice"``: the upcoming lick) when it has one (not ±0). A decoder
    that cannot be fitted on a training fold (too few trials of a side) raises ``ValueError``.
    """
    y = np.asarray(trials.choice if label == "choice" else trials.instructed)
    scored = np.flatnonzero(y != 0)
    if scored.size < 2 * folds:
        raise ValueError(f"cross-validation needs at least {2 * folds} labelled trials, got {scored.size}")
    hits = np.zeros(trials.counts.shape[1])
    for test_local in stratified_folds(y[scored], folds, seed):
        test = scored[test_local]
        train = np.setdiff1d(np.arange(trials.n_trials), test)
        dec = factory()
        _fit_quiet(dec, trials.subset(train))
        v = batch_values(dec, trials.subset(test))
        hits += np.sum(np.sign(v) == y[test][:, None], axis=0)
    return bin_ends(trials), hits / scored.size, int(scored.size)



def try_cross_validate(factory: Callable[[], Decoder], trials: TrialSet, folds: int) -> dict[str, Any]:
    """Cross-validate for a fit report; too few trials gives accuracy nan and the reason, not an error.

    Returns ``accuracy`` (mean over bin ends in the last 300 ms of the delay) and the details
    that go into :class:`FitReport`.
    """
    try:
        times, acc, n_scored = cross_validate(factory, trials, folds=folds)
    except ValueError as exc:
        return {"accuracy": float("nan"), "cv_error": str(exc), "cv_folds": folds}
    m = time_mask_times(times, LAST_DELAY_S)
    return {"accuracy": float(np.mean(acc[m])) if m.any() else float("nan"), "cv_folds": folds,
            "cv_times_s": times.tolist(), "cv_accuracy": acc.tolist(), "n_scored": n_scored,
            "accuracy_window_s": list(LAST_DELAY_S)}


class WindowedLinearDecoder:
    """Base of decoders that read ``k`` linear projections of the counts in one causal window.

    Subclasses implement :meth:`_fit_weights` (set ``W`` (k, n_units) in per-second rate units,
    ``offset`` (k,), ``combine`` (k+1,) and ``conf_scale``) and the parameter plumbing. ``step``
    is one numba call (:func:`decoders.kernels.window_project_step`) on preallocated arrays.
    The live frame width defaults to the training bin width; call :meth:`set_frame_s` when the
    stream's bins differ (the window keeps its length in seconds).
    """

    name: str = "linear"
    version: int = 1
    window_s: float

    def __init__(self, window_s: float = 0.1) -> None:
        self.window_s = float(window_s)
        self.estimate = Estimate()
        self.provenance: dict[str, Any] = {}
        self.last_report: FitReport | None = None
        self.W: FloatArray = np.zeros((0, 0))
        self.offset: FloatArray = np.zeros(0)
        self.combine: FloatArray = np.zeros(1)
        self.conf_scale = 0.0
        self.bin_s = float("nan")
        self.frame_s = float("nan")
        self._train: TrialSet | None = None
        self._lo = np.zeros(0, dtype=np.int64)
        self._hi = np.zeros(0, dtype=np.int64)
        self._ring = np.zeros((1, 1))
        self._acc = np.zeros(1)
        self._state = np.zeros(2, dtype=np.int64)
        self._out = np.zeros(3)
        self._inv_frame_s = 1.0
        self._ready = False

    # ----- fitting -----------------------------------------------------------------------
    @property
    def ready(self) -> bool:
        """True once fitted (or loaded)."""
        return self._ready

    @property
    def n_units(self) -> int:
        """Units the fitted weights expect per frame."""
        return int(self.W.shape[1])

    def _fit_weights(self, trials: TrialSet) -> dict[str, Any]:
        raise NotImplementedError

    def params(self) -> dict[str, Any]:
        """Return the constructor parameters (saved with the decoder)."""
        return {"window_s": self.window_s}

    def clone(self) -> Self:
        """Return a fresh, unfitted decoder with the same parameters."""
        return type(self)(**self.params())

    def fit(self, trials: TrialSet) -> FitReport:
        """Fit on ``trials``; the report's accuracy is cross-validated (5 folds) in the last 300 ms."""
        cv = try_cross_validate(self.clone, trials, folds=5)
        details = self._fit_weights(trials)
        self.bin_s = float(trials.bin_s)
        self._train = trials
        self.provenance = trials_provenance(trials)
        self._after_fit()
        accuracy = cv.pop("accuracy")
        details.update(cv)
        self.last_report = FitReport(self.name, trials.n_trials, accuracy, details, dict(self.provenance))
        return self.last_report

    def fit_only(self, trials: TrialSet) -> None:
        """Fit without cross-validation (what cross-validation itself and fast refits call)."""
        self._fit_weights(trials)
        self.bin_s = float(trials.bin_s)
        self._train = trials
        self.provenance = trials_provenance(trials)
        self._after_fit()

    def update(self, trials: TrialSet, max_trials: int = 400) -> FitReport | None:
        """Refit on the previous training trials plus ``trials`` (the last ``max_trials``)."""
        again = retrain_set(self._train, trials, max_trials)
        return None if again is None else self.fit(again)

    def _after_fit(self) -> None:
        k = self.W.shape[0]
        lo = np.zeros(k, dtype=np.int64)
        hi = np.zeros(k, dtype=np.int64)
        for r in range(k):
            nz = np.flatnonzero(self.W[r])
            if nz.size:
                lo[r], hi[r] = nz[0], nz[-1] + 1
        self._lo, self._hi = lo, hi
        self.W = np.ascontiguousarray(self.W, dtype=np.float64)
        self.offset = np.ascontiguousarray(self.offset, dtype=np.float64)
        self.combine = np.ascontiguousarray(self.combine, dtype=np.float64)
        self._ready = True
        self.set_frame_s(self.bin_s if math.isnan(self.frame_s) else self.frame_s)

    # ----- the hot path ------------------------------------------------------------------
    def set_frame_s(self, frame_s: float) -> None:
        """Width of the live frames (s): sizes the ring buffer and compiles the kernel (not hot)."""
        self.frame_s = float(frame_s)
        n_win = n_window(self.window_s, self.frame_s)
        k = self.W.shape[0]
        self._ring = np.zeros((n_win, k))
        self._acc = np.zeros(k)
        self._state = np.zeros(2, dtype=np.int64)
        self._out = np.zeros(k + 2)
        self._inv_frame_s = 1.0 / self.frame_s
        if self._ready:  # compile for the wire dtype (uint8) and float64 now, not on the first frame
            for dt in (np.uint8, np.float64):
                self.step(np.zeros(self.W.shape[1], dtype=dt), -1, float("nan"))
            self.reset()

    def reset(self) -> None:
        """Clear the running window (trial start)."""
        self._ring[:] = 0.0
        self._acc[:] = 0.0
        self._state[:] = 0
        e = self.estimate
        e.seq, e.t_s, e.label = -1, float("nan"), 0

    def step(self, counts: npt.NDArray[Any], seq: int, t_s: float) -> Estimate:
        """Consume one frame of counts (n_units,); returns the decoder's single Estimate."""
        e = self.estimate
        e.seq = seq
        e.t_s = t_s
        if not self._ready:
            return e
        out = self._out
        v = kernels.window_project_step(self.W, self._lo, self._hi, counts, self._ring, self._acc,
                                        self._state, self.offset, self.combine, out,
                                        self._inv_frame_s, self.conf_scale)
        e.value = v
        e.confidence = out[-1]
        e.label = 1 if v > 0.0 else -1
        if out.shape[0] == 4:
            e.left = out[0]
            e.right = out[1]
        e.ready = True
        return e

    # ----- batch twin of step (for cross-validation and reports) ------------------------
    def batch_values(self, trials: TrialSet) -> FloatArray:
        """Return the combined value at every bin end of every trial: what ``step`` reports."""
        if not self._ready:
            raise RuntimeError(f"{self.name}: fit or load the decoder before evaluating it")
        X = window_rates(trials.counts, trials.bin_s, self.window_s)
        proj = np.einsum("tbu,ku->tbk", X, self.W) - self.offset
        return np.asarray(proj @ self.combine[:-1] + self.combine[-1], dtype=np.float64)

    # ----- persistence -------------------------------------------------------------------
    def _arrays(self) -> dict[str, npt.NDArray[Any]]:
        return {"W": self.W, "offset": self.offset, "combine": self.combine}

    def _set_arrays(self, arrays: dict[str, npt.NDArray[Any]]) -> None:
        self.W, self.offset, self.combine = arrays["W"], arrays["offset"], arrays["combine"]

    def save(self, path: Path) -> None:
        """Write weights, parameters, version and provenance (see :func:`save_npz`)."""
        if not self._ready:
            raise RuntimeError(f"{self.name}: nothing to save, the decoder is not fitted")
        params = dict(self.params())
        params.update({"bin_s": self.bin_s, "conf_scale": self.conf_scale})
        report = None
        if self.last_report is not None:
            report = {"accuracy": self.last_report.accuracy, "n_trials": self.last_report.n_trials}
        save_npz(path, self.name, self.version, params=params,
                 provenance={**self.provenance, "fit_report": report}, arrays=self._arrays())

    @classmethod
    def load(cls, path: Path) -> Self:
        """Read a decoder written by :meth:`save`."""
        meta, arrays = read_named_npz(path, cls.name)
        params = dict(meta["params"])
        bin_s = float(params.pop("bin_s"))
        conf_scale = float(params.pop("conf_scale"))
        self = cls(**params)
        self._set_arrays(arrays)
        self.bin_s, self.conf_scale = bin_s, conf_scale
        self.provenance = meta["provenance"]
        self._after_fit()
        return self


def time_mask_times(times: FloatArray, t_range_s: tuple[float, float]) -> npt.NDArray[np.bool_]:
    """Select ``times`` (bin ends) inside ``(t_lo, t_hi]`` with a small tolerance."""
    eps = 1e-6
    return np.asarray((times > t_range_s[0] + eps) & (times <= t_range_s[1] + eps))

