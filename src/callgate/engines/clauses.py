"""Cut a streamed LLM answer into pieces that speech synthesis can start on.

Text-to-speech needs whole phrases to sound right, but waiting for the whole answer costs the
caller seconds of silence. The splitter hands out a piece as soon as it ends at a sentence end
(``. ! ?`` followed by a space) or, once it is long enough to be worth a synthesis run, at a
clause mark (``, ; :`` and dashes).

The first piece is what the caller hears first, so it gates voice-to-voice latency: it ends at
the first mark of any kind ("Sure, "), or after its first four words when no mark has come
by then. Waiting for the whole first sentence would cost the time the language model takes
to write it (the bundled 135M model writes ~30-60 tokens a second on a busy core) plus
synthesis time that grows with its length; Piper speaks four words in a few tens of ms.

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
_WORD_END = re.compile(r"(?<=\w)\s")  # a space after a word: the word is complete


class ClauseSplitter:
    """Accumulates deltas; returns each speakable piece once it is complete."""

    def __init__(self, *, first_words: int = 4, min_chars: int = 40,
                 max_chars: int = 200) -> None:
        self._first_words = first_words
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
        sentence = next((m.end() for m in _SENTENCE_END.finditer(buffer)
                         if not (m.group().startswith(".")
                                 and self._is_not_sentence_end(m.start()))), None)
        if self._emitted == 0:
            clause = next((m.end() for m in _CLAUSE_END.finditer(buffer)
                           if any(c.isalnum() for c in buffer[:m.end()])), None)
            words = list(_WORD_END.finditer(buffer))
            enough = words[self._first_words - 1].start() if len(words) >= self._first_words \
                else None
            cuts = [cut for cut in (sentence, clause, enough) if cut is not None]
            return min(cuts) if cuts else None
        if sentence is not None:
            return sentence
        for match in _CLAUSE_END.finditer(buffer):
            if match.end() >= self._min:
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
