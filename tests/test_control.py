"""Controllable captions: forced words ("must mention", constrained beam search), banned words and attribute groups,
through generate, caption_nbest, the CLI and the server; bad controls give one-line errors."""

from __future__ import annotations

import base64
import io

import pytest
import torch

from polymodal.constrained import status
from polymodal.data.shapes import ATTRIBUTE_GROUPS, COLOURS, Scene, ShapeObject, render
from polymodal.errors import ConfigError, InputError
from polymodal.eval.hallucination import words
from polymodal.generate import GenerationConfig, generate
from polymodal.models.word_controls import banned_token_ids, control_ids, forced_token_ids

from .conftest import polymodal_cli, tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")


def _images(n: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def _run(model, images, cfg, force=None):
    tok = model.tokenizer
    with torch.inference_mode():
        state = model.decoder.init_state(model.encoder(images))
        return generate(model.decoder.step, state, tok.bos_id, tok.eos_id, cfg, suppress_ids=(tok.pad_id,), force=force)


def _rare_words(model, images, n: int) -> list[int]:
    """Word ids the unconstrained captions never use: forcing them must change the search."""
    free = _run(model, images, GenerationConfig(strategy="beam", beam_size=3, max_len=10))
    used = {t for per in free for h in per for t in h.tokens}
    return [i for i in range(4, len(model.tokenizer)) if i not in used][:n]


def _contains(tokens: list[int], phrase: tuple[int, ...]) -> bool:
    return any(tuple(tokens[i:i + len(phrase)]) == phrase for i in range(len(tokens) - len(phrase) + 1))


@pytest.mark.parametrize("beam", [2, 3, 5])
def test_forced_words_are_in_every_hypothesis_of_the_nbest(beam):
    model = tiny_model(seed=2)
    images = _images(5)
    a, b = _rare_words(model, images, 2)
    cfg = GenerationConfig(strategy="beam", beam_size=beam, num_return_sequences=beam, max_len=12,
                           force_ids=[[a], [b]])
    hyps = _run(model, images, cfg)
    for per_image in hyps:  # fewer than nbest when fewer beams met the words within max_len: obeying comes first
        assert 1 <= len(per_image) <= beam
        assert [h.score for h in per_image] == sorted((h.score for h in per_image), reverse=True)
        for h in per_image:
            assert a in h.tokens and b in h.tokens, h.tokens


def test_a_forced_phrase_is_said_whole_and_an_alternative_is_enough():
    model = tiny_model(seed=2)
    images = _images(4)
    a, b, c = _rare_words(model, images, 3)
    cfg = GenerationConfig(strategy="beam", beam_size=4, num_return_sequences=2, max_len=12,
                           force_ids=[[a, b], [[c], [a]]])  # the phrase "a b", and "c or a"
    for per_image in _run(model, images, cfg):
        for h in per_image:
            assert _contains(h.tokens, (a, b)) and (c in h.tokens or a in h.tokens), h.tokens
    assert status([7, a, b], (((a, b),), ((c,), (a,))))[2]


def test_a_batch_of_different_constraints_equals_each_input_alone():
    """Per-input forced words in one batch: each input gets exactly what it gets decoded alone."""
    model = tiny_model(seed=2)
    images = _images(5)
    a, b, c = _rare_words(model, images, 3)
    force = [[[a]], [], [[b], [c]], [[a, b]], [[[b], [c]]]]
    cfg = GenerationConfig(strategy="beam", beam_size=3, num_return_sequences=3, max_len=12, early_stopping=False)
    batched = _run(model, images, cfg, force=force)
    for i, constraints in enumerate(force):
        alone = _run(model, images[i:i + 1], GenerationConfig(**{**vars(cfg), "force_ids": constraints}))[0]
        assert [h.tokens for h in batched[i]] == [h.tokens for h in alone]
        assert [h.score for h in batched[i]] == pytest.approx([h.score for h in alone], abs=1e-5)
    plain = _run(model, images[1:2], cfg)[0]  # the unconstrained input: plain beam search's result
    assert [h.tokens for h in batched[1]] == [h.tokens for h in plain]


def test_inputs_with_forced_words_joining_a_running_batch_end_as_offline():
    model = tiny_model(seed=2)
    images = _images(4)
    a, b = _rare_words(model, images, 2)
    force = [[[a]], [[b]], [], [[a], [b]]]
    cfg = GenerationConfig(strategy="beam", beam_size=3, num_return_sequences=2, max_len=12, min_len=2)
    offline = _run(model, images, cfg, force=force)
    beams, ended = model.beam_batch(cfg), {}
    joins = {0: [0], 2: [1, 2], 5: [3]}
    with torch.inference_mode():
        for step in range(60):
            if step in joins:
                idx = joins[step]
                beams.add(model.init_state(images[idx]), idx, force=[force[i] for i in idx])
            if beams:
                ended.update(beams.advance())
    assert sorted(ended) == [0, 1, 2, 3]
    for i in range(4):
        assert [h.tokens for h in ended[i]] == [h.tokens for h in offline[i]]


def test_forced_and_banned_groups_in_caption_nbest():
    model = tiny_model(seed=2)
    images = list(_images(3))
    colours = set(COLOURS) & set(model.tokenizer.words)
    captions = model.caption_nbest(images, banned_words=["colours"], beam_size=3, num_return_sequences=3)
    assert all(not set(words(c)) & colours for per in captions for c in per)
    captions = model.caption_nbest(images, force_words=["colours", "square"], beam_size=3, num_return_sequences=2)
    assert all(set(words(c)) & colours and "square" in words(c) for per in captions for c in per)


@pytest.mark.parametrize("strategy", ["greedy", "beam", "sample"])
def test_omitted_words_are_left_out_of_the_very_captions_the_model_says(strategy):
    """`omit_words` edits the search's own outputs: the best caption is the uncontrolled one without those words,
    with its attention rows kept in step, and n-best that become equal merge."""
    model = tiny_model(seed=2)
    images = _images(4)
    colours = banned_token_ids(model.tokenizer, ["colours"])
    cfg = dict(strategy=strategy, beam_size=3, num_return_sequences=3, max_len=10, seed=0, return_attention=True)
    free = _run(model, images, GenerationConfig(**cfg))
    left = _run(model, images, GenerationConfig(**cfg, omit_ids=colours))
    assert any(set(h.tokens) & set(colours) for per in free for h in per)  # there was something to leave out
    for f, o in zip(free, left, strict=True):
        assert o[0].tokens == [t for t in f[0].tokens if t not in colours]
        assert all(not set(h.tokens) & set(colours) and h.attention.shape[0] == len(h.tokens) for h in o)
        assert len({tuple(h.tokens) for h in o}) == len(o) <= len(f)


def test_groups_come_from_the_shapes_world_word_lists():
    from polymodal.text.tokenizer import WordTokenizer

    tok = WordTokenizer.build(["a small red circle to the left of a blue square at the top"])
    assert banned_token_ids(tok, ["colours"]) == tuple(tok.encode("red blue"))
    assert banned_token_ids(tok, ["positions"]) == tuple(tok.encode("left top"))
    assert forced_token_ids(tok, ["sizes"]) == ((tuple(tok.encode("small")),),)
    assert set(ATTRIBUTE_GROUPS) == {"colours", "shapes", "sizes", "positions"}


@pytest.mark.parametrize("banned, forced, match", [
    ((), ["zebra"], "does not know the word 'zebra'"),
    (["zebra"], (), "does not know the word 'zebra'"),
    (["red"], ["red"], "'red' is both forced and banned"),
    (["colours"], ["red"], "'red' is both forced and banned"),
    (None, ["red"], "'red' is both forced and omitted"),
    ((), [" "], "an empty word"),
])
def test_bad_word_controls_are_one_line_errors(banned, forced, match):
    tok = tiny_model().tokenizer
    with pytest.raises(InputError, match=match) as info:
        control_ids(tok, banned or (), forced, omit_words=["colours"] if banned is None else ())
    assert "\n" not in str(info.value)


def test_force_ids_take_hf_forms_and_stay_hashable():
    cfg = GenerationConfig(force_ids=[[5], [6, 7], [[8], [9, 10]]])
    assert cfg.force_ids == (((5,),), ((6, 7),), ((8,), (9, 10)))
    hash(tuple(sorted(vars(cfg).items())))  # the server batches requests by their settings
    with pytest.raises(ConfigError, match="empty"):
        GenerationConfig(force_ids=[[]])


@pytest.mark.parametrize("cfg", [dict(strategy="greedy"), dict(strategy="sample"), dict(strategy="beam", beam_size=1)])
def test_forced_words_need_beam_search(cfg):
    with pytest.raises(ConfigError, match="forced words need beam search"):
        GenerationConfig(force_ids=[[5]], **cfg)
    with pytest.raises(ConfigError, match="both forced and banned"):
        GenerationConfig(force_ids=[[5]], banned_ids=(5,))


def test_the_cli_forces_and_bans_words_and_refuses_bad_ones(monkeypatch, capsys, tmp_path):
    model = tiny_model(seed=2)
    model.save_pretrained(tmp_path / "m")
    image = tmp_path / "x.png"
    render(Scene((ShapeObject("circle", "red", "large", 0.3, 0.5),), (40, 40, 40)), 32).save(image)
    code, out, err = polymodal_cli(monkeypatch, capsys, "caption", str(tmp_path / "m"), str(image),
                                   "--force", "square,star", "--ban", "colours", "--nbest", "3", "--json")
    assert code == 0, err
    captions = __import__("json").loads(out.splitlines()[0])["captions"]
    assert 1 <= len(captions) <= 3  # an untrained model: only the beams that met the words within max_len
    assert all({"square", "star"} <= set(words(c)) and not set(words(c)) & set(COLOURS) for c in captions)
    code, out, err = polymodal_cli(monkeypatch, capsys, "caption", str(tmp_path / "m"), str(image), "--omit", "sizes")
    assert code == 0 and not set(words(out)) & {"small", "large"}, err
    for args, match in [(["--force", "zebra"], "does not know the word 'zebra'"),
                        (["--force", "red", "--ban", "red"], "both forced and banned"),
                        (["--force", ","], "names no word"),
                        (["--ban", ""], "names no word"),
                        (["--force", "red", "--beam", "1"], "beam_size >= 2"),
                        (["--force", "red", "--omit", "colours"], "both forced and omitted")]:
        code, out, err = polymodal_cli(monkeypatch, capsys, "caption", str(tmp_path / "m"), str(image), *args)
        assert code == 2 and match in err and "Traceback" not in err, (args, err)
        assert len([line for line in err.splitlines() if line.startswith("error")]) == 1


def test_the_server_forces_and_bans_words_and_refuses_bad_ones():
    from fastapi.testclient import TestClient

    from polymodal.serve.app import create_app

    png = io.BytesIO()
    render(Scene((ShapeObject("circle", "red", "large", 0.3, 0.5),), (40, 40, 40)), 32).save(png, "PNG")
    image = base64.b64encode(png.getvalue()).decode()
    with TestClient(create_app({"tiny": tiny_model(seed=2)})) as client:
        reply = client.post("/v1/caption", json={"image": image, "force_words": ["star"], "banned_words": ["colours"],
                                                 "nbest": 3})
        form = client.post("/v1/caption", files={"image": ("x.png", png.getvalue(), "image/png")},
                           data={"force_words": "square, star", "banned_words": "colours"})
        unknown = client.post("/v1/caption", json={"image": image, "force_words": ["zebra"]})
        both = client.post("/v1/caption", json={"image": image, "force_words": ["red"], "banned_words": ["colours"]})
        greedy = client.post("/v1/caption", json={"image": image, "force_words": ["red"], "strategy": "greedy"})
        empty = client.post("/v1/caption", json={"image": image, "force_words": [""]})
        free = client.post("/v1/caption", json={"image": image, "nbest": 3}).json()
        omitted = client.post("/v1/caption", json={"image": image, "omit_words": ["colours", "sizes"], "nbest": 3})
    assert reply.status_code == 200, reply.text
    texts = [words(c["text"]) for c in reply.json()["captions"]]
    assert 1 <= len(texts) <= 3 and all("star" in t and not set(t) & set(COLOURS) for t in texts)
    assert form.status_code == 200 and {"square", "star"} <= set(words(form.json()["captions"][0]["text"]))
    sizes = {"small", "large"}
    assert omitted.status_code == 200 and omitted.json()["captions"][0]["text"].split() == [
        w for w in free["captions"][0]["text"].split() if w not in set(COLOURS) | sizes]
    for response, match in [(unknown, "does not know the word 'zebra'"), (both, "both forced and banned"),
                            (greedy, "beam"), (empty, "empty word")]:
        assert response.status_code == 422 and match in response.text, response.text


def test_the_bundled_captioner_says_a_forced_word_of_the_image():
    import polymodal
    from polymodal.assets import BUNDLED_CAPTIONER, bundled_model_dir

    model = polymodal.load(bundled_model_dir(BUNDLED_CAPTIONER))
    scene = Scene((ShapeObject("circle", "red", "large", 0.2, 0.3), ShapeObject("star", "blue", "small", 0.8, 0.7)),
                  (40, 40, 40))
    for word in ("small", "star", "blue"):
        caption = model.caption([render(scene, 64)], force_words=[word], beam_size=5)[0]
        assert word in words(caption), caption
    free = model.caption([render(scene, 64)])[0]
    assert model.caption([render(scene, 64)], omit_words=["colours"])[0].split() == [
        w for w in free.split() if w not in COLOURS]
