"""Turn-taking from voice activity on both sides: who spoke when, and how the floor changed hands.

The two sides are the user (the microphone as the pipeline gets it, echo removed) and Moshi (its
audio as played).  Activity comes in per frame, each side on its own clock-aligned timeline
(monotonic milliseconds); `TurnDetector.advance` walks both on one grid of `TICK_MS` up to the
time both sides are known, so the two streams may arrive at different moments.

Per side, frame activity becomes speech *segments*: a segment starts at the first active frame,
bridges gaps shorter than `bridge_ms`, and counts only once it lasted `min_utterance_ms` (a
shorter burst is noise).  Segment edges are corrected by the VAD's measured lag
(`onset_lag_ms`, `offset_lag_ms`: the VAD's edge minus the true one).

From the segments, the events (`Turn.kind`), defined once here:

    response     the user's turn ended (a pause of `end_pause_ms` after their last speech) and
                 Moshi started speaking: latency = Moshi's onset - the end of the user's speech
                 (Moshi starting inside that pause counts, once the pause proves to end the turn)
    stop         the user started while Moshi spoke, and Moshi stopped within `yield_ms`:
                 latency = Moshi's offset - the user's onset
    kept_floor   the same, but Moshi went on speaking for `yield_ms` after the user started
    takeover     Moshi started during a user pause that the user then ended by speaking again
                 (the pause was shorter than `end_pause_ms`), and spoke `backchannel_ms` or more
    backchannel  Moshi's speech shorter than `backchannel_ms` inside the user's turn
    unanswered   the user's turn ended and they started again before Moshi said anything

The overlap share is the time both sides spoke over the time either did.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

TICK_MS = 10.0
SIDES = ("user", "moshi")
KINDS = ("response", "stop", "kept_floor", "takeover", "backchannel", "unanswered")


@dataclass(frozen=True)
class TurnOptions:
    """The thresholds of turn-taking, in milliseconds."""

    end_pause_ms: float = 600.0  # the user's silence that ends their turn
    min_utterance_ms: float = 160.0  # shorter speech is noise, not an utterance
    bridge_ms: float = 200.0  # a gap shorter than this is inside one utterance, not a pause
    backchannel_ms: float = 1000.0  # Moshi's speech inside the user's turn shorter than this
    yield_ms: float = 2000.0  # Moshi still speaking this long after the user began: kept the floor
    onset_lag_ms: float = 0.0  # the VAD's onset minus the true onset (taken out of every onset)
    offset_lag_ms: float = 0.0  # the VAD's offset minus the true offset (taken out of offsets)


@dataclass
class Turn:
    """One event of turn-taking; times in ms on the detector's clock (`TurnDetector.t0_ms` = 0)."""

    kind: str
    t_ms: float  # when it happened: Moshi's onset (response, takeover, backchannel), the
    #              user's onset (stop, kept_floor), the end of the user's speech (unanswered)
    latency_ms: float | None = None  # response and stop
    user_ms: tuple[float, float] | None = None  # the user's speech it relates to (start, end)
    moshi_ms: tuple[float, float | None] | None = None  # Moshi's segment (end None: speaking)
    # a response's part spent in the pipeline: mic -> speaker of the frame that carried Moshi's
    # first speech (the rest of its latency is the model's own wait); set by its observer
    pipeline_ms: float | None = None

    def to_dict(self) -> dict:
        d = asdict(self)
        for k in ("t_ms", "latency_ms", "pipeline_ms"):
            if d[k] is not None:
                d[k] = round(d[k], 1)
        for k in ("user_ms", "moshi_ms"):
            if d[k] is not None:
                d[k] = [None if v is None else round(v, 1) for v in d[k]]
        return d


