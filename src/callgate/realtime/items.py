"""The conversation: its items in order, as GA ``realtime.item`` objects.

Items are kept as the JSON the protocol shows (``conversation.item.added`` and friends send
copies of them). Two things are kept beside them: the caller's audio of each user turn (for
``conversation.item.retrieve``; bounded, the oldest is let go first) and how many
milliseconds of assistant audio each output content part holds (to check and apply
truncation).
"""

from __future__ import annotations

import base64
import copy
from collections import OrderedDict
from typing import Any

from callgate.realtime.protocol import ProtocolError, new_id

MAX_STORED_AUDIO_BYTES = 24000 * 2 * 120  # two minutes of caller audio per session


class Conversation:
    def __init__(self) -> None:
        self.id = new_id("conv")
        self._items: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._audio: OrderedDict[str, bytes] = OrderedDict()
        self._audio_bytes = 0
        self._output_ms: dict[tuple[str, int], int] = {}

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._items

    def __len__(self) -> int:
        return len(self._items)

    @property
    def last_id(self) -> str | None:
        return next(reversed(self._items), None)

    def items(self) -> list[dict[str, Any]]:
        return list(self._items.values())

    def get(self, item_id: str) -> dict[str, Any] | None:
        return self._items.get(item_id)

    def add(self, item: dict[str, Any], previous_item_id: str | None = None,
            *, event_id: str | None = None) -> str | None:
        """Insert ``item`` after ``previous_item_id`` (``"root"``: first; None: last).

        Returns the id of the item now before it (None at the start).
        """
        item_id = item["id"]
        if item_id in self._items:
            raise ProtocolError(f"Item with id '{item_id}' already exists.",
                                code="item_id_already_exists", param="item.id",
                                event_id=event_id)
        if previous_item_id is None or previous_item_id == self.last_id:
            before = self.last_id
            self._items[item_id] = item
            return before
        if previous_item_id != "root" and previous_item_id not in self._items:
            raise ProtocolError(f"previous_item_id '{previous_item_id}' does not exist.",
                                code="previous_item_id_invalid", param="previous_item_id",
                                event_id=event_id)
        rebuilt: OrderedDict[str, dict[str, Any]] = OrderedDict()
        if previous_item_id == "root":
            rebuilt[item_id] = item
        for key, value in self._items.items():
            rebuilt[key] = value
            if key == previous_item_id:
                rebuilt[item_id] = item
        self._items = rebuilt
        return None if previous_item_id == "root" else previous_item_id

    def delete(self, item_id: str) -> bool:
        if self._items.pop(item_id, None) is None:
            return False
        self._forget_audio(item_id)
        for key in [k for k in self._output_ms if k[0] == item_id]:
            del self._output_ms[key]
        return True

    # --- caller audio ------------------------------------------------------------------------
    def store_audio(self, item_id: str, pcm: bytes) -> None:
        self._audio[item_id] = pcm
        self._audio_bytes += len(pcm)
        while self._audio_bytes > MAX_STORED_AUDIO_BYTES and self._audio:
            self._forget_audio(next(iter(self._audio)))

    def audio_of(self, item_id: str) -> bytes | None:
        return self._audio.get(item_id)

    def _forget_audio(self, item_id: str) -> None:
        pcm = self._audio.pop(item_id, None)
        if pcm is not None:
            self._audio_bytes -= len(pcm)

    # --- assistant audio and truncation ------------------------------------------------------
    def set_output_audio_ms(self, item_id: str, content_index: int, ms: int) -> None:
        """How much assistant audio the part now holds (it grows as the engine speaks)."""
        self._output_ms[(item_id, content_index)] = ms

    def output_audio_ms(self, item_id: str, content_index: int) -> int:
        return self._output_ms.get((item_id, content_index), 0)

    def truncate(self, item_id: str, content_index: int, audio_end_ms: int,
                 *, event_id: str | None = None) -> None:
        """Cut an assistant audio part to its first ``audio_end_ms``.

        OpenAI drops the whole transcript so that no unheard text stays in context; a cascade
        engine gets the conversation as text, so the transcript is cut instead in proportion
        to the audio heard (at a word boundary): the model then knows what the caller heard.
        """
        item = self._items.get(item_id)
        if item is None:
            raise ProtocolError(f"Item with id '{item_id}' does not exist.",
                                code="item_truncate_invalid_item_id", param="item_id",
                                event_id=event_id)
        content = item.get("content") or []
        if item.get("role") != "assistant" or not 0 <= content_index < len(content) or \
                content[content_index].get("type") != "output_audio":
            raise ProtocolError("Only an assistant message's output_audio content can be "
                                "truncated.", code="item_truncate_invalid_content_index",
                                param="content_index", event_id=event_id)
        total = self.output_audio_ms(item_id, content_index)
        if audio_end_ms < 0 or audio_end_ms > total:
            raise ProtocolError(f"audio_end_ms {audio_end_ms} is outside the audio of this "
                                f"item (0-{total} ms).", code="item_truncate_invalid_audio_end",
                                param="audio_end_ms", event_id=event_id)
        part = content[content_index]
        transcript = part.get("transcript") or ""
        if total > 0 and audio_end_ms < total:
            cut = len(transcript) * audio_end_ms // total
            if cut < len(transcript):
                space = transcript.rfind(" ", 0, cut + 1)
                cut = space if space > 0 else cut
            part["transcript"] = transcript[:cut].rstrip()
        self._output_ms[(item_id, content_index)] = audio_end_ms


def normalize_item(item: dict[str, Any]) -> tuple[dict[str, Any], bytes | None]:
    """A client-created item as the server shows it, and its input audio (PCM16), if any.

    The audio is taken out of the item: events carry the item without it (only
    ``conversation.item.retrieved`` puts it back).
    """
    shown = copy.deepcopy(item)
    shown.setdefault("id", new_id("item"))
    if not str(shown.get("type")).startswith("mcp_"):  # MCP items have neither
        shown["object"] = "realtime.item"
        shown["status"] = "completed"
    audio: bytes | None = None
    for index, part in enumerate(shown.get("content") or []):
        if part.get("type") == "input_audio" and part.get("audio"):
            try:
                pcm = base64.b64decode(part.pop("audio"), validate=True)
            except ValueError:
                raise ProtocolError("content audio is not valid base64.",
                                    param=f"item.content[{index}].audio") from None
            audio = (audio or b"") + pcm[: len(pcm) - len(pcm) % 2]
            part.setdefault("transcript", None)
    return shown, audio


def message_text(item: dict[str, Any]) -> str:
    """The words of a message item, whatever its content kinds."""
    texts = []
    for part in item.get("content") or []:
        text = part.get("text") if part.get("text") is not None else part.get("transcript")
        if text:
            texts.append(str(text))
    return " ".join(texts)
