"""What the live view shows, kept in bounded ring buffers fed from the recorder's writer thread.

:class:`LiveState` owns a small, bounded picture of the last few seconds of a running session:
a downsampled spike raster of both hemispheres, the decoder's CD projection per hemisphere, the
trials' epochs (for shading), light commands and their acknowledgements (light-on bars), the
per-condition outcome table, recent trials and alarms (the raster itself: rig/live_raster.py).
It is fed by :meth:`LiveState.on_span` and :meth:`LiveState.on_record`, which the live view
registers as a recorder tap: they therefore run on the recorder's writer thread, after the hot
path has handed the message off, and never on the per-frame chain; spike-count frames, the one
record of every bin, are folded in compiled code a ring span at a time, without the GIL. It
must not touch sockets, clocks or the service; readers take a JSON-ready :meth:`snapshot`
(with cursors, so a client receives only the raster columns it has not seen yet).

Times sent to the page are seconds on the rig clock since the first rig time seen (JavaScript
numbers lose nanoseconds above 2**53).
"""

from __future__ import annotations

import collections
import json
import math
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from rig import wire
from rig.conditions import canonical_condition, light_delivered, trial_condition
from rig.live_raster import ColumnRing, LiveRaster
from rig.progress import TrialStats, condition_order
from rig.record_ring import record_at
from rig.session import RIGD_RIG_ID

NS = 1_000_000_000
#: Columns of a DECODER_OUTPUT row (rig/loop.py DECODER_FIELDS).
_DEC_T_RIG, _DEC_T_S, _DEC_VALUE, _DEC_LEFT, _DEC_RIGHT = 1, 2, 3, 5, 6
#: Epoch names in trial order, with the trial_start field that plans each one's onset.
_EPOCH_FIELDS = (("sample", "t_sample_ns"), ("delay", "t_delay_ns"), ("response", "t_go_ns"))
_EPOCH_EVENTS = {"sample_on": "sample", "delay_on": "delay", "go_cue": "response"}
#: Response epoch shown for 1.3 s after the go cue (the Chen et al. 2021 alignment).
RESPONSE_SHOWN_S = 1.3


