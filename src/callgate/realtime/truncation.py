"""Keeping the conversation within the language model's context: the session's ``truncation``.

OpenAI's semantics (the SDK's ``RealtimeTruncation``): when the conversation no longer fits
the model's input limit, the oldest items stop being sent (they stay in the conversation).
``"auto"`` drops just enough; ``{"type": "retention_ratio", "retention_ratio": r}`` drops
down to ``r`` of the limit at once, so that the kept start stays put for many turns (what
lets a server reuse its prompt cache); ``token_limits.post_instructions`` sets the limit
below the model's own; ``"disabled"`` never drops anything (a server may then refuse).

The limit is the engine's ``context_tokens`` less the instructions and room for the reply.
Tokens are estimated at four characters each (the rule of thumb for English with BPE
tokenizers), which is close enough to decide where to cut and needs no tokenizer.
"""

from __future__ import annotations

import json
from typing import Any

CHARS_PER_TOKEN = 4
ITEM_OVERHEAD_TOKENS = 4  # role and separators a chat template adds around each message
REPLY_TOKENS = 512  # kept free for the reply when the response sets no max_output_tokens


def estimate_tokens(item: dict[str, Any]) -> int:
    """About how many tokens ``item`` takes in a chat prompt."""
    text = 0
    for part in item.get("content") or []:
        text += len(part.get("text") or part.get("transcript") or "")
    for key in ("name", "arguments", "output"):
        value = item.get(key)
        text += len(value) if isinstance(value, str) else len(json.dumps(value or ""))
    return ITEM_OVERHEAD_TOKENS + text // CHARS_PER_TOKEN


class ContextWindow:
    """Where the conversation sent to the model starts; moved only when it no longer fits."""

    def __init__(self) -> None:
        self.start_id: str | None = None

    def fit(self, items: list[dict[str, Any]], *, instructions: str, truncation: Any,
            context_tokens: int | None, reply_tokens: int = REPLY_TOKENS
            ) -> list[dict[str, Any]]:
        """The items to send, oldest first."""
        if truncation == "disabled" or (context_tokens is None and not _limit_of(truncation)):
            return items
        ids = [item.get("id") for item in items]
        start = ids.index(self.start_id) if self.start_id in ids else 0
        kept = items[start:]
        limit = _limit_of(truncation) or max(
            1, (context_tokens or 0) - len(instructions) // CHARS_PER_TOKEN - reply_tokens)
        sizes = [estimate_tokens(item) for item in kept]
        if sum(sizes) <= limit:
            return kept
        ratio = truncation.get("retention_ratio", 1.0) if isinstance(truncation, dict) else 1.0
        budget = limit * float(ratio)
        total, cut = 0, len(kept)
        for index in range(len(kept) - 1, -1, -1):
            if total + sizes[index] > budget and cut < len(kept):
                break
            total += sizes[index]
            cut = index
        # a tool result without its call is refused by chat servers: start after it
        while cut < len(kept) - 1 and kept[cut].get("type") == "function_call_output":
            cut += 1
        self.start_id = kept[cut].get("id")
        return kept[cut:]


def _limit_of(truncation: Any) -> int | None:
    if not isinstance(truncation, dict):
        return None
    limits = truncation.get("token_limits") or {}
    value = limits.get("post_instructions")
    return int(value) if value else None
