"""The stereo recorder: channels on the call's clock, barge-in, finishing, a full disk."""

from __future__ import annotations

import os
import time
import wave
from pathlib import Path

import numpy as np

from callgate.observe.recording import StereoRecorder, prune

RATE = 24000
FRAME = RATE // 50  # 20 ms


def tone(value: int, samples: int) -> bytes:
    return np.full(samples, value, dtype="<i2").tobytes()


def read(path: Path) -> np.ndarray:  # type: ignore[type-arg]
    with wave.open(str(path)) as wav:
        assert (wav.getnchannels(), wav.getsampwidth(), wav.getframerate()) == (2, 2, RATE)
        return np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2").reshape(-1, 2)


def test_agent_audio_plays_paced_from_when_it_was_queued(tmp_path: Path) -> None:
    rec = StereoRecorder(tmp_path / "a.wav", RATE, call_id="rtc_t")
    for n in range(100):  # 2 s of caller frames, each a distinct level
        if n == 10:  # 200 ms in: a 300 ms reply arrives at once, then 100 ms more behind it
            rec.agent(tone(1000, 15 * FRAME))
            rec.agent(tone(2000, 5 * FRAME))
        rec.caller(tone(n + 1, FRAME))
    rec.close()
    stereo = read(tmp_path / "a.wav")
    assert len(stereo) == 100 * FRAME
    assert stereo[0, 0] == 1 and stereo[99 * FRAME, 0] == 100
    agent = stereo[:, 1]
    assert not agent[:10 * FRAME].any()
    assert (agent[10 * FRAME:25 * FRAME] == 1000).all()
    assert (agent[25 * FRAME:30 * FRAME] == 2000).all()
    assert not agent[30 * FRAME:].any()


def test_a_barge_in_drops_what_was_not_played(tmp_path: Path) -> None:
    rec = StereoRecorder(tmp_path / "b.wav", RATE, call_id="rtc_t")
    rec.agent(tone(500, 50 * FRAME))  # 1 s queued at the start
    for n in range(40):
        if n == 20:
            rec.cleared()  # the caller spoke 400 ms in: the rest is never heard
        rec.caller(tone(1, FRAME))
    rec.close()
    agent = read(tmp_path / "b.wav")[:, 1]
    assert (agent[:20 * FRAME] == 500).all() and not agent[20 * FRAME:].any()


def test_audio_after_the_hangup_is_not_recorded(tmp_path: Path) -> None:
    rec = StereoRecorder(tmp_path / "c.wav", RATE, call_id="rtc_t")
    rec.caller(tone(1, FRAME))
    rec.agent(tone(9, 10 * FRAME))
    rec.close()
    rec.caller(tone(1, FRAME))  # late frames after close change nothing
    assert len(read(tmp_path / "c.wav")) == FRAME


def test_a_full_disk_stops_the_recording_not_the_caller(tmp_path: Path) -> None:
    errors: list[int] = []
    rec = StereoRecorder(Path("/dev/full"), RATE, call_id="rtc_t",
                         on_error=lambda: errors.append(1))
    for _ in range(200):
        rec.caller(tone(1, FRAME))
        rec.agent(tone(2, FRAME))
    rec.close()
    assert rec.failed and errors == [1]


def test_prune_deletes_only_old_recordings(tmp_path: Path) -> None:
    old, new = tmp_path / "old.wav", tmp_path / "new.wav"
    for path in (old, new):
        path.write_bytes(b"x")
    now = time.time()
    os.utime(old, (now - 3 * 86400, now - 3 * 86400))
    assert prune(tmp_path, 2, now=now) == 1
    assert not old.exists() and new.exists()
    assert prune(tmp_path, 0, now=now) == 0  # 0 keeps everything
