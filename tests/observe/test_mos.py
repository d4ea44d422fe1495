"""The E-model against the figures ITU-T publishes for it."""

from __future__ import annotations

import pytest

from callgate.observe.mos import DEFAULT_R, estimate_mos, mos_from_r, mos_from_stats, r_factor


@pytest.mark.parametrize(("r", "mos"), [
    # G.107 Annex B, Table B.1: R at the edges of the user-satisfaction classes.
    (90, 4.34), (80, 4.03), (70, 3.60), (60, 3.10), (50, 2.58),
    (DEFAULT_R, 4.41),  # G.107 §7: the default R of 93.2 rates MOS 4.41
])
def test_mos_from_r_matches_g107(r: float, mos: float) -> None:
    assert mos_from_r(r) == pytest.approx(mos, abs=0.01)  # the table is rounded


def test_mos_is_bounded() -> None:
    assert mos_from_r(-5) == 1.0
    assert mos_from_r(0) == 1.0
    assert mos_from_r(100) == 4.5


def test_clean_g711_call_rates_the_default() -> None:
    assert r_factor(codec="PCMU", loss=0.0, delay_ms=0.0) == pytest.approx(93.2)


def test_loss_uses_g113_ie_and_bpl() -> None:
    # Ie,eff = Ie + (95 − Ie) · Ppl / (Ppl + Bpl): G.711 with PLC, Bpl 25.1 (G.113 App. I);
    # 2 % random loss costs 95·2/27.1 = 7.01.
    assert r_factor(codec="PCMA", loss=0.02, delay_ms=0) == pytest.approx(93.2 - 190 / 27.1)
    # G.729A: Ie 11, Bpl 19 → at 1 % loss, 11 + 84·1/20 = 15.2.
    assert r_factor(codec="G729", loss=0.01, delay_ms=0) == pytest.approx(93.2 - 15.2)


def test_delay_impairment_has_its_knee_at_177_ms() -> None:
    below = DEFAULT_R - r_factor(codec="PCMU", loss=0, delay_ms=150)
    above = DEFAULT_R - r_factor(codec="PCMU", loss=0, delay_ms=300)
    assert below == pytest.approx(0.024 * 150)
    assert above == pytest.approx(0.024 * 300 + 0.11 * (300 - 177.3))


def test_jitter_counts_as_buffering_delay() -> None:
    assert r_factor(codec="PCMU", loss=0, delay_ms=100, jitter_ms=40) == pytest.approx(
        r_factor(codec="PCMU", loss=0, delay_ms=180))


def test_mos_falls_with_loss() -> None:
    scores = [estimate_mos(codec="PCMU", loss=p, delay_ms=40) for p in (0, 0.01, 0.05, 0.2)]
    assert scores == sorted(scores, reverse=True)
    assert scores[0] > 4.3 > scores[2] and scores[3] < 3.0


def test_mos_from_media_stats() -> None:
    assert mos_from_stats({"codec": "PCMU", "packets_in": 0, "lost": 0}) is None
    clean = mos_from_stats({"codec": "PCMU", "packets_in": 500, "lost": 0, "late": 0,
                            "jitter_ms": 1.0, "rtt_ms": None})
    lossy = mos_from_stats({"codec": "PCMU", "packets_in": 400, "lost": 80, "late": 20,
                            "jitter_ms": 1.0, "rtt_ms": 20.0})
    assert clean is not None and lossy is not None
    assert clean > 4.3 and lossy < 3.5
    assert lossy == estimate_mos(codec="PCMU", loss=0.2, delay_ms=30, jitter_ms=1.0)
