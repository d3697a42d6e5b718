"""The spiking CD decoder: fits, decodes held-out trials frame by frame, saves and loads exactly."""

from __future__ import annotations

from pathlib import Path

import numpy as np

import decoders
from decoders.base import Decoder
from decoders.spiking import SpikingCD
from decoders.synthetic import make_trialset


def decode_last_bin(dec: SpikingCD, trials) -> np.ndarray:  # type: ignore[no-untyped-def]
    labels = np.zeros(trials.n_trials, np.int8)
    t = trials.times_s() + trials.bin_s
    for k in range(trials.n_trials):
        dec.reset()
        for b in range(trials.counts.shape[1]):
            e = dec.step(trials.counts[k, b], b, float(t[b]))
        labels[k] = e.label
    return labels


def test_spiking_decoder_reads_out_choice_from_held_out_trials(tmp_path: Path) -> None:
    full = make_trialset(240, 20, seed=1)
    train, held = full.subset(np.arange(160)), full.subset(np.arange(160, 240))
    dec = SpikingCD(window_s=0.1, pool_size=16)
    assert isinstance(dec, Decoder)
    rep = dec.fit(train)
    assert rep.accuracy > 0.75, rep
    acc = float(np.mean(decode_last_bin(dec, held) == held.choice))
    # the plain CodingDirection decodes these 80 held-out trials at 0.94 (75/80); the spiking readout
    # (8-bit weights, value quantised to 1/16) measured the same 0.94: ask for ≥ 0.85 (≤ 12 errors)
    assert acc >= 0.85, acc
    dec.save(tmp_path / "spk.npz")
    again = decoders.load(tmp_path / "spk.npz")
    assert isinstance(again, SpikingCD)
    sub = held.subset(np.arange(10))
    assert np.array_equal(decode_last_bin(again, sub), decode_last_bin(dec, sub))


def test_spiking_decoder_is_not_ready_before_fit() -> None:
    dec = SpikingCD()
    e = dec.step(np.zeros(40, np.uint8), 0, 0.0)
    assert not dec.ready and not e.ready and e.label == 0
