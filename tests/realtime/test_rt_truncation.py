"""The session's ``truncation``: which items the language model is sent."""

from __future__ import annotations

from typing import Any

from callgate.realtime.truncation import ContextWindow, estimate_tokens


def said(index: int, words: int = 40) -> dict[str, Any]:
    return {"id": f"item_{index}", "type": "message", "role": "user",
            "content": [{"type": "input_text", "text": "word " * words}]}


ITEMS = [said(i) for i in range(10)]
SIZE = estimate_tokens(ITEMS[0])  # 54 tokens each


def ids(items: list[dict[str, Any]]) -> list[int]:
    return [int(item["id"].split("_")[1]) for item in items]


def test_everything_is_sent_while_it_fits() -> None:
    window = ContextWindow()
    assert window.fit(ITEMS, instructions="", truncation="auto", context_tokens=10 * SIZE,
                      reply_tokens=0) == ITEMS


def test_auto_drops_just_the_oldest_that_do_not_fit() -> None:
    window = ContextWindow()
    sent = window.fit(ITEMS, instructions="", truncation="auto", context_tokens=7 * SIZE + 3,
                      reply_tokens=0)
    assert ids(sent) == [3, 4, 5, 6, 7, 8, 9]


def test_retention_ratio_cuts_deeper_and_keeps_its_start() -> None:
    truncation = {"type": "retention_ratio", "retention_ratio": 0.5,
                  "token_limits": {"post_instructions": 8 * SIZE}}
    window = ContextWindow()
    assert ids(window.fit(ITEMS[:8], instructions="", truncation=truncation,
                          context_tokens=None)) == list(range(8))
    sent = window.fit(ITEMS, instructions="", truncation=truncation, context_tokens=None)
    assert ids(sent) == [6, 7, 8, 9]  # half the limit: four items
    # the next turns keep that start (a server's prompt cache stays valid) until full again
    more = [*ITEMS, said(10), said(11)]
    assert ids(window.fit(more, instructions="", truncation=truncation,
                          context_tokens=None)) == [6, 7, 8, 9, 10, 11]


def test_disabled_sends_everything() -> None:
    window = ContextWindow()
    assert window.fit(ITEMS, instructions="", truncation="disabled", context_tokens=SIZE) == \
        ITEMS


def test_the_instructions_and_the_reply_take_room_too() -> None:
    window = ContextWindow()
    sent = window.fit(ITEMS, instructions="x" * 4 * 4 * SIZE, truncation="auto",
                      context_tokens=10 * SIZE, reply_tokens=2 * SIZE)
    assert ids(sent) == [6, 7, 8, 9]


def test_a_tool_result_is_never_sent_without_its_call() -> None:
    items = [said(0), {"id": "item_1", "type": "function_call", "call_id": "c", "name": "f",
                       "arguments": "x" * 400},
             {"id": "item_2", "type": "function_call_output", "call_id": "c", "output": "ok"},
             said(3)]
    window = ContextWindow()
    sent = window.fit(items, instructions="", truncation="auto", context_tokens=SIZE + 12,
                      reply_tokens=0)
    assert ids(sent) == [3]