def _finite_or_none(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def is_refusal(alarm: dict[str, Any]) -> bool:
    """Tell whether an alarm is an interlock refusal (shown in red): ``light_refused``."""
    kind = str(alarm.get("alarm", ""))
    text = f"{kind} {alarm.get('message', '')} {alarm.get('reason', '')}".lower()
    return kind == "light_refused" or "refus" in text


def normalise_alarm(alarm: dict[str, Any], t_local_ns: int) -> dict[str, Any]:
    """One display form for alarms from the interlock, the loop, the rig and the supervisor."""
    kind = str(alarm.get("alarm") or alarm.get("source") or "alarm")
    message = str(alarm.get("message") or alarm.get("reason") or json.dumps(alarm, default=str)[:200])
    return {"t_local_ns": int(alarm.get("t_local_ns", t_local_ns)), "kind": kind,
            "source": str(alarm.get("source", "interlock" if "limit" in alarm else "rigd")),
            "severity": str(alarm.get("severity", "error" if is_refusal(alarm) else "warning")),
            "limit": alarm.get("limit"), "trial": alarm.get("trial"),
            "message": message, "refusal": is_refusal(alarm)}


@dataclass
class Cursor:
    """What one client has already received (monotonic column counters; -1: nothing yet)."""

    raster: int = -1
    decoder: int = -1


class LiveState:
    """Bounded live picture of a session, fed by a recorder tap.

    Args:
        window_s: seconds of history kept for the scrolling plots.
        column_s: width of one raster/decoder column (time downsampling).
        max_rows_per_hemisphere: raster rows per hemisphere; more units are summed in groups.
        max_alarms, max_recent_trials: lengths of the alarm list and the recent-trials table.

    """

    def __init__(self, window_s: float = 10.0, column_s: float = 0.02, max_rows_per_hemisphere: int = 48,
                 max_alarms: int = 100, max_recent_trials: int = 40) -> None:
        if not 0.001 <= column_s <= 1.0:
            raise ValueError(f"column_s must be within 0.001…1 s, got {column_s}")
        if not 1.0 <= window_s <= 600.0:
            raise ValueError(f"window_s must be within 1…600 s, got {window_s}")
        self.window_s = window_s
        self.column_ns = int(column_s * NS)
        self.max_rows = max_rows_per_hemisphere
        self.n_columns = math.ceil(window_s / column_s) + 1
        self._lock = threading.Lock()
        self.enabled = True
        self.t0_ns: int | None = None  #: first rig time seen (time origin of the page)
        self.t_last_ns = 0  #: latest rig time seen
        # raster
        self.rig_id: int | None = None
        self.raster = LiveRaster(self.n_columns, self.column_ns, self.max_rows)
        self.span_folded = 0  #: frames folded by the compiled span path (the rest went record by record)
        # decoder: t_s (trial time), left, right, value; plus rig time column
        self._dec = ColumnRing(self.n_columns, 5, np.float64)
        self.decoder_rows = 0
        # trials and events
        self._trials: collections.OrderedDict[int, dict[str, Any]] = collections.OrderedDict()
        self.stats = TrialStats()  #: outcomes per delivered condition (the terminal's own counting)
        self.outcomes = self.stats.by_condition
        self.recent_trials: collections.deque[dict[str, Any]] = collections.deque(maxlen=max_recent_trials)
        self.trials_done = 0
        # light
        self._light: collections.OrderedDict[int, dict[str, Any]] = collections.OrderedDict()
        self.light_commands = 0
        self.light_acks: collections.Counter[str] = collections.Counter()
        # alarms, logs
        self.alarms: collections.deque[dict[str, Any]] = collections.deque(maxlen=max_alarms)
        self.n_alarms = 0
        self.n_refusals = 0
        self.last_telemetry: dict[str, Any] = {}
        self.records_by_kind: collections.Counter[str] = collections.Counter()
        self.rig_description: dict[str, Any] = {}
        self.errors = 0

    # -- feeding (recorder writer thread) -----------------------------------------------------

    def on_record(self, header: wire.Header, payload: memoryview, t_local_ns: int) -> None:
        """Fold one recorded message into the state (the recorder tap; cheap; never raises)."""
        if not self.enabled:
            return
        with self._lock:
            self._record(header, payload, t_local_ns)

    def on_span(self, buf: npt.NDArray[np.uint8], pos: int, n: int) -> None:
        """Fold ``n`` whole records at ``buf[pos:]`` (the recorder's span tap; never raises).

        The rig's spike-count frames go through one compiled call per run of them
        (:meth:`LiveRaster.fold_span`, GIL released); every other record through :meth:`on_record`'s path.
        """
        if not self.enabled:
            return
        view = buf.data
        with self._lock:
            while n > 0:
                if self.rig_id is not None and self.t0_ns is not None:
                    k, pos, self.t_last_ns = self.raster.fold_span(buf, pos, n, self.rig_id, self.t_last_ns)
                    if k:
                        self.records_by_kind["SPIKE_COUNTS"] += k
                        self.span_folded += k
                        n -= k
                        if not n:
                            break
                hb, pb, t, pos = record_at(view, pos)
                n -= 1
                try:
                    h = wire.unpack_header(hb)
                except wire.WireError:
                    continue  # as the recorder's per-record taps: a header rigd could not parse is not shown
                self._record(h, pb, t)

    def _record(self, header: wire.Header, payload: memoryview, t_local_ns: int) -> None:
        try:
            self._on_record(header, payload, t_local_ns)
        except (wire.WireError, ValueError, TypeError, KeyError):
            self.errors += 1

    @property
    def frames(self) -> int:
        """Spike-count frames of the raster's rig folded so far."""
        return self.raster.frames

    def _see_time(self, t_ns: int) -> None:
        if t_ns <= 0:
            return
        if self.t0_ns is None:
            self.t0_ns = t_ns
        self.t_last_ns = max(self.t_last_ns, t_ns)

    def _on_record(self, h: wire.Header, payload: memoryview, t_local_ns: int) -> None:
        kind = h.kind
        self.records_by_kind[kind.name] += 1
        from_rig = h.rig_id != RIGD_RIG_ID
        if kind == wire.Kind.SPIKE_COUNTS and from_rig:
            self._on_counts(h, wire.payload_array(h, payload))
        elif kind == wire.Kind.DECODER_OUTPUT:
            self._on_decoder(wire.payload_array(h, payload))
        elif kind == wire.Kind.TRIAL_EVENT:
            self._on_event(wire.payload_json(h, payload), h.t_rig_ns)
        elif kind == wire.Kind.LIGHT_COMMAND:
            self._on_light_command(wire.unpack_light_command(payload))
        elif kind == wire.Kind.LIGHT_ACK:
            self._on_light_ack(wire.unpack_light_ack(payload))
        elif kind == wire.Kind.ALARM:
            self._on_alarm(wire.payload_json(h, payload), t_local_ns)
        elif kind == wire.Kind.LOG:
            self._on_log(wire.payload_json(h, payload))
        elif kind == wire.Kind.HEARTBEAT and from_rig and h.payload_nbytes:
            self._describe(wire.payload_json(h, payload))

    def _describe(self, desc: dict[str, Any]) -> None:
        self.rig_description = desc
        n = int(desc.get("n_units", 0))
        left = int(desc.get("units_left", n // 2))
        r = self.raster
        if n > 0 and (n != r.n_units or left != r.units_left):
            r.layout(n, left)

    def _on_counts(self, h: wire.Header, counts: npt.NDArray[Any]) -> None:
        if self.rig_id is None:
            self.rig_id = h.rig_id
        elif h.rig_id != self.rig_id:
            return  # one rig per raster: the first one seen
        c = counts.reshape(-1)
        if c.size != self.raster.n_units:
            self.raster.layout(c.size, int(self.rig_description.get("units_left", c.size // 2)))
        self._see_time(h.t_rig_ns)
        self.raster.add(h.t_rig_ns, c)

    def _on_decoder(self, rows: npt.NDArray[Any]) -> None:
        r = rows.reshape(-1, rows.shape[-1]).astype(np.float64)
        if r.shape[1] <= _DEC_RIGHT or r.shape[0] == 0:
            return
        self.decoder_rows += r.shape[0]
        t = r[:, _DEC_T_RIG]
        col = np.floor(t / self.column_ns)
        last = r[np.r_[col[1:] != col[:-1], True]]  # last row of each column
        seen = last[last[:, _DEC_T_RIG] > 0, _DEC_T_RIG]
        if seen.size:  # as _see_time row by row: the first rig time is the origin, the latest is now
            self._see_time(int(seen[0]))
            self._see_time(int(seen.max()))
        self._dec.push_many(last[:, [_DEC_T_RIG, _DEC_T_S, _DEC_LEFT, _DEC_RIGHT, _DEC_VALUE]])

    def _trial(self, k: int) -> dict[str, Any]:
        tr = self._trials.get(k)
        if tr is None:
            tr = {"trial": k, "epochs": {}}
            self._trials[k] = tr
            while len(self._trials) > 64:
                self._trials.popitem(last=False)
        return tr

    def _on_event(self, ev: dict[str, Any], t_rig_ns: int) -> None:
        name, k = ev.get("event"), ev.get("trial")
        if not isinstance(name, str) or not isinstance(k, int):
            return
        self._see_time(t_rig_ns)
        tr = self._trial(k)
        if name == "trial_start":
            tr["start"] = t_rig_ns
            tr["instructed"] = ev.get("instructed")
            for epoch, fld in _EPOCH_FIELDS:
                v = ev.get(fld)
                if isinstance(v, int) and v > 0:
                    tr["epochs"].setdefault(epoch, v)
        elif name in _EPOCH_EVENTS:
            tr["epochs"][_EPOCH_EVENTS[name]] = t_rig_ns  # the actual time beats the plan
        elif name == "outcome":
            tr["outcome"] = ev.get("outcome")
        elif name == "early_lick":
            tr["early_lick"] = t_rig_ns
        elif name == "trial_end":
            tr["end"] = t_rig_ns

    def _on_light_command(self, cmd: wire.LightCommandFields) -> None:
        self.light_commands += 1
        if cmd.action == wire.LightAction.START:
            t_on = cmd.t_start_rig_ns or cmd.cause_t_rig_ns or self.t_last_ns
            self._light[cmd.command_id] = {
                "id": cmd.command_id, "trial": cmd.trial, "t_on": t_on,
                "t_off": t_on + int(cmd.duration_s * NS), "left": cmd.spots_left > 0,
                "right": cmd.spots_right > 0, "power_mw": round(float(cmd.power_mw_per_spot), 3),
                "status": "sent", "duration_ns": int(cmd.duration_s * NS)}
            while len(self._light) > 64:
                self._light.popitem(last=False)
        else:  # RAMP_DOWN / ALL_OFF end every bar still on
            t = cmd.cause_t_rig_ns or self.t_last_ns
            ramp = int(cmd.ramp_down_s * NS) if cmd.action == wire.LightAction.RAMP_DOWN else 0
            for bar in self._light.values():
                if bar["t_on"] <= t < bar["t_off"]:
                    bar["t_off"] = t + ramp

    def _on_light_ack(self, ack: wire.LightAckFields) -> None:
        self.light_acks[ack.status.name.lower()] += 1
        bar = self._light.get(ack.command_id)
        if bar is None:
            return
        bar["status"] = ack.status.name.lower()
        if ack.status == wire.AckStatus.APPLIED and ack.t_light_change_rig_ns > 0:
            bar["t_on"] = ack.t_light_change_rig_ns
            bar["t_off"] = ack.t_light_change_rig_ns + bar["duration_ns"]

    def _on_alarm(self, alarm: dict[str, Any], t_local_ns: int) -> None:
        a = normalise_alarm(alarm, t_local_ns)
        self.alarms.append(a)
        self.n_alarms += 1
        self.n_refusals += int(a["refusal"])

    def _on_log(self, obj: dict[str, Any]) -> None:
        typ = obj.get("type")
        if typ == "trial":
            self.trials_done += 1
            cond = trial_condition(obj)  # the light delivered, not the plan (a refused perturbation is no light)
            self.stats.add(obj)
            light = obj.get("light") or {}
            self.recent_trials.append({
                "trial": obj.get("trial"), "condition": cond,
                "planned": canonical_condition(obj.get("condition")),  # rig/conditions.py's names
                "delivered": cond in ("left", "right", "bilateral"),
                "instructed": obj.get("instructed"),
                "choice": obj.get("choice"), "outcome": obj.get("outcome"),
                "light": light.get("status") if light else None,
                "refused": list(obj.get("refused") or [])})
            k = obj.get("trial")
            if isinstance(k, int) and k in self._trials:
                self._trials[k]["condition"] = cond
                self._trials[k]["outcome"] = obj.get("outcome")
        elif typ == "light_update":  # an ack after the trial's summary: recount the trial
            self.stats.add(obj)
            cond = str(obj.get("delivered_condition"))
            for row in self.recent_trials:
                if row["trial"] == obj.get("trial"):
                    row.update(condition=cond, delivered=bool(obj.get("delivered")),
                               light=obj.get("light_status"))
            k = obj.get("trial")
            if isinstance(k, int) and k in self._trials:
                self._trials[k]["condition"] = cond
        elif typ == "telemetry":
            self.last_telemetry = {"latency_us": obj.get("latency_us", {}),
                                   "counters": obj.get("counters", {})}

    # -- reading (event loop) -----------------------------------------------------------------

    def _sec(self, t_ns: float) -> float:
        return round((t_ns - (self.t0_ns or 0)) / NS, 4)

    @staticmethod
    def _response_end(tr: dict[str, Any]) -> int | None:
        go: int | None = tr["epochs"].get("response")
        if go is None:
            return None
        end = go + int(RESPONSE_SHOWN_S * NS)
        stop = int(tr.get("end", 0))
        return min(end, stop) if stop > go else end

    def outcome_table(self) -> dict[str, dict[str, float | None]]:
        """Per condition: trials, hits, errors, ignores, early licks, fraction correct of licked."""
        out: dict[str, dict[str, float | None]] = {}
        for cond in sorted(self.outcomes, key=condition_order):  # the terminal's order and names
            c = self.outcomes[cond]
            if c["n"] <= 0:  # emptied by light updates
                continue
            licked = c["hit"] + c["error"]
            out[cond] = {"n": c["n"], "hit": c["hit"], "error": c["error"], "ignore": c["ignore"],
                         "early_lick": c["early_lick"],
                         "correct": round(c["hit"] / licked, 4) if licked else None}
        return out

    def snapshot(self, cursor: Cursor | None = None) -> dict[str, Any]:
        """Return a JSON-ready picture; raster/decoder columns only after ``cursor`` (it advances)."""
        cur = cursor if cursor is not None else Cursor()
        with self._lock:
            t_now = self.t_last_ns
            lo_ns = t_now - int(self.window_s * NS)
            r = self.raster
            raster: dict[str, Any] = {"rows_left": r.rows_left, "rows_right": r.rows_right,
                                      "column_s": self.column_ns / NS, "t": [], "cols": [], "reset": True}
            if r.columns is not None and r.ends is not None:
                cols, reset = r.columns.since(cur.raster)
                ts, _ = r.ends.since(cur.raster)
                raster.update(t=[self._sec(float(t)) for t in ts[:, 0]], cols=cols.tolist(), reset=reset)
                cur.raster = r.columns.written - 1
            dec, dreset = self._dec.since(cur.decoder)
            cur.decoder = self._dec.written - 1
            decoder = {"reset": dreset, "t": [self._sec(float(x)) for x in dec[:, 0]],
                       "t_s": [_finite_or_none(float(x)) for x in dec[:, 1]],
                       "left": [_finite_or_none(float(x)) for x in dec[:, 2]],
                       "right": [_finite_or_none(float(x)) for x in dec[:, 3]],
                       "value": [_finite_or_none(float(x)) for x in dec[:, 4]]}
            epochs = []
            for tr in self._trials.values():
                e = tr["epochs"]
                bounds = [("sample", e.get("sample"), e.get("delay")),
                          ("delay", e.get("delay"), e.get("response")),
                          ("response", e.get("response"), self._response_end(tr))]
                for name, a, b in bounds:
                    if a is not None and b is not None and b >= lo_ns:
                        epochs.append({"trial": tr["trial"], "epoch": name, "t0": self._sec(a),
                                       "t1": self._sec(b), "condition": tr.get("condition"),
                                       "outcome": tr.get("outcome")})
            light = [{**{k: v for k, v in b.items() if k not in ("t_on", "t_off", "duration_ns")},
                      "t0": self._sec(b["t_on"]), "t1": self._sec(b["t_off"]),
                      "delivered": light_delivered(b["status"])}
                     for b in self._light.values() if b["t_off"] >= lo_ns]
            return {
                "t_now": self._sec(t_now) if self.t0_ns is not None else 0.0,
                "window_s": self.window_s, "frames": self.raster.frames, "decoder_rows": self.decoder_rows,
                "trials_done": self.trials_done, "raster": raster, "decoder": decoder,
                "epochs": epochs, "light": light, "outcomes": self.outcome_table(),
                "recent_trials": list(self.recent_trials)[-15:],
                "alarms": list(self.alarms)[-20:], "n_alarms": self.n_alarms, "n_refusals": self.n_refusals,
                "light_commands": self.light_commands, "light_acks": dict(self.light_acks),
                "records": dict(self.records_by_kind), "tap_errors": self.errors,
                "rig": {k: self.rig_description.get(k) for k in ("rig", "n_units", "units_left",
                                                                 "units_right", "bin_s")},
            }
