from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from callgate.engines.clauses import ClauseSplitter


def _split(deltas: list[str]) -> list[str]:
    splitter = ClauseSplitter()
    pieces = [piece for delta in deltas for piece in splitter.feed(delta)]
    rest = splitter.flush()
    return pieces + ([rest] if rest is not None else [])


def test_first_piece_ends_at_the_first_mark() -> None:
    splitter = ClauseSplitter()
    out: list[str] = []
    for token in ["Sure", ",", " the", " weather", " today", " is", " sunny", ",", " with",
                  " a", " high"]:
        out += splitter.feed(token)
    assert out == ["Sure, "]  # the next clause is short: it waits for more


def test_first_piece_ends_after_four_words_without_a_mark() -> None:
    splitter = ClauseSplitter()
    out: list[str] = []
    for token in ["The", " capital", " of", " France", " is", " Paris", "."]:
        out += splitter.feed(token)
    assert out == ["The capital of France "]
    assert splitter.feed(" It") == ["is Paris. "]


def test_sentences_are_cut_as_soon_as_they_end() -> None:
    splitter = ClauseSplitter()
    assert splitter.feed("It is sunny.") == []
    assert splitter.feed(" Take") == ["It is sunny. "]
    assert splitter.feed(" a hat! Bye") == ["Take a hat! "]
    assert splitter.flush() == "Bye"
    assert splitter.flush() is None


def test_abbreviations_initials_and_numbers_do_not_end_sentences() -> None:
    text = "Dr. Smith paid 3.50 dollars to J. R. Tolkien on Main St. today. Next"
    # (After a first piece: that one also ends after four words.)
    assert _split(["Okay. " + text]) == [
        "Okay. ", "Dr. Smith paid 3.50 dollars to J. R. Tolkien on Main St. today. ", "Next"]


def test_later_clauses_wait_for_enough_text() -> None:
    splitter = ClauseSplitter()
    assert splitter.feed("Okay, sure. Yes, no, maybe, ") == ["Okay, ", "sure. "]
    assert splitter.feed("fine, and then some more words here, ") == [
        "Yes, no, maybe, fine, and then some more words here, "]


def test_run_on_text_is_cut_at_a_word_boundary() -> None:
    pieces = _split(["word " * 100])
    assert len(pieces) > 1
    assert all(len(p) <= 201 for p in pieces[:-1])


@given(st.lists(st.text(alphabet="ab .,!?;:\n-", max_size=12), max_size=30))
def test_pieces_concatenate_to_the_input(deltas: list[str]) -> None:
    text = "".join(deltas)
    joined = "".join(_split(deltas))
    # Exactly the input, less trailing whitespace nobody would hear.
    assert text.startswith(joined)
    assert not text[len(joined):].strip()
    assert all(piece.strip() for piece in _split(deltas))
