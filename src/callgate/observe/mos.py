"""Estimated call quality: the ITU-T G.107 E-model, reduced to what RTP statistics give.

R = R0 − Is − Id − Ie,eff + A with the standard defaults for everything a gateway cannot
measure (room noise, sidetone, loudness): that leaves 93.2 (G.107 §7, the default R). Delay
impairment uses the common closed form of G.107's Id for a well-echo-cancelled line (Cole &
Rosenbluth, "Voice over IP performance monitoring", 2001): Id = 0.024·d + 0.11·(d − 177.3)
for d above 177.3 ms. Packet loss enters through Ie,eff (G.107 eq. 7-29) with each codec's
equipment impairment Ie and loss robustness Bpl from ITU-T G.113 Appendix I. Jitter is
counted as the delay a buffer must add to absorb it (twice the RFC 3550 estimate), since
callgate's jitter buffer conceals what arrives later than that as loss.

The E-model is a narrowband planning tool: G.722 and Opus are rated with G.711's figures,
which understates them a little but keeps the scale the same for every call.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_R = 93.2  # G.107 §7: R with every parameter at its default value


@dataclass(frozen=True, slots=True)
class CodecImpairment:
    ie: float   # equipment impairment factor with no loss
    bpl: float  # packet-loss robustness factor


# ITU-T G.113 Appendix I, Table I.1 (Ie) and Table I.3 (Bpl, random loss).
G711_PLC = CodecImpairment(ie=0.0, bpl=25.1)      # G.711 with Appendix I concealment
G711_NO_PLC = CodecImpairment(ie=0.0, bpl=4.3)
G729A = CodecImpairment(ie=11.0, bpl=19.0)
CODECS: dict[str, CodecImpairment] = {
    "pcmu": G711_PLC, "pcma": G711_PLC, "g722": G711_PLC, "opus": G711_PLC, "g729": G729A,
}


def r_factor(*, codec: str | None, loss: float, delay_ms: float, jitter_ms: float = 0.0,
             burst_ratio: float = 1.0) -> float:
    """The transmission rating R (0–100).

    ``loss``: the fraction of packets lost (0–1); ``delay_ms``: one-way mouth-to-ear delay
    without jitter; ``jitter_ms``: the RFC 3550 interarrival jitter estimate."""
    impairment = CODECS.get((codec or "").lower(), G711_PLC)
    ppl = min(max(loss, 0.0), 1.0) * 100
    ie_eff = impairment.ie + (95 - impairment.ie) * ppl / (ppl / burst_ratio + impairment.bpl)
    d = max(delay_ms, 0.0) + 2 * max(jitter_ms, 0.0)
    i_d = 0.024 * d + (0.11 * (d - 177.3) if d > 177.3 else 0.0)
    return min(max(DEFAULT_R - i_d - ie_eff, 0.0), 100.0)


def mos_from_r(r: float) -> float:
    """G.107 Annex B (eq. B-4): the estimated mean opinion score, 1.0–4.5, for a rating R."""
    if r <= 0:
        return 1.0
    if r >= 100:
        return 4.5
    return 1 + 0.035 * r + r * (r - 60) * (100 - r) * 7e-6


def estimate_mos(*, codec: str | None, loss: float, delay_ms: float,
                 jitter_ms: float = 0.0) -> float:
    return round(mos_from_r(r_factor(codec=codec, loss=loss, delay_ms=delay_ms,
                                     jitter_ms=jitter_ms)), 2)


def mos_from_stats(stats: dict[str, object]) -> float | None:
    """The estimate for one call's media statistics (``MediaStream.stats``); None before any
    audio arrived. Loss counts packets that never came and those that came too late to play;
    delay is half the RTCP round trip when known plus one 20 ms frame of packetisation."""
    received = _number(stats.get("packets_in"))
    lost = _number(stats.get("lost")) + _number(stats.get("late"))
    if received + lost <= 0:
        return None
    return estimate_mos(codec=str(stats.get("codec") or ""),
                        loss=lost / (received + lost),
                        delay_ms=_number(stats.get("rtt_ms")) / 2 + 20,
                        jitter_ms=_number(stats.get("jitter_ms")))


def _number(value: object) -> float:
    return float(value) if isinstance(value, int | float) else 0.0
