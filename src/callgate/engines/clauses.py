"""Cut a streamed LLM answer into pieces that speech synthesis can start on.

Text-to-speech needs whole phrases to sound right, but waiting for the whole answer costs the
caller seconds of silence. The splitter hands out a piece as soon as it ends at a sentence end
(``. ! ?`` followed by a space) or, once it is long enough to be worth a synthesis run, at a
clause mark (``, ; :`` and dashes). The first piece may be short: it is what the caller hears
first, so it gates voice-to-voice latency.

Sans-IO: ``feed`` takes text deltas, returns finished pieces; ``flush`` returns the rest.
The pieces concatenate back to exactly the text fed in (whitespace included), so the same
strings can serve as the spoken transcript.
"""

from __future__ import annotations

import re

# Words whose trailing dot does not end a sentence ("Dr. Smith", "e.g. this").
_ABBREVIATIONS = frozenset({
    "mr", "mrs", "ms", "dr", "prof", "sr", "jr", "st", "vs", "etc", "e.g", "i.e", "no", "approx",
    "mt", "ft", "inc", "ltd", "co",
})
_SENTENCE_END = re.compile(r"[.!?…]+[\"')\]]*(?=\s)")
_CLAUSE_END = re.compile(r"[,;:]+(?=\s)|\s[—–-]+(?=\s)")


class ClauseSplitter:
    """Accumulates deltas; returns each speakable piece once it is complete."""

    def __init__(self, *, first_min_chars: int = 12, min_chars: int = 40,
                 max_chars: int = 200) -> None:
        self._first_min = first_min_chars
        self._min = min_chars
        self._max = max_chars
        self._buffer = ""
        self._emitted = 0

    def feed(self, text: str) -> list[str]:
        self._buffer += text
        pieces: list[str] = []
        while (cut := self._find_cut()) is not None:
            # Keep the whitespace after the mark with the finished piece: the next piece
            # starts at a word, and the pieces still concatenate to the input.
            while cut < len(self._buffer) and self._buffer[cut].isspace():
                cut += 1
            pieces.append(self._buffer[:cut])
            self._buffer = self._buffer[cut:]
            self._emitted += 1
        return pieces

    def flush(self) -> str | None:
        """The unfinished rest at the end of the stream (None when nothing speakable is left)."""
        rest, self._buffer = self._buffer, ""
        if rest.strip():
            self._emitted += 1
            return rest
        return None

    def _find_cut(self) -> int | None:
        buffer = self._buffer
        minimum = self._first_min if self._emitted == 0 else self._min
        for match in _SENTENCE_END.finditer(buffer):
            if match.group().startswith(".") and self._is_not_sentence_end(match.start()):
                continue
            return match.end()
        for match in _CLAUSE_END.finditer(buffer):
            if match.end() >= minimum:
                return match.end()
        if len(buffer) > self._max:
            # A run-on without marks: cut at the last word boundary so synthesis can start.
            space = buffer.rfind(" ", 0, self._max)
            if space > 0:
                return space
        return None

    def _is_not_sentence_end(self, dot: int) -> bool:
        before = self._buffer[:dot]
        word = before.rsplit(None, 1)[-1].lower() if before.strip() else ""
        if word in _ABBREVIATIONS:
            return True
        # A single capital before the dot is an initial ("J. R. Smith").
        return len(word) == 1 and word.isalpha() and before[-1].isupper()