class _Side:
    """Frame activity of one side -> speech segments (bridged, long enough), lag-corrected."""

    def __init__(self, opts: TurnOptions):
        self.o = opts
        self.frames: list[tuple[float, float, bool]] = []  # (start, end, active), in time order
        self.known_ms: float | None = None  # activity is known up to here
        self.cand: float | None = None  # first active time of an unconfirmed utterance
        self.on: float | None = None  # confirmed onset (raw), while speaking
        self.last_active: float | None = None  # end of the last active tick
        self.segments: list[tuple[float, float | None]] = []  # corrected (onset, offset|None)

    def add(self, t_ms: float, dur_ms: float, active: bool) -> None:
        if self.known_ms is not None and t_ms < self.known_ms:
            t_ms, dur_ms = self.known_ms, dur_ms - (self.known_ms - t_ms)
            if dur_ms <= 0:
                return
        self.frames.append((t_ms, t_ms + dur_ms, active))
        self.known_ms = t_ms + dur_ms

    def active_at(self, t: float) -> bool:
        fr = self.frames
        while fr and fr[0][1] <= t:
            fr.pop(0)
        return bool(fr) and fr[0][0] <= t and fr[0][2]

    def tick(self, t: float, active: bool) -> list[tuple[str, float]]:
        """Advance to tick `t` (its activity `active`): the edges that became certain."""
        out = []
        o = self.o
        if active:
            if self.on is None and self.cand is None:
                self.cand = t
            self.last_active = t + TICK_MS
            if self.on is None and self.last_active - self.cand >= o.min_utterance_ms:
                self.on = self.cand
                self.cand = None
                out.append(("on", self.on - o.onset_lag_ms))
        elif self.last_active is not None and t + TICK_MS - self.last_active >= o.bridge_ms:
            if self.on is not None:
                out.append(("off", self.last_active - o.offset_lag_ms))
            self.on = self.cand = self.last_active = None
        return out


@dataclass
class TurnSummary:
    counts: dict[str, int] = field(default_factory=dict)
    response_ms: list[float] = field(default_factory=list)
    stop_ms: list[float] = field(default_factory=list)


