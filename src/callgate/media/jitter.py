"""Adaptive RTP jitter buffer, sans-IO and driven by the playout tick.

``put(packet, now)`` on every arrival, ``pop(now)`` once per frame (20 ms) from the shared tick. A
pop returns the packet due now, ``LOST`` when a packet should be playing but is missing (the
caller runs the codec's packet loss concealment), or ``None`` when there is nothing to play: before
playout starts, in a silence gap between talkspurts (RFC 3551 §4.1), or once concealment has run
long enough that silence is the better guess.

Timing model. Every arrival gives a transit sample ``now - ts / clock_rate`` (RFC 3550 §6.4.1:
relative transit; the unknown clock offset cancels out). The smallest transit over the last 1-2 s
is the fastest path through the network (``base``); how much later than that a packet arrives is
its jitter, whose peak over the last 5-10 s sets the target delay (clamped to
``[min_ms, max_ms]``). The frame that should play at local time ``now`` is the one with
``ts = (now - base - target) * clock_rate``; comparing it with the playout point gives the error
``e`` in frames. Sender and receiver clocks never agree exactly: a fast sender makes ``base`` fall
and ``e`` grow, so a frame is dropped now and then; a slow sender makes ``e`` fall, so a concealed
frame is inserted. Both corrections are free during silence, where they just lengthen or shorten
the gap, so that is where they are made when a gap comes in time.

Memory is a fixed ring of slots indexed by extended sequence number; nothing is allocated per
packet beyond the integers Python makes for the arithmetic.
"""

from __future__ import annotations

import enum
import math
from typing import Final

from callgate.media.rtp import RtpPacket

# RFC 3550 A.1: a sequence jump larger than this means the source restarted.
_MAX_DROPOUT: Final = 3000
# Per-packet history kept to tell a duplicate from a late packet (~10 s at 20 ms).
_HISTORY: Final = 512
# Window buckets: base transit (fastest path) and jitter peak.
_BASE_BUCKET_S: Final = 1.0
_PEAK_BUCKET_S: Final = 5.0
# A drop in the middle of speech is audible: space them out (ticks).
_DROP_SPACING: Final = 10


class Lost(enum.Enum):
    LOST = "lost"


LOST: Final = Lost.LOST
"""Returned by :meth:`JitterBuffer.pop` when a frame is missing: conceal it (codec PLC)."""


