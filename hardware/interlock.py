"""The light interlock: the only path from a decision to a light source (limits: docs/safety.md).

This module owns every check between "a controller (or a wire message) asks for light" and "a
command reaches the light source": power per spot (the calibrated maximum of every spot used and
the 10-mW service cap), light per trial (≤ 1.3 s including the ramp), minimum ramp-down (100 ms),
at most one light command per trial, the session's fraction of perturbed trials (checked at request
time, with a small-N allowance: at most ``f × trials + small_n_allowance`` perturbed trials), the
rolling energy budget per hemisphere (≤ 1 J per 10 min by default), galvo-spot validity (masks
within the calibrated spots, consistent with the hemisphere), the command's deadline, and the
watchdog on the service's own loop heartbeat (silent → ALL_OFF + alarm, refuse until it resumes).
With a :class:`~hardware.ledger.LightLedger` the energy and the perturbed fraction also count what the
same animal received on this rig before a restart, within the energy window.

Every check runs before any state changes; an approved request is minted (hardware.light_source
accepts nothing else) and sent whole; a refused one raises an alarm through ``on_alarm`` with the
limit, the value and the allowed value, and sends nothing. Values are checked as the rig will see
them (rounded to the wire's float32). It knows no sockets: the light source it is given does the
sending. Time is passed in.

Threads: one thread owns an interlock (the hot loop's, for a live session). Other threads read only
:attr:`LightInterlock.published`, an immutable snapshot the owner refreshes with
:meth:`LightInterlock.publish`; :meth:`LightInterlock.status` has no side effects.
"""

from __future__ import annotations

import math
import struct
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from controllers.base import LightRequest
from hardware.calibration import SafetyLimits
from hardware.ledger import LedgerHistory, LightLedger
from hardware.light_source import LightSource, MintedCommand, _token_for_interlock
from rig.wire import LightAction, LightCommandFields, Waveform

_TOKEN = _token_for_interlock()
_F32 = struct.Struct("<f")
NS = 1_000_000_000
_HEMIS = ("left", "right")


def _f32(x: float) -> float:
    """Return the value the rig receives for a float32 wire field (inf/nan pass through)."""
    try:
        return float(_F32.unpack(_F32.pack(x))[0])
    except (OverflowError, struct.error):
        return math.inf if x > 0 else -math.inf


@dataclass(frozen=True, slots=True)
class InterlockDecision:
    """The interlock's answer to one request.

    ``limit`` is a short counter key ("power", "duration", "ramp_down", "fraction", "energy_left",
    "one_per_trial", "spots", "deadline", "watchdog", …); ``reason`` says it in words with the
    value and the allowed value.
    """

    approved: bool
    command_id: int = 0
    limit: str = ""
    reason: str = ""
    value: float | None = None
    allowed: float | None = None
    command: LightCommandFields | None = None


class _RefusalError(Exception):
    def __init__(self, limit: str, reason: str, value: float | None = None, allowed: float | None = None):
        super().__init__(reason)
        self.limit, self.reason, self.value, self.allowed = limit, reason, value, allowed


def _popcount(x: int) -> int:
    return bin(x).count("1")


