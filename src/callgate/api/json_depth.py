"""How deeply a JSON text nests, found without parsing it.

Python's JSON decoder and the validation after it recurse once per level: a frame of a few
thousand nested brackets raises RecursionError deep inside them. The WebSocket measures the
nesting first and answers a too-deep frame with an ``error`` event instead. Strings are cut
out with a regular expression whose plain runs are single C loops (no step per character for
a long base64 audio payload), then only the brackets that remain are walked.
"""

from __future__ import annotations

import re

_STRING_RE = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.S)
_BRACKET_RE = re.compile(r"[\[\]{}]")


def nests_deeper_than(text: str, limit: int) -> bool:
    """Whether the JSON ``text`` nests arrays and objects more than ``limit`` deep.
    Malformed text gets a best guess; the parser reports what is wrong with it."""
    if text.count("[") + text.count("{") <= limit:
        return False  # too few brackets to nest that deep: the usual case, two C scans
    depth = 0
    for bracket in _BRACKET_RE.findall(_STRING_RE.sub("", text)):
        if bracket in "[{":
            depth += 1
            if depth > limit:
                return True
        else:
            depth -= 1
    return False