class TurnDetector:
    """Both sides' activity in, `Turn` events out (`turns`), each once it is certain."""

    def __init__(self, opts: TurnOptions = TurnOptions(), t0_ms: float | None = None):
        self.o = opts
        self.t0_ms = t0_ms  # the clock's zero (the first activity, unless given)
        self.sides = {s: _Side(opts) for s in SIDES}
        self.now: float | None = None  # the next tick to walk
        self.turns: list[Turn] = []
        self.segments: dict[str, list[list[float | None]]] = {s: [] for s in SIDES}
        self.both_ms = 0.0
        self.any_ms = 0.0
        self.speech_ms = dict.fromkeys(SIDES, 0.0)
        self._edges: list[tuple[float, int, str, str]] = []  # (t, order, side, on|off) pending
        # the state the edges drive
        self._user_on: float | None = None  # the user is speaking since
        self._user_off: float | None = None  # the user's last speech ended (their turn open)
        self._turn_start: float | None = None
        self._moshi_on: float | None = None  # Moshi is speaking since
        self._awaiting: float | None = None  # a user turn ended here, no answer yet
        self._in_turn: float | None = None  # Moshi's onset inside the user's turn, unresolved
        self._in_pause = False  # ... and it began while the user was silent
        self._in_turn_end: float | None = None  # ... it ended here, inside that pause
        self._resumed = False  # ... and the user spoke again: the pause was mid-turn
        self._interrupt: float | None = None  # the user began here while Moshi spoke

    # ---------------------------------------------------------------- input
    def add(self, side: str, t_ms: float, dur_ms: float, active: bool) -> None:
        """`side`'s activity over [t_ms, t_ms + dur_ms) on the monotonic clock, in ms."""
        if self.t0_ms is None:
            self.t0_ms = t_ms
        self.sides[side].add(t_ms - self.t0_ms, dur_ms, active)

    def advance(self) -> list[Turn]:
        """Walk up to where both sides are known; returns the turns that became certain."""
        known = [s.known_ms for s in self.sides.values()]
        if None in known:
            return []
        until = min(known)
        if self.now is None:
            self.now = max(0.0, min(s.frames[0][0] for s in self.sides.values() if s.frames))
        n0 = len(self.turns)
        settle = max(self.o.bridge_ms, self.o.min_utterance_ms) + TICK_MS
        while self.now + TICK_MS <= until:
            t = self.now
            act = {}
            for name, side in self.sides.items():
                act[name] = side.active_at(t)
                for kind, te in side.tick(t, act[name]):
                    self._edges.append((te, 0 if kind == "off" else 1, name, kind))
            if act["user"] and act["moshi"]:
                self.both_ms += TICK_MS
            if act["user"] or act["moshi"]:
                self.any_ms += TICK_MS
            for name in SIDES:
                if act[name]:
                    self.speech_ms[name] += TICK_MS
            self._edges.sort()
            while self._edges and self._edges[0][0] <= t - settle:
                te, _, name, kind = self._edges.pop(0)
                self._edge(name, kind, te)
            self._clock(t - settle)
            self.now = t + TICK_MS
        return self.turns[n0:]

    # ---------------------------------------------------------------- the rules
    def _emit(self, kind: str, t: float, latency: float | None = None, user=None, moshi=None):
        self.turns.append(Turn(kind, t, latency, user, moshi))

    def _moshi_seg(self):
        return (self._moshi_on, None) if self._moshi_on is not None else None

    def _edge(self, side: str, kind: str, t: float) -> None:
        segs = self.segments[side]
        if kind == "on":
            segs.append([t, None])
        elif segs:
            segs[-1][1] = t
        (self._user_edge if side == "user" else self._moshi_edge)(kind, t)

    def _user_edge(self, kind: str, t: float) -> None:
        if kind == "off":
            self._user_off, self._user_on = t, None
            return
        self._user_on = t
        if self._moshi_on is not None and self._in_turn is None:
            self._interrupt = t  # Moshi had the floor
        if self._user_off is not None:  # a pause inside the turn ended: it was mid-turn
            if self._in_turn is not None and self._in_pause:
                self._resumed = True
                if self._in_turn_end is not None:  # Moshi spoke and stopped inside the pause
                    self._resolve(self._in_turn_end)
            self._user_off = None
            return
        if self._awaiting is not None:
            self._emit("unanswered", self._awaiting, user=(self._turn_start, self._awaiting))
            self._awaiting = None
        self._turn_start = t

    def _resolve(self, end: float | None) -> None:
        """Moshi's speech that began inside the user's turn, which the turn went on past: a
        backchannel when it was short, a takeover when it began in a pause and went on."""
        on = self._in_turn
        if end is not None and end - on < self.o.backchannel_ms:
            self._emit("backchannel", on, user=(self._turn_start, None), moshi=(on, end))
        elif self._in_pause and self._resumed:
            self._emit("takeover", on, user=(self._turn_start, None), moshi=(on, end))
        self._in_turn = self._in_turn_end = None
        self._resumed = False

    def _moshi_edge(self, kind: str, t: float) -> None:
        if kind == "on":
            self._moshi_on = t
            if self._awaiting is not None:
                self._emit("response", t, t - self._awaiting, (self._turn_start, self._awaiting),
                           (t, None))
                self._awaiting = None
            elif self._in_turn is None and (self._user_on is not None or self._user_off is not None):
                self._in_turn, self._in_pause = t, self._user_on is None
                self._in_turn_end, self._resumed = None, False
            return
        on, self._moshi_on = self._moshi_on, None
        if on is None:
            return
        if self._interrupt is not None:
            self._emit("stop", self._interrupt, t - self._interrupt, (self._interrupt, None), (on, t))
            self._interrupt = None
        if self._in_turn is not None:
            if self._in_pause and not self._resumed and self._user_off is not None:
                self._in_turn_end = t  # the pause decides: response or mid-turn
            else:
                self._resolve(t)

    def _clock(self, t: float) -> None:
        """Time passed to `t` with no edge: pauses that end a turn, floors kept."""
        o = self.o
        if self._user_off is not None and t - self._user_off >= o.end_pause_ms:
            end, self._user_off = self._user_off, None
            if self._in_turn is not None and self._in_pause and not self._resumed:
                # Moshi began inside the pause that ended the turn: its answer
                on = self._in_turn
                self._emit("response", on, on - end, (self._turn_start, end),
                           (on, self._in_turn_end))
                self._in_turn = self._in_turn_end = None
            elif self._moshi_on is None and self._in_turn is None:
                self._awaiting = end
        if self._in_turn is not None and self._moshi_on is not None \
                and t - self._moshi_on >= o.backchannel_ms:
            if self._in_pause and self._resumed:
                self._resolve(None)
            elif not self._in_pause:
                self._in_turn = None  # Moshi spoke over the user at length: overlap, not a turn
        if self._interrupt is not None and self._moshi_on is not None \
                and t - self._interrupt >= o.yield_ms:
            self._emit("kept_floor", self._interrupt, user=(self._interrupt, None),
                       moshi=(self._moshi_on, None))
            self._interrupt = None

    # ---------------------------------------------------------------- readers
    @property
    def overlap_share(self) -> float | None:
        return round(self.both_ms / self.any_ms, 3) if self.any_ms else None

    def summary(self) -> TurnSummary:
        s = TurnSummary(counts=dict.fromkeys(KINDS, 0))
        for turn in self.turns:
            s.counts[turn.kind] += 1
            if turn.kind == "response":
                s.response_ms.append(turn.latency_ms)
            elif turn.kind == "stop":
                s.stop_ms.append(turn.latency_ms)
        return s
