"""Word tokenizer: deterministic vocabulary, encode/decode round trip, save/load."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from polymodal.errors import CheckpointError
from polymodal.text.tokenizer import WordTokenizer, load_tokenizer

CAPTIONS = ["A red circle.", "a blue square, left of a red circle", "three shapes: a, b and c"]


def test_specials_and_frequency_order():
    tok = WordTokenizer.build(CAPTIONS)
    assert tok.words[:4] == ["<pad>", "<bos>", "<eos>", "<unk>"]
    assert tok.words[4] == "a"  # the most frequent word first
    assert WordTokenizer.build(CAPTIONS).words == tok.words


def test_min_count_and_max_size():
    tok = WordTokenizer.build(CAPTIONS, min_count=2)
    assert set(tok.words[4:]) == {"a", "red", "circle", ","}
    assert len(WordTokenizer.build(CAPTIONS, max_size=6)) == 6


def test_unknown_words_and_punctuation():
    tok = WordTokenizer.build(CAPTIONS)
    ids = tok.encode("A RED hexagon!")
    assert tok.decode(ids) == "a red <unk>"
    assert tok.decode(tok.encode("a blue square, left of a red circle")) == "a blue square, left of a red circle"


words = st.lists(st.sampled_from(["a", "red", "circle", "blue", "square", "left", "of", ","]), min_size=1)


@given(words)
def test_round_trip(ws):
    tok = WordTokenizer.build(CAPTIONS)
    text = " ".join(ws)
    assert tok.encode(tok.decode(tok.encode(text))) == tok.encode(text)


def test_save_load(tmp_path):
    tok = WordTokenizer.build(CAPTIONS)
    tok.save(tmp_path / "tokenizer.json")
    again = load_tokenizer(tmp_path / "tokenizer.json")
    assert again.words == tok.words
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="bad.json: not valid JSON"):
        load_tokenizer(tmp_path / "bad.json")
    (tmp_path / "odd.json").write_text('{"type": "sentencepiece"}')
    with pytest.raises(CheckpointError, match="unknown tokenizer type"):
        load_tokenizer(tmp_path / "odd.json")
