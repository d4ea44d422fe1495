"""The local engine's voice table: OpenAI's voice names -> installed Piper voices."""

from __future__ import annotations

from callgate.config import load
from callgate.engines.local import LocalEngine
from callgate.engines.tts import OPENAI_VOICES, PiperSpeech


def session(voice: object) -> dict[str, object]:
    return {"type": "realtime", "audio": {"output": {"voice": voice}}}


def test_the_table_picks_the_voice_and_the_default_covers_openai_names() -> None:
    speech = PiperSpeech("en_US-joe-medium", voices={"marin": "/voices/amy.onnx",
                                                     "front-desk": "en_US-lessac-medium"})
    assert speech.voice_for("marin") == "/voices/amy.onnx"
    assert speech.voice_for("front-desk") == "en_US-lessac-medium"
    assert speech.voice_for("alloy") == "en_US-joe-medium"
    assert speech.voice_for("en_US-ryan-high") == "en_US-ryan-high"
    assert all(speech.knows(name) for name in OPENAI_VOICES)
    assert not speech.knows("robot")


def test_the_local_engine_refuses_a_voice_it_cannot_speak() -> None:
    engine = LocalEngine(load(voices={"front-desk": "en_US-lessac-medium"}))
    assert engine.unsupported(session("marin")) is None
    assert engine.unsupported(session("front-desk")) is None
    path, why = engine.unsupported(session("robot")) or ("", "")
    assert path == "audio.output.voice" and "CALLGATE_VOICES" in why
    assert (engine.unsupported(session({"id": "voice_1"})) or ("",))[0] == "audio.output.voice"


def test_openai_voice_names_match_the_sdk() -> None:
    import typing

    from openai.types.realtime.realtime_audio_config_output import RealtimeAudioConfigOutput

    names = {value for member in typing.get_args(
        RealtimeAudioConfigOutput.model_fields["voice"].annotation)
        for value in typing.get_args(member) if isinstance(value, str)}
    assert names == OPENAI_VOICES