class LightInterlock:
    """Checks every light request against :class:`SafetyLimits` and alone talks to the light source.

    Args:
        limits: the rig's safety limits (hardware.calibration).
        source: the light source commands go to.
        on_alarm: called with an alarm dict for every refusal, watchdog trip and source failure.
        ledger: where approved light and trial starts are appended (survives a restart).
        history: what the ledger held within the energy window when this interlock was built:
            its energy counts against the budget, its trials and perturbed trials against the
            perturbed fraction.
    """

    def __init__(self, limits: SafetyLimits, source: LightSource,
                 on_alarm: Callable[[dict[str, Any]], None], *, ledger: LightLedger | None = None,
                 history: LedgerHistory | None = None) -> None:
        self.limits = limits
        self._source = source
        self._on_alarm = on_alarm
        self._next_id = 1
        self._trial = -1
        self._n_trials = 0
        self._n_perturbed = 0
        self._commanded_trial = -1
        self._energy: deque[tuple[int, int, float]] = deque()  # (t_ns, hemi 0/1, joules)
        self._last_hb: int | None = None
        self._tripped = False
        self._last_now = 0
        self.refusals: Counter[str] = Counter()
        self.n_approved = 0
        #: light approved in this interlock's life per hemisphere (left, right), J: a session's dose
        self.energy_total_j = [0.0, 0.0]
        self.alarms: deque[dict[str, Any]] = deque(maxlen=1000)  #: the most recent alarms
        self._ledger = ledger
        self.history = history or LedgerHistory()
        self._n_trials = self.history.trials
        self._n_perturbed = self.history.perturbed
        self._energy.extend(self.history.energy)
        #: the last snapshot :meth:`publish` made, for other threads (replaced whole, never mutated)
        self.published: MappingProxyType[str, Any] = MappingProxyType(self.status())

    # --- trial and heartbeat -----------------------------------------------------------------

    def on_trial_start(self, trial: int, now_ns: int | None = None) -> None:
        """Note that a new trial began (counts towards the perturbed-fraction limit)."""
        if trial > self._trial:
            self._trial = trial
            self._n_trials += 1
            if self._ledger is not None:
                self._ledger.record_trial(self._last_now if now_ns is None else now_ns, trial)

    def heartbeat(self, now_ns: int) -> None:
        """Record that the service's own loop is alive (every ≤ watchdog_s / 2); re-arms a trip."""
        self._last_hb = now_ns
        self._last_now = max(self._last_now, now_ns)
        self._tripped = False

    def check_watchdog(self, now_ns: int) -> bool:
        """Turn the light off and alarm if the service heartbeat has stalled; True while tripped."""
        self._last_now = max(self._last_now, now_ns)
        if self._tripped:
            return True
        if self._last_hb is not None and now_ns - self._last_hb > self.limits.watchdog_s * NS:
            self._tripped = True
            self.all_off("watchdog", now_ns=now_ns)
            self._alarm({"alarm": "watchdog", "limit": "watchdog",
                         "reason": f"service heartbeat silent for {(now_ns - self._last_hb) / NS:.3f} s "
                                   f"(allowed {self.limits.watchdog_s} s): light turned off",
                         "value": (now_ns - self._last_hb) / NS, "allowed": self.limits.watchdog_s,
                         "t_rig_ns": now_ns})
        return self._tripped

    def all_off(self, reason: str, *, now_ns: int = 0) -> int:
        """Send ALL_OFF at once (always allowed); returns its command id."""
        cid = self._mint_id()
        cmd = LightCommandFields(cid, 0, 0, 0, 0, 0, max(self._trial, 0), LightAction.ALL_OFF,
                                 Waveform.CONSTANT, 0, 0, 0.0, 0.0, 0.0, 0.0)
        try:
            self._source.send(MintedCommand(cmd, _TOKEN))
        except Exception as exc:
            self._alarm({"alarm": "light_source_error", "limit": "source", "reason":
                         f"ALL_OFF ({reason}) failed at the light source: {exc!r}", "t_rig_ns": now_ns})
        return cid

    # --- requests ----------------------------------------------------------------------------

    def request(self, req: LightRequest, *, now_ns: int, cause_seq: int, cause_t_rig_ns: int,
                cause_t_send_ns: int, deadline_rig_ns: int, deadline_ns: int | None = None) -> InterlockDecision:
        """Check a controller's request; if every limit holds, build the command and send it.

        ``deadline_rig_ns`` goes into the command (the rig's clock: the rig refuses to start later);
        ``deadline_ns`` is the same deadline on this process's clock (``now_ns``'s), checked here.
        Where both clocks are one (dry runs, the simulated rig on this host) it may be omitted.
        """
        wf = Waveform.SINE if req.waveform == "sine" else Waveform.CONSTANT if req.waveform == "constant" \
            else None
        return self._start(req.trial, req.hemisphere, req.power_mw_per_spot, req.duration_s,
                           req.ramp_down_s, wf, req.freq_hz, req.spots_left, req.spots_right,
                           now_ns=now_ns, cause=(cause_seq, cause_t_rig_ns, cause_t_send_ns),
                           deadline_rig_ns=deadline_rig_ns, condition=req.condition,
                           deadline_ns=deadline_rig_ns if deadline_ns is None else deadline_ns)

    def request_command(self, cmd: LightCommandFields, *, now_ns: int) -> InterlockDecision:
        """Check a raw wire-style command (e.g. forwarded from elsewhere) exactly like a request.

        ALL_OFF and RAMP_DOWN only reduce light and are always passed on (re-minted); START goes
        through every check, its hemisphere taken from the spot masks.
        """
        action = cmd.action
        if action in (LightAction.ALL_OFF, LightAction.RAMP_DOWN):
            cid = self._mint_id()
            if action == LightAction.ALL_OFF:
                return InterlockDecision(True, self.all_off("requested", now_ns=now_ns))
            off = LightCommandFields(cid, 0, 0, 0, 0, 0, max(self._trial, 0), LightAction.RAMP_DOWN,
                                     Waveform.CONSTANT, 0, 0, 0.0, 0.0, 0.0, 0.0)
            self._source.send(MintedCommand(off, _TOKEN))
            return InterlockDecision(True, cid, command=off)
        sl, sr = cmd.spots_left, cmd.spots_right
        hemi = "bilateral" if (sl and sr) else "left" if sl else "right" if sr else "none"
        wf = cmd.waveform if isinstance(cmd.waveform, Waveform) else None
        if action != LightAction.START:
            ref = _RefusalError("action", f"unknown light action {action!r}")
            return self._refuse(ref, cmd.trial, now_ns, "")
        return self._start(cmd.trial, hemi, cmd.power_mw_per_spot, cmd.duration_s, cmd.ramp_down_s, wf,
                           cmd.freq_hz, sl, sr, now_ns=now_ns,
                           cause=(cmd.cause_seq, cmd.cause_t_rig_ns, cmd.cause_t_send_ns),
                           deadline_rig_ns=cmd.deadline_rig_ns, condition="wire", deadline_ns=cmd.deadline_rig_ns)

    def _start(self, trial: int, hemisphere: str, power: float, duration: float, ramp: float,
               waveform: Waveform | None, freq: float, spots_left: int, spots_right: int, *,
               now_ns: int, cause: tuple[int, int, int], deadline_rig_ns: int,
               condition: str, deadline_ns: int) -> InterlockDecision:
        self._last_now = max(self._last_now, now_ns)
        try:
            p, d, r, f, joules = self._check(trial, hemisphere, power, duration, ramp, waveform, freq,
                                             spots_left, spots_right, now_ns, deadline_ns)
        except _RefusalError as ref:
            return self._refuse(ref, trial, now_ns, condition)
        # every check passed: commit, then send the whole command
        assert waveform is not None
        cid = self._mint_id()
        cmd = LightCommandFields(cid, cause[0], cause[1], cause[2], deadline_rig_ns, 0, trial,
                                 LightAction.START, waveform, spots_left, spots_right, p, d, r, f)
        self._commanded_trial = trial
        self._n_perturbed += 1
        for h, mask in enumerate((spots_left, spots_right)):
            if mask:
                self._energy.append((now_ns, h, joules[h]))
                self.energy_total_j[h] += joules[h]
        if self._ledger is not None:  # before the send: light the ledger does not know is never sent
            self._ledger.record_light(now_ns, trial, cid, joules)
        try:
            self._source.send(MintedCommand(cmd, _TOKEN))
        except Exception as exc:
            self._alarm({"alarm": "light_source_error", "limit": "source", "trial": trial,
                         "reason": f"light source failed on command {cid}: {exc!r}; sending ALL_OFF",
                         "t_rig_ns": now_ns})
            self.all_off("source_error", now_ns=now_ns)
            self.refusals["source"] += 1
            return InterlockDecision(False, cid, "source", f"light source failed: {exc!r}")
        self.n_approved += 1
        return InterlockDecision(True, cid, command=cmd)

    def _check(self, trial: int, hemisphere: str, power: float, duration: float, ramp: float,
               waveform: Waveform | None, freq: float, sl: int, sr: int, now_ns: int,
               deadline_ns: int) -> tuple[float, float, float, float, tuple[float, float]]:
        lim = self.limits
        if self._tripped or self._last_hb is None or now_ns - self._last_hb > lim.watchdog_s * NS:
            age = None if self._last_hb is None else (now_ns - self._last_hb) / NS
            raise _RefusalError("watchdog", "service heartbeat " + ("never received" if age is None else
                           f"silent for {age:.3f} s") + f" (allowed {lim.watchdog_s} s)", age, lim.watchdog_s)
        if self._trial < 0 or trial != self._trial:
            raise _RefusalError("trial", f"request for trial {trial} but the current trial is {self._trial}",
                           trial, self._trial)
        if deadline_ns < now_ns:
            late = (now_ns - deadline_ns) / 1e6
            raise _RefusalError("deadline", f"decision is {late:.3f} ms past its deadline: late decision → "
                           "no light", late, 0.0)
        if self._commanded_trial == trial:
            raise _RefusalError("one_per_trial", f"trial {trial} already had its light command "
                           "(at most 1 per trial)", 2, 1)
        if waveform not in (Waveform.SINE, Waveform.CONSTANT):
            raise _RefusalError("waveform", f"waveform {waveform!r} is not sine or constant")
        f = _f32(freq)
        if waveform == Waveform.SINE and not 0 < f <= lim.max_freq_hz:
            raise _RefusalError("freq", f"freq_hz = {freq} outside (0, {lim.max_freq_hz}] Hz", f,
                                lim.max_freq_hz)
        if waveform == Waveform.CONSTANT:
            f = 0.0
        for name, mask, hemi in (("spots_left", sl, "left"), ("spots_right", sr, "right")):
            allowed = lim.spot_mask(hemi)
            if not isinstance(mask, int) or mask < 0 or mask & ~allowed:
                raise _RefusalError("spots", f"{name} = {mask!r} uses spots outside the calibrated mask "
                               f"{allowed:#b}", mask if isinstance(mask, int) else None, allowed)
        want = {"left": (True, False), "right": (False, True), "bilateral": (True, True)}.get(hemisphere)
        if want is None or want != (sl != 0, sr != 0):
            raise _RefusalError("spots", f"hemisphere {hemisphere!r} does not match spot masks left={sl:#b} "
                           f"right={sr:#b} (each lit hemisphere needs ≥ 1 spot, the other none)")
        p, d, r = _f32(power), _f32(duration), _f32(ramp)
        cap = lim.power_cap_mw(sl, sr)
        if not (p > 0 and p <= cap):
            which = "service cap" if cap == lim.max_power_mw_per_spot else "calibrated spot maximum"
            raise _RefusalError("power", f"power_mw_per_spot = {power} outside (0, {cap}] mW ({which})",
                                p, cap)
        if not (d > 0 and d <= lim.max_continuous_s):
            raise _RefusalError("duration", f"duration_s = {duration} outside (0, {lim.max_continuous_s}] s "
                           "(maximum continuous light per trial)", d, lim.max_continuous_s)
        if not (r >= lim.min_ramp_down_s and r <= d):
            raise _RefusalError("ramp_down", f"ramp_down_s = {ramp} outside [{lim.min_ramp_down_s}, "
                           f"duration_s = {d}] s (minimum linear ramp-down)", r, lim.min_ramp_down_s)
        allowed_n = lim.max_fraction_perturbed * self._n_trials + lim.small_n_allowance
        if self._n_perturbed + 1 > allowed_n:
            raise _RefusalError("fraction", f"perturbing trial {trial} would make {self._n_perturbed + 1} of "
                           f"{self._n_trials} trials perturbed; allowed {lim.max_fraction_perturbed:.0%} "
                           f"+ {lim.small_n_allowance} = {math.floor(allowed_n)}",
                           (self._n_perturbed + 1) / max(self._n_trials, 1), lim.max_fraction_perturbed)
        # conservative energy: full power over the whole duration (the ramp counted as full power)
        joules = (p * 1e-3 * _popcount(sl) * d, p * 1e-3 * _popcount(sr) * d)
        self._prune_energy(now_ns)
        used = self._energy_used(now_ns)
        for h in (0, 1):
            if joules[h] > 0 and used[h] + joules[h] > lim.energy_budget_j:
                raise _RefusalError(f"energy_{_HEMIS[h]}", f"{_HEMIS[h]} hemisphere energy would reach "
                               f"{used[h] + joules[h]:.4f} J in {lim.energy_window_s:.0f} s; allowed "
                               f"{lim.energy_budget_j} J", used[h] + joules[h], lim.energy_budget_j)
        return p, d, r, f, joules

    def _prune_energy(self, now_ns: int) -> None:
        """Forget light older than the energy window (owner thread only)."""
        horizon = now_ns - int(self.limits.energy_window_s * NS)
        while self._energy and self._energy[0][0] <= horizon:
            self._energy.popleft()

    def _energy_used(self, now_ns: int) -> tuple[float, float]:
        """Energy per hemisphere within the window ending at ``now_ns`` (reads only)."""
        horizon = now_ns - int(self.limits.energy_window_s * NS)
        used = [0.0, 0.0]
        for t, h, j in self._energy:
            if horizon < t <= now_ns:
                used[h] += j
        return used[0], used[1]

    def _refuse(self, ref: _RefusalError, trial: int, now_ns: int, condition: str) -> InterlockDecision:
        self.refusals[ref.limit] += 1
        self._alarm({"alarm": "light_refused", "limit": ref.limit, "reason": ref.reason, "value": ref.value,
                     "allowed": ref.allowed, "trial": trial, "condition": condition, "t_rig_ns": now_ns})
        return InterlockDecision(False, 0, ref.limit, ref.reason, ref.value, ref.allowed)

    def _alarm(self, alarm: dict[str, Any]) -> None:
        self.alarms.append(alarm)
        try:
            self._on_alarm(alarm)
        except Exception:  # an alarm sink failing must not stop the interlock
            self.refusals["alarm_sink_error"] += 1

    def _mint_id(self) -> int:
        cid = self._next_id
        self._next_id += 1
        return cid

    def status(self) -> dict[str, Any]:
        """Limits, energy used per hemisphere in the rolling window, counts and refusals by reason.

        Reads only (no pruning, no side effects); call it on the owner thread, or read
        :attr:`published` from any other.
        """
        used = self._energy_used(self._last_now)
        return {
            "limits": self.limits.model_dump(),
            "energy_used_j": {"left": used[0], "right": used[1]},
            "energy_budget_j": self.limits.energy_budget_j,
            "trials": self._n_trials, "perturbed": self._n_perturbed, "approved": self.n_approved,
            "refusals": dict(self.refusals), "watchdog_tripped": self._tripped,
            "alarms": len(self.alarms),
            "before_restart": {"trials": self.history.trials, "perturbed": self.history.perturbed,
                               "energy_j": round(sum(e[2] for e in self.history.energy), 6),
                               "ledger": self.history.path},
        }

    def publish(self) -> MappingProxyType[str, Any]:
        """Refresh :attr:`published` (owner thread): the snapshot other threads read."""
        self.published = MappingProxyType(self.status())
        return self.published
