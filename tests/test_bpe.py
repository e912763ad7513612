"""BPE tokenizer: specials at ids 0-3, exact round trips, save/load through tokenizer.json, model dirs."""

from __future__ import annotations

import json

import pytest
import torch

from polymodal.errors import CheckpointError, ConfigError
from polymodal.text.tokenizer import SPECIALS, BPETokenizer, WordTokenizer, build_tokenizer, load_tokenizer

from .conftest import CAPTIONS

CORPUS = CAPTIONS * 5 + ["four shapes: a small purple triangle, a large blue hexagon and a white diamond",
                         "there is a small white hexagon below a large orange square"] * 5


@pytest.fixture(scope="module")
def bpe() -> BPETokenizer:
    return BPETokenizer.build(CORPUS, vocab_size=320)


def test_specials_and_round_trip(bpe):
    assert [bpe.hf.token_to_id(s) for s in SPECIALS] == [0, 1, 2, 3]
    assert (bpe.pad_id, bpe.bos_id, bpe.eos_id, bpe.unk_id) == (0, 1, 2, 3)
    for text in CORPUS[:6] + ["a zebra-striped dodecahedron, 3 of them!"]:
        ids = bpe.encode(text)
        assert min(ids) > 3  # specials never come out of plain text; unseen words split into bytes
        assert bpe.decode(ids) == text.lower()
    # Frequent words become single tokens; decoding stops at <eos> and skips <pad>/<bos>.
    assert len(bpe.encode("a red circle")) == 3
    ids = bpe.encode("a red circle")
    assert bpe.decode([bpe.bos_id, *ids, bpe.eos_id, *bpe.encode("junk"), bpe.pad_id]) == "a red circle"
    assert bpe.encode("a red circle left of", max_len=2) == ids[:2]


def test_save_load_gives_the_same_ids(bpe, tmp_path):
    bpe.save(tmp_path / "tokenizer.json")
    data = json.loads((tmp_path / "tokenizer.json").read_text())
    assert data["type"] == "bpe" and data["hf"]["model"]["type"] == "BPE"  # HF's own JSON, wrapped
    again = load_tokenizer(tmp_path / "tokenizer.json")
    assert isinstance(again, BPETokenizer) and len(again) == len(bpe)
    for text in CORPUS:
        assert again.encode(text) == bpe.encode(text)


def test_training_is_deterministic_and_selectable():
    a, b = BPETokenizer.build(CORPUS, vocab_size=300), BPETokenizer.build(CORPUS, vocab_size=300)
    assert a.to_dict() == b.to_dict()
    assert isinstance(build_tokenizer("bpe", CORPUS, bpe_vocab_size=300), BPETokenizer)
    assert isinstance(build_tokenizer("word", CORPUS), WordTokenizer)
    with pytest.raises(ConfigError, match="did you mean 'bpe'"):
        build_tokenizer("bpee", CORPUS)


def test_foreign_vocabulary_without_our_specials_is_refused(bpe):
    data = bpe.to_dict()
    vocab = data["hf"]["model"]["vocab"]
    vocab["<pad>"], vocab["x"] = vocab["x"], vocab["<pad>"]  # <pad> no longer at id 0
    data["hf"]["added_tokens"] = []
    with pytest.raises(CheckpointError, match="ids 0-3"):
        BPETokenizer.from_dict(data)
    with pytest.raises(CheckpointError, match="does not load"):
        BPETokenizer.from_dict({"type": "bpe", "hf": {"nonsense": True}})


def test_captioner_with_bpe_saves_and_loads(bpe, tmp_path):
    from polymodal import load
    from polymodal.config import DecoderConfig, EncoderConfig, ModelConfig
    from polymodal.models.captioner import Captioner

    torch.manual_seed(0)
    cfg = ModelConfig(image_size=32, encoder=EncoderConfig(width=8), tokenizer="bpe",
                      decoder=DecoderConfig(name="seed_lstm", embed_dim=8, hidden_dim=16, feature_dim=8, max_len=6))
    model = Captioner(cfg, bpe).eval()
    model.save_pretrained(tmp_path / "m")
    again = load(tmp_path / "m")
    assert isinstance(again.tokenizer, BPETokenizer)
    image = torch.rand(3, 32, 32)
    assert again.caption([image], beam_size=2) == model.caption([image], beam_size=2)
