"""Which GA session settings a cascade engine (STT -> LLM -> TTS) cannot carry out.

The session asks its engine (``Engine.unsupported``) before it takes a configuration, and
refuses a setting the engine cannot honour with an error naming it: an application written
for OpenAI must never believe a setting took effect when it did not. What a cascade does
honour is listed in docs/session-fields.md.
"""

from __future__ import annotations

import re
import typing
from typing import Any

from openai.types.realtime.audio_transcription import AudioTranscription

# OpenAI's transcription model names: each selects the engine's own speech recogniser, as
# OpenAI's realtime model names select the default engine.
OPENAI_TRANSCRIPTION_MODELS = frozenset(
    value for member in typing.get_args(AudioTranscription.model_fields["model"].annotation)
    for value in typing.get_args(member) if isinstance(value, str))

Unsupported = tuple[str, str]  # (dotted GA path, why)
ISO_639_1 = re.compile(r"[a-z]{2}\Z")  # what OpenAI and Whisper take as a language


def cascade_unsupported(session: dict[str, Any]) -> Unsupported | None:
    """The first setting of ``session`` that a cascade engine cannot carry out, or None."""
    if session.get("prompt") is not None:
        return "prompt", ("stored prompts live in OpenAI's dashboard; send the prompt's text "
                          "as 'instructions' instead")
    if session.get("include"):
        return "include", ("the speech recogniser here reports no per-token log "
                           "probabilities")
    if session.get("reasoning") is not None:
        return "reasoning", "the language model here takes no reasoning effort"
    if session.get("parallel_tool_calls") is False:
        return "parallel_tool_calls", ("the language model here may call several tools at "
                                       "once; it cannot be told not to")
    for index, tool in enumerate(session.get("tools") or []):
        if tool.get("type") == "mcp" and not tool.get("server_url"):
            return f"tools[{index}].server_url", ("OpenAI's connectors are not served here; "
                                                  "give the MCP server's URL")
        if tool.get("type") not in ("function", "mcp"):
            return f"tools[{index}].type", f"{tool.get('type')!r} tools are not served here"
    choice = session.get("tool_choice")
    if isinstance(choice, dict) and choice.get("type") != "function":
        return "tool_choice.type", f"{choice.get('type')!r} tool choice is not served here"
    audio_in = (session.get("audio") or {}).get("input") or {}
    if audio_in.get("noise_reduction") is not None:
        return "audio.input.noise_reduction", ("no noise reduction runs here; set it to null "
                                               "(a phone line's audio is already filtered)")
    transcription = audio_in.get("transcription") or {}
    model = transcription.get("model")
    if model is not None and model not in OPENAI_TRANSCRIPTION_MODELS:
        return "audio.input.transcription.model", (
            f"{model!r} is not a transcription model here; OpenAI's names ("
            + ", ".join(sorted(OPENAI_TRANSCRIPTION_MODELS)) + ") select the engine's own")
    language = transcription.get("language")
    if language is not None and not ISO_639_1.match(language):
        return "audio.input.transcription.language", ("give the language as an ISO-639-1 "
                                                      "code, such as 'en' or 'fr'")
    for key in ("delay", "keywords", "languages"):
        if transcription.get(key) is not None:
            return f"audio.input.transcription.{key}", ("the speech recogniser here takes no "
                                                        f"{key}")
    voice = ((session.get("audio") or {}).get("output") or {}).get("voice")
    if isinstance(voice, dict):
        return "audio.output.voice", "custom voices are OpenAI's; use a voice name"
    return None
