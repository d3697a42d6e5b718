"""The authors' two-hemisphere rate RNN (Chen et al., Cell 2021; Kang/Druckmann Dual-ALM RNN).

This module owns that network (docs/simulator-rnn.md): its weights (:class:`RNNWeights`, stored as a small ``.npz``
whose metadata carries the training recipe and the accuracies it reached), the torch training
recipe (:func:`train`; ``python -m sim.rnn train --out FILE`` regenerates the shipped weights
``sim/data/dual_alm_rnn_modular_seed0.npz``), and the NumPy forward step (:func:`step`,
vectorised over trials) that the simulator runs — :mod:`sim.offline` for batches,
:class:`sim.mouse.SimulatedMouse` live, one 25-ms step at a time.

The network (authors' ``TwoHemiRNNTanh`` + ``train_type_within_hemi_only``):
h ← (1 − a) h + a · tanh(W_hh h + b + W_xh x̃ + √(2/a) σ_rec ξ), N = 256 (128 per hemisphere),
dt = 25 ms, τ = 50 ms, a = 0.5; W_hh = [[W_LL, W_RL], [W_LR, W_RR]] (W_LR: left → right), within
blocks N(0, 1/N) with a bias, cross blocks N(0, 0.2²/N) without; x̃_h = g_h x + √(2/a) σ_in η_h
(a scalar per hemisphere and step, η_h its own noise) times W_xh,h ~ N(0, 1); the stimulus x is
N(±0.15, 1) i.i.d. per step during the sample, 0 otherwise; one linear readout per hemisphere
(N(0, 1/128) weights, bias 0, not trained).

Time grid (the authors'): step k = 0…124 produces the state at t_k = −3.1 + 0.025 k s from the
go cue (:data:`STEP_T_S`); the stimulus enters the steps with −3.0 ≤ t_k < −1.7, the loss is taken
at every delay step (t_k ≥ −1.7) and accuracy at the last (t = 0); the authors' test perturbation
zeroes a hemisphere's state after every step with −1.7 ≤ t_k ≤ −0.9 (:func:`spec_eps`).
In the simulator the perturbation is general: after each update h_h ← (1 − ε_h) h_h, so ε = 1 is
the authors' h = 0 and partial silencing comes from the light's dose-response. The per-hemisphere
"latent" is the hemisphere's readout logit z_h = w_h · h_h + b_h (z > 0 ≙ lick-right).

Training, file I/O and the command line are the only impure parts; the forward step takes its
random draws as arguments. torch is imported only by :func:`train`.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]

N_NEURONS = 256  #: authors' n_neurons
N_HALF = N_NEURONS // 2
DT_S = 0.025  #: authors' t_step 25 ms
TAU_S = 0.050  #: authors' tau 50 ms
A = DT_S / TAU_S  #: 0.5
T_BEGIN_S = -3.1  #: authors' trial_begin_t
T_SAMPLE_S = -3.0  #: sample onset
T_DELAY_S = -1.7  #: delay onset
PERT_S = (-1.7, -0.9)  #: test perturbation window, both ends inclusive (authors')
N_STEPS = 125  #: −3.1 … 0 s inclusive
#: time of the state each step produces, seconds from the go cue
STEP_T_S: FloatArray = np.round(T_BEGIN_S + DT_S * np.arange(N_STEPS), 6)
SAMPLE_STEPS = (STEP_T_S >= T_SAMPLE_S - 1e-9) & (STEP_T_S < T_DELAY_S - 1e-9)  #: steps 4…55
DELAY_STEPS = STEP_T_S >= T_DELAY_S - 1e-9  #: steps 56…124
PERT_STEPS = np.abs(STEP_T_S - 0.5 * (PERT_S[0] + PERT_S[1])) <= 0.5 * (PERT_S[1] - PERT_S[0]) + 1e-9  #: 56…88
NOISE_SCALE = math.sqrt(2.0 / A)  #: √(2/a) of the input and recurrent noise

DEFAULT_WEIGHTS = Path(__file__).resolve().parent / "data" / "dual_alm_rnn_modular_seed0.npz"

_DATA_STREAM = 31
_INIT_STREAM = 32
_SHUFFLE_STREAM = 33
_NOISE_STREAM = 34
_EVAL_STREAM = 35


@dataclass(frozen=True)
class Recipe:
    """How a network is trained (every default is the authors' unless noted; docs/simulator-rnn.md)."""

    seed: int = 0
    n_train: int = 5000
    n_val: int = 1000
    n_test: int = 1000
    lr: float = 1e-4
    batch: int = 256
    epochs: int = 20
    sigma_rec: float = 0.1
    sigma_in: float = 0.1
    input_mean: float = 0.15
    input_sd: float = 1.0
    cross_init: float = 0.2  #: init_cross_hemi_rel_factor
    #: "modular": only W_LL, W_RR (and their biases) trained, cross blocks frozen at init (authors');
    #: "full": every recurrent weight trained (the authors' train_type_uniform)
    training: Literal["modular", "full"] = "modular"
    threads: int = 2  #: torch CPU threads (the result does not depend on it)
    max_batches: int | None = None  #: stop after this many updates (tests of the recipe)


@dataclass(frozen=True)
class RNNWeights:
    """A trained (or initial) two-hemisphere network; arrays in float64, torch layout (out, in)."""

    w_ll: FloatArray  #: (128, 128) left → left
    w_rr: FloatArray  #: right → right
    w_lr: FloatArray  #: (128 right, 128 left) left → right (callosal)
    w_rl: FloatArray  #: (128 left, 128 right) right → left (callosal)
    b_l: FloatArray  #: (128,) bias of the left within block
    b_r: FloatArray
    wx_l: FloatArray  #: (128,) input weights of the left hemisphere
    wx_r: FloatArray
    ro_l: FloatArray  #: (128,) readout of the left hemisphere
    ro_r: FloatArray
    rb_l: float = 0.0  #: readout bias
    rb_r: float = 0.0
    meta: dict[str, Any] = field(default_factory=dict)

    @functools.cached_property
    def w_hh(self) -> FloatArray:
        """The full (256, 256) recurrent matrix [[W_LL, W_RL], [W_LR, W_RR]] (rows: targets)."""
        return np.block([[self.w_ll, self.w_rl], [self.w_lr, self.w_rr]])

    @functools.cached_property
    def w_hh_t(self) -> FloatArray:
        """W_hhᵀ, contiguous, for ``h @ W_hhᵀ`` over a batch."""
        return np.ascontiguousarray(self.w_hh.T)

    @functools.cached_property
    def bias(self) -> FloatArray:
        """(256,) recurrent bias."""
        return np.concatenate([self.b_l, self.b_r])

    def save(self, path: str | Path) -> None:
        """Write the weights (float32) and the metadata (JSON) to an .npz file."""
        arrays: dict[str, Any] = {k: np.asarray(getattr(self, k), dtype=np.float32) for k in _ARRAYS}
        arrays["rb"] = np.array([self.rb_l, self.rb_r], np.float32)
        arrays["meta"] = np.array(json.dumps(self.meta, sort_keys=True))
        np.savez_compressed(Path(path), **arrays)

    @classmethod
    def load(cls, path: str | Path) -> RNNWeights:
        """Read weights written by :meth:`save`."""
        with np.load(Path(path), allow_pickle=False) as z:
            arrays = {k: np.asarray(z[k], dtype=np.float64) for k in _ARRAYS}
            rb = np.asarray(z["rb"], dtype=np.float64)
            meta = json.loads(str(z["meta"]))
        return cls(**arrays, rb_l=float(rb[0]), rb_r=float(rb[1]), meta=meta)


_ARRAYS = ("w_ll", "w_rr", "w_lr", "w_rl", "b_l", "b_r", "wx_l", "wx_r", "ro_l", "ro_r")


@functools.cache
def load_weights(path: str | None = None) -> RNNWeights:
    """The network at ``path`` (default: the shipped modular network), loaded once per process."""
    return RNNWeights.load(path or DEFAULT_WEIGHTS)


def stimulus_params(w: RNNWeights) -> tuple[float, float, float, float]:
    """(stimulus mean, stimulus SD, σ_in, σ_rec) the network was trained with (its recipe)."""
    r = {**asdict(Recipe()), **w.meta.get("recipe", {})}
    return float(r["input_mean"]), float(r["input_sd"]), float(r["sigma_in"]), float(r["sigma_rec"])


def init_weights(seed: int, cross_init: float = 0.2) -> RNNWeights:
    """Initial weights as the authors' (NumPy draws, so the start of training is framework-independent)."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, _INIT_STREAM]))
    sd_in = 1.0 / math.sqrt(N_NEURONS)
    sd_ro = 1.0 / math.sqrt(N_HALF)
    return RNNWeights(
        w_ll=rng.normal(0.0, sd_in, (N_HALF, N_HALF)), w_rr=rng.normal(0.0, sd_in, (N_HALF, N_HALF)),
        w_lr=rng.normal(0.0, cross_init * sd_in, (N_HALF, N_HALF)),
        w_rl=rng.normal(0.0, cross_init * sd_in, (N_HALF, N_HALF)),
        b_l=np.zeros(N_HALF), b_r=np.zeros(N_HALF),
        wx_l=rng.normal(0.0, 1.0, N_HALF), wx_r=rng.normal(0.0, 1.0, N_HALF),
        ro_l=rng.normal(0.0, sd_ro, N_HALF), ro_r=rng.normal(0.0, sd_ro, N_HALF))


# -- forward pass (NumPy) ----------------------------------------------------------------------


def step(
    w: RNNWeights,
    h: FloatArray,
    *,
    x: FloatArray | float,
    in_noise_left: FloatArray,
    in_noise_right: FloatArray,
    rec_noise: FloatArray,
    gain_left: float = 1.0,
    gain_right: float = 1.0,
    eps_left: float = 0.0,
    eps_right: float = 0.0,
    sigma_in: float = 0.1,
    sigma_rec: float = 0.1,
) -> None:
    """Advance every trial of the batch by one 25-ms step, in place, then apply the light.

    Args:
        w: the network.
        h: (batch, 256) state, left hemisphere first; updated in place.
        x: the stimulus of this step per trial (0 outside the sample epoch).
        in_noise_left: (batch,) standard normals: the left hemisphere's input noise η_L.
        in_noise_right: (batch,) η_R.
        rec_noise: (batch, 256) standard normals: the recurrent noise ξ.
        gain_left: g_L, the left hemisphere's input gain (``xs_left_alm_amp``).
        gain_right: g_R.
        eps_left: silencing of the left hemisphere in this step: h_L ← (1 − ε_L) h_L after the
            update (1 = the authors' perturbation, h_L = 0).
        eps_right: ε_R.
        sigma_in: σ_in of the input noise.
        sigma_rec: σ_rec of the recurrent noise.

    """
    u_l = gain_left * np.asarray(x) + NOISE_SCALE * sigma_in * in_noise_left
    u_r = gain_right * np.asarray(x) + NOISE_SCALE * sigma_in * in_noise_right
    pre = h @ w.w_hh_t
    pre += w.bias
    pre[:, :N_HALF] += np.multiply.outer(u_l, w.wx_l)
    pre[:, N_HALF:] += np.multiply.outer(u_r, w.wx_r)
    pre += (NOISE_SCALE * sigma_rec) * rec_noise
    np.tanh(pre, out=pre)
    h *= 1.0 - A
    h += A * pre
    if eps_left:
        h[:, :N_HALF] *= 1.0 - eps_left
    if eps_right:
        h[:, N_HALF:] *= 1.0 - eps_right


def readout(w: RNNWeights, h: FloatArray) -> tuple[FloatArray, FloatArray]:
    """Readout logits (z_L, z_R) of each trial: the per-hemisphere latents (z > 0 ≙ lick-right)."""
    return h[:, :N_HALF] @ w.ro_l + w.rb_l, h[:, N_HALF:] @ w.ro_r + w.rb_r


def spec_eps(hemisphere: Literal["none", "left", "right", "bilateral"]) -> FloatArray:
    """(2, 125) ε per step of the authors' test perturbation: 1 on steps −1.7 ≤ t_k ≤ −0.9 s, else 0."""
    eps = np.zeros((2, N_STEPS))
    if hemisphere in ("left", "bilateral"):
        eps[0, PERT_STEPS] = 1.0
    if hemisphere in ("right", "bilateral"):
        eps[1, PERT_STEPS] = 1.0
    return eps


def run(w: RNNWeights, stimulus: FloatArray, rng: np.random.Generator, *,
        eps: FloatArray | None = None, gain_left: float = 1.0, gain_right: float = 1.0,
        sigma_in: float = 0.1, sigma_rec: float = 0.1) -> tuple[FloatArray, FloatArray]:
    """Run whole trials from h = 0: ``stimulus`` (n, 125) → readout logits z_L, z_R, each (n, 125).

    ``eps`` is (2, 125) silencing per step (default none). Noise is drawn from ``rng`` step by
    step (input noise of both hemispheres, then the recurrent noise), the same draws whatever ε.
    """
    n = stimulus.shape[0]
    h = np.zeros((n, N_NEURONS))
    z_l = np.zeros((n, N_STEPS))
    z_r = np.zeros((n, N_STEPS))
    e = np.zeros((2, N_STEPS)) if eps is None else eps
    for k in range(N_STEPS):
        nin = rng.standard_normal((2, n))
        nrec = rng.standard_normal((n, N_NEURONS))
        step(w, h, x=stimulus[:, k], in_noise_left=nin[0], in_noise_right=nin[1], rec_noise=nrec,
             gain_left=gain_left, gain_right=gain_right, eps_left=float(e[0, k]), eps_right=float(e[1, k]),
             sigma_in=sigma_in, sigma_rec=sigma_rec)
        z_l[:, k], z_r[:, k] = readout(w, h)
    return z_l, z_r


# -- data and training --------------------------------------------------------------------------


def make_split(recipe: Recipe, split: Literal["train", "val", "test"]) -> tuple[FloatArray, npt.NDArray[np.int8]]:
    """The balanced stimulus set of a split: (n, 125) stimuli and labels y = ±1 (+1 ≙ lick right).

    Half the trials of each split are lick-right (a random half); during the sample each step's
    stimulus is N(y · input_mean, input_sd²), 0 elsewhere (authors' recipe).
    """
    n = {"train": recipe.n_train, "val": recipe.n_val, "test": recipe.n_test}[split]
    rng = np.random.default_rng(np.random.SeedSequence([recipe.seed, _DATA_STREAM,
                                                        ("train", "val", "test").index(split)]))
    y = np.full(n, -1, dtype=np.int8)
    y[rng.permutation(n)[: n // 2]] = 1
    x = np.zeros((n, N_STEPS))
    k = int(SAMPLE_STEPS.sum())
    x[:, SAMPLE_STEPS] = y[:, None] * recipe.input_mean + recipe.input_sd * rng.standard_normal((n, k))
    return x, y


def last_step_accuracy(z_l: FloatArray, z_r: FloatArray, y: npt.NDArray[np.int8]) -> float:
    """The authors' score: mean over the two hemispheres of the last-step readout accuracy."""
    return 0.5 * (float(np.mean((z_l[:, -1] >= 0) == (y > 0))) + float(np.mean((z_r[:, -1] >= 0) == (y > 0))))


def evaluate(w: RNNWeights, recipe: Recipe, split: Literal["train", "val", "test"] = "test", *,
             seed: int = 0) -> dict[str, dict[str, float]]:
    """Readout accuracy at t = 0 under the authors' test perturbations (control, left, right, bilateral).

    Common random numbers: every condition sees the same stimuli and noise. Returns, per
    condition, the accuracy of each hemisphere's readout (``left``, ``right``), their mean
    (``mean``, the authors' score) and of the summed readout (``sum``).
    """
    x, y = make_split(recipe, split)
    out: dict[str, dict[str, float]] = {}
    for cond in ("none", "left", "right", "bilateral"):
        rng = np.random.default_rng(np.random.SeedSequence([seed, _EVAL_STREAM]))
        z_l, z_r = run(w, x, rng, eps=spec_eps(cond), sigma_in=recipe.sigma_in, sigma_rec=recipe.sigma_rec)
        acc_l = float(np.mean((z_l[:, -1] >= 0) == (y > 0)))
        acc_r = float(np.mean((z_r[:, -1] >= 0) == (y > 0)))
        acc_s = float(np.mean((z_l[:, -1] + z_r[:, -1] >= 0) == (y > 0)))
        out["control" if cond == "none" else cond] = {"left": acc_l, "right": acc_r,
                                                      "mean": 0.5 * (acc_l + acc_r), "sum": acc_s}
    return out


def torch_forward(p: dict[str, Any], x: Any, noise: Callable[[int], tuple[Any, Any]], *,
                  sigma_in: float, sigma_rec: float) -> tuple[Any, Any]:
    """The training forward pass in torch (the same equations as :func:`step` without light).

    Args:
        p: torch tensors named as :class:`RNNWeights` fields (``w_ll`` … ``ro_r``; readout biases 0).
        x: (n, 125) stimulus tensor.
        noise: called once per step with n; returns the step's (2, n) input noise and (n, 256)
            recurrent noise (standard normals), in that order.
        sigma_in: σ_in.
        sigma_rec: σ_rec.

    Returns the readout logits (z_L, z_R), each (n, 125).
    """
    import torch

    n = x.shape[0]
    w_hh = torch.cat([torch.cat([p["w_ll"], p["w_rl"]], 1), torch.cat([p["w_lr"], p["w_rr"]], 1)], 0)
    b = torch.cat([p["b_l"], p["b_r"]])
    wx = torch.cat([p["wx_l"], p["wx_r"]])
    ns_in, ns_rec = NOISE_SCALE * sigma_in, NOISE_SCALE * sigma_rec
    h = torch.zeros(n, N_NEURONS, dtype=x.dtype)
    hs = []
    for k in range(N_STEPS):
        nin, nrec = noise(n)
        u = torch.cat([(x[:, k] + ns_in * nin[0])[:, None].expand(n, N_HALF),
                       (x[:, k] + ns_in * nin[1])[:, None].expand(n, N_HALF)], 1)
        h = (1 - A) * h + A * torch.tanh(h @ w_hh.T + b + u * wx + ns_rec * nrec)
        hs.append(h)
    hh = torch.stack(hs, 1)
    return hh[..., :N_HALF] @ p["ro_l"], hh[..., N_HALF:] @ p["ro_r"]


def train(recipe: Recipe | None = None, *, log: bool = False) -> RNNWeights:
    """Train a network with ``recipe`` in torch on the CPU; deterministic from ``recipe.seed``.

    The authors' loop: Adam on the trainable recurrent parameters, shuffled mini-batches (the last
    incomplete one dropped), loss = BCE-with-logits of each hemisphere's readout against the label
    at every delay step (summed over the two hemispheres); after each epoch the score on the
    validation set (mean last-step accuracy of the two readouts) decides which epoch's weights are
    kept (the best). Initial weights, data and batch order come from NumPy streams of the seed;
    the training noise from a seeded torch generator. The returned weights carry the recipe,
    per-epoch validation scores and the test accuracies of :func:`evaluate` in ``meta``.
    """
    import torch

    r = recipe or Recipe()
    t_start = time.perf_counter()
    torch.set_num_threads(r.threads)
    w0 = init_weights(r.seed, r.cross_init)
    f32 = torch.float32

    def param(a: FloatArray, trainable: bool) -> torch.Tensor:
        return torch.tensor(np.asarray(a, np.float32), dtype=f32, requires_grad=trainable)

    modular = r.training == "modular"
    p = {"w_ll": param(w0.w_ll, True), "w_rr": param(w0.w_rr, True), "b_l": param(w0.b_l, True),
         "b_r": param(w0.b_r, True), "w_lr": param(w0.w_lr, not modular), "w_rl": param(w0.w_rl, not modular)}
    fixed = {k: param(getattr(w0, k), False) for k in ("wx_l", "wx_r", "ro_l", "ro_r")}
    opt = torch.optim.Adam([v for v in p.values() if v.requires_grad], lr=r.lr)
    bce = torch.nn.BCEWithLogitsLoss()
    gen = torch.Generator().manual_seed(int(np.random.SeedSequence([r.seed, _NOISE_STREAM]).generate_state(1)[0]))
    shuffle = np.random.default_rng(np.random.SeedSequence([r.seed, _SHUFFLE_STREAM]))
    delay = torch.from_numpy(np.flatnonzero(DELAY_STEPS))

    def noise(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        return (torch.randn(2, n, generator=gen, dtype=f32), torch.randn(n, N_NEURONS, generator=gen, dtype=f32))

    def forward(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return torch_forward({**p, **fixed}, x, noise, sigma_in=r.sigma_in, sigma_rec=r.sigma_rec)

    x_tr, y_tr = make_split(r, "train")
    x_va, y_va = make_split(r, "val")
    xt_tr = torch.from_numpy(x_tr.astype(np.float32))
    lab_tr = torch.from_numpy((y_tr > 0).astype(np.float32))
    xt_va = torch.from_numpy(x_va.astype(np.float32))
    best = (-math.inf, -1)
    best_p = {k: v.detach().clone() for k, v in p.items()}
    val_scores: list[float] = []
    losses: list[float] = []
    n_batches = r.n_train // r.batch
    updates = 0
    for epoch in range(r.epochs):
        order = shuffle.permutation(r.n_train)
        for b_i in range(n_batches):
            if r.max_batches is not None and updates >= r.max_batches:
                break
            idx = torch.from_numpy(order[b_i * r.batch:(b_i + 1) * r.batch])
            opt.zero_grad()
            z_l, z_r = forward(xt_tr[idx])
            target = lab_tr[idx][:, None].expand(-1, len(delay))
            loss = bce(z_l[:, delay], target) + bce(z_r[:, delay], target)
            loss.backward()
            opt.step()
            losses.append(float(loss.item()))
            updates += 1
        with torch.no_grad():
            zv_l, zv_r = forward(xt_va)
        score = last_step_accuracy(zv_l.numpy().astype(np.float64), zv_r.numpy().astype(np.float64), y_va)
        val_scores.append(score)
        if score > best[0]:
            best = (score, epoch)
            best_p = {k: v.detach().clone() for k, v in p.items()}
        if log:
            print(f"epoch {epoch + 1}/{r.epochs}: loss {np.mean(losses[-n_batches:]):.4f}, "
                  f"val {score:.4f} ({time.perf_counter() - t_start:.0f} s)", file=sys.stderr, flush=True)
        if r.max_batches is not None and updates >= r.max_batches:
            break
    arr = {k: v.numpy().astype(np.float64) for k, v in best_p.items()}
    w = RNNWeights(w_ll=arr["w_ll"], w_rr=arr["w_rr"], w_lr=arr["w_lr"], w_rl=arr["w_rl"], b_l=arr["b_l"],
                   b_r=arr["b_r"], wx_l=w0.wx_l, wx_r=w0.wx_r, ro_l=w0.ro_l, ro_r=w0.ro_r)
    meta: dict[str, Any] = {
        "model": "two-hemisphere tanh RNN (Chen et al., Cell 2021; Dual_ALM_RNN TwoHemiRNNTanh)",
        "recipe": asdict(r), "updates": updates, "best_epoch": best[1] + 1, "val_accuracy": best[0],
        "val_accuracy_by_epoch": val_scores, "final_train_loss": losses[-1] if losses else math.nan,
        "train_seconds": round(time.perf_counter() - t_start, 1), "torch": str(torch.__version__),
        "regenerate": "python -m sim.rnn train --out FILE" + _recipe_flags(r),
    }
    meta["test_accuracy"] = evaluate(RNNWeights(**{**_fields(w), "meta": {}}), r, "test", seed=r.seed)
    return RNNWeights(**{**_fields(w), "meta": meta})


def _fields(w: RNNWeights) -> dict[str, Any]:
    return {k: getattr(w, k) for k in (*_ARRAYS, "rb_l", "rb_r")}


def _recipe_flags(r: Recipe) -> str:
    d = Recipe()
    flags = [f" --{k.replace('_', '-')} {v}" for k, v in asdict(r).items()
             if v != getattr(d, k) and k not in ("threads",)]
    return "".join(flags)


def main(argv: list[str] | None = None) -> int:
    """``python -m sim.rnn train --out FILE [recipe options]`` and ``python -m sim.rnn evaluate FILE``."""
    ap = argparse.ArgumentParser(prog="python -m sim.rnn", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    tr = sub.add_parser("train", help="train a network and write its .npz")
    tr.add_argument("--out", type=Path, default=DEFAULT_WEIGHTS)
    d = Recipe()
    for k, v in asdict(d).items():
        if k == "training":
            tr.add_argument("--training", choices=("modular", "full"), default=v)
        elif k == "max_batches":
            tr.add_argument("--max-batches", type=int, default=None)
        else:
            tr.add_argument(f"--{k.replace('_', '-')}", type=type(v), default=v)
    ev = sub.add_parser("evaluate", help="print a network's metadata and its test accuracies (authors' perturbations)")
    ev.add_argument("file", type=Path, nargs="?", default=DEFAULT_WEIGHTS)
    a = ap.parse_args(argv)
    if a.cmd == "train":
        r = Recipe(**{k: getattr(a, k) for k in asdict(d)})
        w = train(r, log=True)
        a.out.parent.mkdir(parents=True, exist_ok=True)
        w.save(a.out)
        print(json.dumps(w.meta, indent=1))
        return 0
    w = RNNWeights.load(a.file)
    print(json.dumps(w.meta, indent=1))
    r = Recipe(**{k: v for k, v in w.meta.get("recipe", {}).items() if k in asdict(d)})
    print(json.dumps(evaluate(w, r, "test", seed=r.seed + 1), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
