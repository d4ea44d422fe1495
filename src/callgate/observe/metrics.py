"""The gateway's Prometheus metrics.

One :class:`GatewayMetrics` per gateway, on its own registry (tests run several gateways in
one process). Labels are bounded: states, directions, SIP status codes, configured model
names, stage names and fixed reason words; never a call id or a caller's number.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["CONTENT_TYPE_LATEST", "GatewayMetrics"]

# Seconds: from a fast answer on loopback to a slow webhook or a long thinking pause.
SETUP_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
STAGE_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10)
MOS_BUCKETS = (1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 3.8, 4.0, 4.2, 4.3, 4.4, 4.5)
JITTER_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.1, 0.2)
TURN_STAGES = ("turn_detection", "stt", "llm_first_token", "tts_first_audio", "voice_to_voice")


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry(auto_describe=True)
        self.calls = Gauge("callgate_calls_in_progress",
                           "Calls in progress by state and direction.",
                           ["state", "direction"], registry=r)
        self.calls_total = Counter("callgate_calls_total", "Calls started, by direction.",
                                   ["direction"], registry=r)
        self.calls_ended = Counter("callgate_calls_ended_total",
                                   "Calls finished, by final state and direction.",
                                   ["state", "direction"], registry=r)
        self.setup = Counter("callgate_call_setup_total",
                             "Final answers to INVITEs that became calls, by SIP status.",
                             ["status"], registry=r)
        self.refused = Counter("callgate_calls_refused_total",
                               "INVITEs refused before they became calls (limits, bad "
                               "requests), by reason and SIP status.",
                               ["reason", "status"], registry=r)
        self.invite_to_answer = Histogram("callgate_invite_to_answer_seconds",
                                          "From the INVITE to the 200 OK.",
                                          buckets=SETUP_BUCKETS, registry=r)
        self.webhook = Histogram("callgate_webhook_seconds",
                                 "Webhook delivery round trip, by outcome.", ["outcome"],
                                 buckets=SETUP_BUCKETS, registry=r)
        self.webhook_failures = Counter("callgate_webhook_failures_total",
                                        "Webhook deliveries given up, by reason.", ["reason"],
                                        registry=r)
        self.sessions = Gauge("callgate_sessions_active", "Realtime sessions of calls in "
                              "progress, by model.", ["model"], registry=r)
        self.turn_stage = Histogram("callgate_turn_stage_seconds",
                                    "Where a turn's time went: turn detection, STT, LLM first "
                                    "token, TTS first audio, and voice to voice in all.",
                                    ["stage"], buckets=STAGE_BUCKETS, registry=r)
        self.rtp_packets = Counter("callgate_rtp_packets_total", "RTP packets, by direction.",
                                   ["direction"], registry=r)
        self.rtp_lost = Counter("callgate_rtp_lost_total",
                                "Inbound RTP packets lost or too late to play.", registry=r)
        self.jitter = Histogram("callgate_call_jitter_seconds",
                                "Each finished call's interarrival jitter (RFC 3550).",
                                buckets=JITTER_BUCKETS, registry=r)
        self.mos = Histogram("callgate_call_mos", "Each finished call's estimated MOS "
                             "(ITU-T G.107 E-model).", buckets=MOS_BUCKETS, registry=r)
        self.barge_ins = Counter("callgate_barge_ins_total",
                                 "Responses cut off because the caller spoke.", registry=r)
        self.tool_calls = Counter("callgate_tool_calls_total", "Function calls made by the "
                                  "model.", registry=r)
        self.transfers = Counter("callgate_transfers_total", "Transfers (/refer) that ended, "
                                 "by outcome (transferred, transfer_failed).", ["outcome"],
                                 registry=r)
        self.worker_restarts = Counter("callgate_engine_worker_restarts_total",
                                       "Engine worker processes restarted, by stage.",
                                       ["worker"], registry=r)
        self.records_dropped = Counter("callgate_records_dropped_total",
                                       "Call records not stored, by reason.", ["reason"],
                                       registry=r)
        self.recording_errors = Counter("callgate_recording_errors_total",
                                        "Recordings cut short by a write error.", registry=r)
        for stage in TURN_STAGES:  # every stage shows up from the first scrape
            self.turn_stage.labels(stage)
        for direction in ("in", "out"):
            self.rtp_packets.labels(direction)

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def state_changed(self, direction: str, old: str | None, new: str, final: bool) -> None:
        if old is not None:
            self.calls.labels(old, direction).dec()
        if final:
            self.calls_ended.labels(new, direction).inc()
        else:
            self.calls.labels(new, direction).inc()

    def turn(self, stamps: dict[str, int]) -> None:
        """One finished turn's stamps (ms after the caller stopped speaking)."""
        for stage, ms in turn_stages(stamps).items():
            self.turn_stage.labels(stage).observe(ms / 1000)


def turn_stages(stamps: dict[str, int]) -> dict[str, int]:
    """Stage durations (ms) from a turn's time points: each stage runs from the point before
    it to its own. A stage whose points are missing (no STT for text input, a tool call with
    no audio) is left out rather than guessed."""
    stages: dict[str, int] = {}
    committed = stamps.get("committed")
    heard = stamps.get("transcript_ready")
    token = stamps.get("llm_first_token")
    audio = stamps.get("tts_first_audio")
    started = stamps.get("response_created")
    if committed is not None:
        stages["turn_detection"] = committed
    if committed is not None and heard is not None:
        stages["stt"] = heard - committed
    if token is not None:
        before = max(p for p in (heard, started, 0) if p is not None)
        stages["llm_first_token"] = token - before
    if token is not None and audio is not None:
        stages["tts_first_audio"] = audio - token
    if "first_audio_out" in stamps and committed is not None:
        stages["voice_to_voice"] = stamps["first_audio_out"]
    return {name: max(ms, 0) for name, ms in stages.items()}
