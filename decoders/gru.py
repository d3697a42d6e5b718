"""A small recurrent decoder: a torch GRU trained on sessions, stepped once per bin on the CPU.

Owns ``"gru"`` (:class:`GRUDecoder`): a single-layer GRU (default 16 hidden units) reading the
spike counts of every unit, with a linear read-out giving the log-odds of "lick right". Training
(full-batch Adam on the trials' binned counts, standardised) minimises the binary cross-entropy
of the upcoming choice at every bin of the delay, as the authors' dual-ALM RNN is trained on
every delay step (docs/simulator-rnn.md). After training the standardisation is folded into the input
weights, so ``step`` takes raw counts.

``step`` runs under ``torch.inference_mode`` with one torch thread (``torch.set_num_threads(1)``
is set when the decoder is readied; it is process-wide) and writes every intermediate into
preallocated tensors (``torch.addmv(..., out=)`` and in-place gate arithmetic), so the hidden
state persists between frames and nothing is allocated per frame. Frames finer than the
training bin are summed and the GRU steps once per training bin (the estimate holds in
between). torch is imported lazily: importing :mod:`decoders` stays cheap.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Self

import numpy as np
import numpy.typing as npt

from decoders.base import Estimate, FitReport, TrialSet
from decoders.common import (
    FloatArray,
    frames_per_bin,
    labels_of,
    read_named_npz,
    require_bins,
    retrain_set,
    save_npz,
    trials_provenance,
    try_cross_validate,
)

LOSS_S = (-1.7, 0.0)  #: bins (by their end) whose choice loss is trained: the delay


class GRUDecoder:
    """GRU over binned population counts with a per-step choice read-out (``"gru"``).

    Args:
        hidden: GRU state size.
        epochs: full-batch Adam steps.
        lr: Adam learning rate.
        weight_decay: L2 on all weights (Adam's decoupled-free form).
        seed: torch seed of the initialisation (fits are reproducible).
        cv_folds: folds of the cross-validated accuracy that ``fit`` reports (0 = skip).
        label: learn the upcoming ``"choice"`` or the ``"instructed"`` side.

    """

    name = "gru"
    version = 1

    def __init__(self, hidden: int = 16, *, epochs: int = 60, lr: float = 0.02, weight_decay: float = 1e-4,
                 seed: int = 0, cv_folds: int = 3, label: str = "choice") -> None:
        self.hidden, self.epochs, self.lr = int(hidden), int(epochs), float(lr)
        self.weight_decay, self.seed, self.cv_folds, self.label_rule = float(weight_decay), int(seed), \
            int(cv_folds), label
        self.estimate = Estimate()
        self.provenance: dict[str, Any] = {}
        self.last_report: FitReport | None = None
        self.weights: dict[str, FloatArray] = {}
        self.bin_s = float("nan")
        self.frame_s = float("nan")
        self._train: TrialSet | None = None
        self._ready = False
        self._t: dict[str, Any] = {}  # preallocated torch tensors of the hot path
        self._acc_np: npt.NDArray[np.float32] = np.zeros(0, dtype=np.float32)
        self._k = 1
        self._i = 0
        self._value = math.nan

    @property
    def ready(self) -> bool:
        """True once fitted (or loaded)."""
        return self._ready

    def params(self) -> dict[str, Any]:
        """Return the constructor parameters (saved with the decoder)."""
        return {"hidden": self.hidden, "epochs": self.epochs, "lr": self.lr,
                "weight_decay": self.weight_decay, "seed": self.seed, "cv_folds": self.cv_folds,
                "label": self.label_rule}

    def clone(self) -> GRUDecoder:
        """Return a fresh, unfitted decoder with the same parameters."""
        return GRUDecoder(**self.params())

    # ----- fitting ------------------------------------------------------------------------
    def fit_only(self, trials: TrialSet) -> None:
        """Train the GRU on ``trials`` (no cross-validation)."""
        import torch

        y = labels_of(trials, self.label_rule)
        keep = y != 0
        for cls, side in ((1, "right"), (-1, "left")):
            if np.sum(y == cls) < 2:
                raise ValueError(f"gru: {int(np.sum(y == cls))} lick-{side} trials; need at least 2")
        loss_bins = require_bins(trials, LOSS_S, "the GRU loss")
        X = trials.counts[keep].astype(np.float32)
        mu = X.mean(axis=(0, 1))
        sd = X.std(axis=(0, 1))
        sd = np.where(sd > 1e-6, sd, 1.0).astype(np.float32)
        torch.set_num_threads(1)  # rigd's loop owns the CPU; fits run beside it
        torch.manual_seed(self.seed)
        n_in = X.shape[2]
        gru = torch.nn.GRU(n_in, self.hidden, batch_first=True)
        head = torch.nn.Linear(self.hidden, 1)
        opt = torch.optim.Adam([*gru.parameters(), *head.parameters()], lr=self.lr,
                               weight_decay=self.weight_decay)
        xt = torch.from_numpy((X - mu) / sd)
        target = torch.from_numpy(np.repeat((y[keep] > 0).astype(np.float32)[:, None],
                                            int(loss_bins.sum()), axis=1))
        lb = torch.from_numpy(np.flatnonzero(loss_bins))
        bce = torch.nn.BCEWithLogitsLoss()
        for _ in range(self.epochs):
            opt.zero_grad()
            h, _ = gru(xt)
            logits = head(h[:, lb]).squeeze(-1)
            loss = bce(logits, target)
            loss.backward()
            opt.step()
        with torch.no_grad():
            par = {k_: v.detach().numpy().astype(np.float64) for k_, v in gru.named_parameters()}
            hp = {k_: v.detach().numpy().astype(np.float64) for k_, v in head.named_parameters()}
            W_ih, b_ih = par["weight_ih_l0"], par["bias_ih_l0"]
            # fold x_std = (x - mu) / sd into the input weights
            self.weights = {
                "W_ih": W_ih / sd[None, :], "b_ih": b_ih - W_ih @ (mu / sd),
                "W_hh": par["weight_hh_l0"], "b_hh": par["bias_hh_l0"],
                "w_out": hp["weight"][0], "b_out": hp["bias"],
            }
        self.final_loss = float(loss.item())
        self.bin_s = float(trials.bin_s)
        self._train = trials
        self.provenance = trials_provenance(trials)
        self._ready = True
        self.set_frame_s(self.bin_s)

    def fit(self, trials: TrialSet) -> FitReport:
        """Train; the report's accuracy is ``cv_folds``-fold cross-validated (last 300 ms of the delay)."""
        details: dict[str, Any] = {}
        accuracy = float("nan")
        if self.cv_folds >= 2:
            details = try_cross_validate(self.clone, trials, folds=self.cv_folds)
            accuracy = details.pop("accuracy")
        self.fit_only(trials)
        details["final_loss"] = self.final_loss
        self.last_report = FitReport(self.name, trials.n_trials, accuracy, details, dict(self.provenance))
        return self.last_report

    def update(self, trials: TrialSet, max_trials: int = 400) -> FitReport | None:
        """Retrain on the previous training trials plus ``trials`` (the last ``max_trials``)."""
        again = retrain_set(self._train, trials, max_trials)
        return None if again is None else self.fit(again)

    # ----- the hot path -------------------------------------------------------------------
    def set_frame_s(self, frame_s: float) -> None:
        """Live frame width (must divide the training bin); builds the preallocated tensors."""
        import torch

        k = frames_per_bin("gru", self.bin_s, frame_s)
        self.frame_s, self._k = float(frame_s), k
        torch.set_num_threads(1)
        w = {k_: torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32))
             for k_, v in self.weights.items()}
        H = self.hidden
        n_in = w["W_ih"].shape[1]
        acc = torch.zeros(n_in)
        gi, gh = torch.zeros(3 * H), torch.zeros(3 * H)
        self._t = {**w, "x": acc, "h": torch.zeros(H), "gi": gi, "gh": gh,
                   "r": torch.zeros(H), "z": torch.zeros(H), "n": torch.zeros(H), "d": torch.zeros(H),
                   "gi_r": gi[:H], "gi_z": gi[H:2 * H], "gi_n": gi[2 * H:],
                   "gh_r": gh[:H], "gh_z": gh[H:2 * H], "gh_n": gh[2 * H:], "out": torch.zeros(1)}
        self._acc_np = acc.numpy()
        self.reset()

    def reset(self) -> None:
        """Trial start: zero hidden state and frame accumulator."""
        if self._t:
            self._t["h"].zero_()
            self._t["x"].zero_()
        self._i = 0
        self._value = math.nan
        e = self.estimate
        e.seq, e.t_s, e.label, e.value, e.ready = -1, float("nan"), 0, math.nan, False
        e.confidence = 0.5

    def step(self, counts: npt.NDArray[Any], seq: int, t_s: float) -> Estimate:
        """Add the frame; every ``bin_s`` of frames advance the GRU one step and read out."""
        import torch

        e = self.estimate
        e.seq = seq
        e.t_s = t_s
        if not self._ready:
            return e
        np.add(self._acc_np, counts, out=self._acc_np, casting="unsafe")
        self._i += 1
        if self._i < self._k:
            return e
        self._i = 0
        t = self._t
        with torch.inference_mode():
            torch.addmv(t["b_ih"], t["W_ih"], t["x"], out=t["gi"])
            torch.addmv(t["b_hh"], t["W_hh"], t["h"], out=t["gh"])
            r, z, n, d, h = t["r"], t["z"], t["n"], t["d"], t["h"]
            torch.add(t["gi_r"], t["gh_r"], out=r).sigmoid_()
            torch.add(t["gi_z"], t["gh_z"], out=z).sigmoid_()
            torch.mul(r, t["gh_n"], out=n).add_(t["gi_n"]).tanh_()
            torch.sub(h, n, out=d).mul_(z)  # h' = n + z (h - n)
            h.copy_(n).add_(d)
            torch.addmv(t["b_out"], t["w_out"][None, :], h, out=t["out"])
            t["x"].zero_()
            v = t["out"].item()
        e.value = v
        e.confidence = 1.0 / (1.0 + math.exp(-min(max(v, -500.0), 500.0)))
        e.label = 1 if v > 0 else -1
        e.ready = True
        return e

    def batch_values(self, trials: TrialSet) -> FloatArray:
        """Return the log-odds at every bin end of every trial (frames = bins), as ``step`` gives."""
        import torch

        if abs(trials.bin_s - self.bin_s) > 1e-9:
            raise ValueError(f"gru: trials have bins of {trials.bin_s} s, the fit used {self.bin_s} s")
        n_in = self.weights["W_ih"].shape[1]
        gru = torch.nn.GRU(n_in, self.hidden, batch_first=True)
        with torch.no_grad():
            for name, key in (("weight_ih_l0", "W_ih"), ("bias_ih_l0", "b_ih"),
                              ("weight_hh_l0", "W_hh"), ("bias_hh_l0", "b_hh")):
                getattr(gru, name).copy_(torch.from_numpy(self.weights[key].astype(np.float32)))
            h, _ = gru(torch.from_numpy(trials.counts.astype(np.float32)))
            w = torch.from_numpy(self.weights["w_out"].astype(np.float32))
            out = (h @ w + float(self.weights["b_out"][0])).numpy()
        return np.asarray(out, dtype=np.float64)

    # ----- persistence --------------------------------------------------------------------
    def save(self, path: Path) -> None:
        """Write the folded weights, parameters, version and provenance (no pickle)."""
        if not self._ready:
            raise RuntimeError("gru: nothing to save, the decoder is not fitted")
        save_npz(path, self.name, self.version, params={**self.params(), "bin_s": self.bin_s},
                 provenance=self.provenance, arrays=dict(self.weights))

    @classmethod
    def load(cls, path: Path) -> Self:
        """Read a decoder written by :meth:`save`."""
        meta, arrays = read_named_npz(path, cls.name)
        p = dict(meta["params"])
        bin_s = float(p.pop("bin_s"))
        self = cls(**p)
        self.weights = {k: np.asarray(v, dtype=np.float64) for k, v in arrays.items()}
        self.bin_s = bin_s
        self.provenance = meta["provenance"]
        self._ready = True
        self.set_frame_s(bin_s)
        return self