class JitterBuffer:
    """Reorders, de-duplicates and times RTP packets of one source for 20 ms playout."""

    def __init__(self, clock_rate: int, frame_ms: int = 20, min_ms: int = 40,
                 max_ms: int = 200, *, max_conceal_frames: int = 5) -> None:
        if clock_rate <= 0 or frame_ms <= 0:
            raise ValueError("clock_rate and frame_ms must be positive")
        if not 0 <= min_ms <= max_ms:
            raise ValueError("need 0 <= min_ms <= max_ms")
        self.clock_rate = clock_rate
        self.frame_ms = frame_ms
        self.min_ms = min_ms
        self.max_ms = max_ms
        self.max_conceal_frames = max_conceal_frames
        self._frame = clock_rate * frame_ms // 1000  # RTP timestamp units per frame
        self._half = self._frame // 2
        need = 2 * (max_ms // frame_ms) + 8
        cap = 16
        while cap < need:
            cap *= 2
        self._mask = cap - 1
        self._pkts: list[RtpPacket | None] = [None] * cap
        self._seqs: list[int] = [-1] * cap   # extended sequence number held by each slot
        self._tss: list[int] = [0] * cap     # extended timestamp held by each slot
        self._seen: list[int] = [-1] * _HISTORY
        self._resync_frames = max(4, max_ms // frame_ms // 2)
        self._jump_s = max(1.0, 4 * max_ms / 1000)
        self.received = self.played = self.lost = self.late = self.duplicate = 0
        self.concealed = self.inserted = self.dropped = self.resets = self.stray = 0
        self.delay_ms = 0.0
        # After a LOST for a missing packet: the packet right after it, when already here.
        # Opus carries a low-rate copy of the lost frame in it (RFC 6716 §2.1.7, in-band FEC).
        self.recovery: RtpPacket | None = None
        self._clear()

    def _clear(self) -> None:
        """Forget the source: empty the slots and the timing state (counters are kept)."""
        self._pkts[:] = [None] * len(self._pkts)
        self._seqs[:] = [-1] * len(self._seqs)
        self._seen[:] = [-1] * _HISTORY
        self._count = 0
        self._ssrc: int | None = None
        self._started = False
        self._high_seq = 0   # highest extended sequence number seen
        self._ref_ts = 0     # extended timestamp of that packet (the unwrap reference)
        self._next_seq = 0   # lowest sequence number still wanted
        self._next_ts = 0    # timestamp of the frame to play at the next pop
        self._base_prev = self._base_cur = 0.0
        self._peak_prev = self._peak_cur = 0.0
        self._base_bucket = self._peak_bucket = 0.0
        self._target = self.min_ms / 1000
        self._conceal_run = 0
        self._since_adjust = 0
        self._bad_seq = -1

    def reset(self) -> None:
        """Drop everything buffered and start over with the next packet (e.g. new remote)."""
        self._clear()

    # -- arrival ------------------------------------------------------------------------------

    def put(self, packet: RtpPacket, now: float) -> None:
        self.received += 1
        if self._ssrc is None:
            self._first(packet, now)
        elif packet.ssrc != self._ssrc:
            self._restart(packet, now)  # a new source (RFC 3550 §8.2: SSRC change)
        # Unwrap the 16-bit sequence and 32-bit timestamp around the newest packet (RFC 3550 A.1).
        delta = (packet.sequence - self._high_seq) & 0xFFFF
        seq = self._high_seq + (delta - 0x10000 if delta >= 0x8000 else delta)
        delta = (packet.timestamp - self._ref_ts) & 0xFFFFFFFF
        ts = self._ref_ts + (delta - 0x100000000 if delta >= 0x80000000 else delta)
        transit = now - ts / self.clock_rate
        base = self._base_prev if self._base_prev < self._base_cur else self._base_cur
        if abs(seq - self._high_seq) > _MAX_DROPOUT or abs(transit - base) > self._jump_s:
            # The sender's timeline jumped (restart, media switch behind an SBC). As in RFC 3550
            # A.1, believe it only when the next packet continues the new numbering: one stray
            # packet must not flush the buffer.
            if packet.sequence != self._bad_seq:
                self._bad_seq = (packet.sequence + 1) & 0xFFFF
                self.stray += 1
                return
            self._restart(packet, now)
            seq, ts = self._high_seq, self._ref_ts
            transit = now - ts / self.clock_rate
        elif seq > self._high_seq:
            self._high_seq, self._ref_ts = seq, ts
        h = seq % _HISTORY
        if self._seen[h] == seq:
            self.duplicate += 1
            return
        self._seen[h] = seq
        self._track_timing(transit, now)
        if self._started:
            if seq < self._next_seq or ts < self._next_ts - self._half:
                self.late += 1  # its turn has passed (played as loss or skipped)
                return
        elif seq < self._next_seq:
            if seq <= self._high_seq - self._mask:
                self.late += 1
                return
            self._next_seq = seq  # an earlier packet overtaken before playout began
        if seq - self._next_seq > self._mask:
            self._overflow(seq)
        i = seq & self._mask
        self._pkts[i] = packet
        self._seqs[i] = seq
        self._tss[i] = ts
        self._count += 1

    def skip(self, packet: RtpPacket) -> None:
        """Account for a packet of this source that is not audio for playout (an RFC 4733
        telephone-event, comfort noise): it uses up a sequence number, so its absence from
        playout must not count as loss. Its timestamp is not a send time (events keep their
        start timestamp), so it takes no part in the timing estimates."""
        if self._ssrc is None or packet.ssrc != self._ssrc:
            return
        delta = (packet.sequence - self._high_seq) & 0xFFFF
        seq = self._high_seq + (delta - 0x10000 if delta >= 0x8000 else delta)
        if abs(seq - self._high_seq) > _MAX_DROPOUT:
            return
        h = seq % _HISTORY
        if self._seen[h] == seq or seq < self._next_seq:
            return
        self._seen[h] = seq
        if seq > self._high_seq:
            self._high_seq = seq
        if seq - self._next_seq > self._mask:
            self._overflow(seq)
        i = seq & self._mask
        self._pkts[i] = None  # a placeholder: a slot with a number but no packet
        self._seqs[i] = seq
        self._tss[i] = 0
        self._count += 1

    def _first(self, packet: RtpPacket, now: float) -> None:
        # Extended numbers start one cycle up, so early reordered packets never go negative.
        self._ssrc = packet.ssrc
        self._high_seq = self._next_seq = packet.sequence + 0x10000
        self._ref_ts = packet.timestamp + 0x100000000
        transit = now - self._ref_ts / self.clock_rate
        self._base_prev = self._base_cur = transit
        self._base_bucket = self._peak_bucket = now

    def _restart(self, packet: RtpPacket, now: float) -> None:
        self.resets += 1
        self._clear()
        self._first(packet, now)

    def _track_timing(self, transit: float, now: float) -> None:
        """Windowed minimum transit (the fastest path) and peak jitter above it → target."""
        # Two buckets each: the window is the current bucket plus the previous one; after a
        # silence longer than both, nothing old is left to remember.
        age = now - self._base_bucket
        if age >= _BASE_BUCKET_S:
            self._base_prev = transit if age >= 2 * _BASE_BUCKET_S else self._base_cur
            self._base_cur, self._base_bucket = transit, now
        elif transit < self._base_cur:
            self._base_cur = transit
        base = self._base_prev if self._base_prev < self._base_cur else self._base_cur
        jitter = transit - base
        age = now - self._peak_bucket
        if age >= _PEAK_BUCKET_S:
            self._peak_prev = jitter if age >= 2 * _PEAK_BUCKET_S else self._peak_cur
            self._peak_cur, self._peak_bucket = jitter, now
        elif jitter > self._peak_cur:
            self._peak_cur = jitter
        peak = self._peak_prev if self._peak_prev > self._peak_cur else self._peak_cur
        # Half a frame of margin: a frame is taken up to half a frame before its ideal time.
        target = peak + self.frame_ms / 2000
        lo, hi = self.min_ms / 1000, self.max_ms / 1000
        self._target = lo if target < lo else hi if target > hi else target

    def _overflow(self, seq: int) -> None:
        """Make room for ``seq``: whatever is a full ring older is discarded unplayed."""
        keep_from = seq - self._mask
        s = self._next_seq
        while s < keep_from:
            i = s & self._mask
            if self._seqs[i] == s and self._remove(i) is not None:
                self.dropped += 1
            s += 1
        self._next_seq = keep_from

    def _remove(self, i: int) -> RtpPacket | None:
        packet = self._pkts[i]
        self._pkts[i] = None
        self._seqs[i] = -1
        self._count -= 1
        return packet

    def _head(self) -> int:
        """Slot of the lowest buffered sequence number >= the next wanted one, or -1."""
        if self._count == 0:
            return -1
        s = self._next_seq
        end = min(self._high_seq, s + self._mask)
        while s <= end:
            i = s & self._mask
            if self._seqs[i] == s:
                if self._pkts[i] is not None:
                    return i
                if s == self._next_seq:  # a placeholder whose turn has come: nothing to play
                    self._remove(i)
                    self._next_seq = s + 1
                    # The sender is sending events, not audio: an empty buffer now is
                    # silence, not loss to conceal.
                    self._conceal_run = self.max_conceal_frames
            s += 1
        return -1

    def _advance_past(self, seq: int) -> None:
        """``seq`` played or was skipped: everything before it that was not a placeholder
        never arrived in time, which is what ``lost`` counts."""
        s = self._next_seq
        while s < seq:
            i = s & self._mask
            if self._seqs[i] == s:
                self._remove(i)
            else:
                self.lost += 1
            s += 1
        self._next_seq = seq + 1

    def _missing_before(self, seq: int) -> int:
        """Audio packets (not placeholders) missing between the playout point and ``seq``."""
        missing = 0
        for s in range(self._next_seq, seq):
            if self._seqs[s & self._mask] != s:
                missing += 1
        return missing

    # -- playout ------------------------------------------------------------------------------

    def pop(self, now: float) -> RtpPacket | Lost | None:
        """The frame for this tick: a packet, ``LOST`` (conceal) or ``None`` (nothing/silence)."""
        frame, half = self._frame, self._half
        self.recovery = None
        base = self._base_prev if self._base_prev < self._base_cur else self._base_cur
        ideal = (now - base - self._target) * self.clock_rate
        head = self._head()
        if not self._started:
            if head < 0 or ideal < self._tss[head] - half:
                return None
            self._started = True
            self._next_ts = self._tss[head]
        self._since_adjust += 1
        e = (ideal - self._next_ts) / frame
        if e > self._resync_frames:
            # Far behind (the tick stalled, or we were not popped): jump to where we should be.
            while e > 0.5:
                if head < 0:  # nothing buffered to skip over: one jump
                    steps = math.ceil(e - 0.5)
                    self._next_ts += steps * frame
                    e -= steps
                    break
                if self._tss[head] < self._next_ts + half:
                    self._discard(head)
                    head = self._head()
                self._next_ts += frame
                e -= 1
        if head >= 0:
            ts = self._tss[head]
            if ts < self._next_ts + half:
                # Due now; unless a skew drop takes it, it plays.
                if e > 1.0 and self._since_adjust >= _DROP_SPACING:
                    self._discard(head)
                    self._next_ts += frame
                    self._since_adjust = 0
                    head = self._head()
                    if head < 0 or self._tss[head] >= self._next_ts + half:
                        return self._missing(head, e - 1)
                    ts = self._tss[head]
                elif e < -0.5:
                    # Playing ahead of the target: hold back one frame (conceal in its place).
                    self.inserted += 1
                    self._since_adjust = 0
                    return LOST
                return self._play(head, ts, now, base)
        return self._missing(head, e)

    def _play(self, i: int, ts: int, now: float, base: float) -> RtpPacket | None:
        self._advance_past(self._seqs[i])
        self._next_ts = ts + self._frame
        self._conceal_run = 0
        self.played += 1
        self.delay_ms = (now - base - ts / self.clock_rate) * 1000
        return self._remove(i)

    def _discard(self, i: int) -> None:
        """Skip a buffered packet without playing it (clock skew or resynchronisation)."""
        self._advance_past(self._seqs[i])
        self.dropped += 1
        self._remove(i)

    def _missing(self, head: int, e: float) -> Lost | None:
        """Nothing due at the playout point: a silence gap, or a missing packet to conceal."""
        frame, half = self._frame, self._half
        if head >= 0:
            ts = self._tss[head]
            missing = self._missing_before(self._seqs[head])
            packet = self._pkts[head]
            if missing == 0 or (packet is not None and packet.marker) or (
                    ts - missing * frame >= self._next_ts + half):
                # A gap in the timestamps, not in the sequence: the sender was silent (DTX).
                # Adapt for free here: shorten the gap when late, lengthen it when early.
                if e < -0.5:
                    return None
                self._next_ts += frame
                while e > 0.5 and self._next_ts + frame <= ts - half:
                    self._next_ts += frame
                    e -= 1
                return None
            if self._seqs[head] == self._next_seq + 1:
                self.recovery = packet
        elif e < -0.5:
            # Empty, and the playout point is already ahead of the target (catch-up ticks
            # right after a resync, before the datagrams queued meanwhile are read): this
            # frame is not due yet. Moving on would put the point ahead of every packet still
            # to come, so each would be late, the buffer would stay empty, and nothing could
            # pull the point back: the caller would go unheard for the rest of the call.
            return None
        elif self._conceal_run >= self.max_conceal_frames:
            self._next_ts += frame  # the source went quiet: silence, not endless concealment
            return None
        self._next_ts += frame
        self._conceal_run += 1
        self.concealed += 1
        return LOST

    # -- state --------------------------------------------------------------------------------

    @property
    def playing(self) -> bool:
        """True once playout has started (a pop returning None then means silence)."""
        return self._started

    @property
    def buffered(self) -> int:
        return self._count

    @property
    def target_ms(self) -> float:
        return self._target * 1000

    @property
    def stats(self) -> dict[str, int | float]:
        return {
            "received": self.received, "played": self.played, "lost": self.lost,
            "late": self.late, "duplicate": self.duplicate, "concealed": self.concealed,
            "inserted": self.inserted, "dropped": self.dropped, "resets": self.resets,
            "stray": self.stray,
            "buffered": self._count, "delay_ms": round(self.delay_ms, 1),
            "target_ms": round(self._target * 1000, 1),
        }
