"""Text -> image, discrete family: FSQ codes, left padding, classifier-free guidance over any step, the token
generator's cached decoding (= teacher forcing), sampling, learning, save/load and the two-stage task via the CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

import polymodal
from polymodal.errors import InputError
from polymodal.models.caption_prefix import left_pad
from polymodal.models.image_generation import to_pil
from polymodal.models.image_tokenizer import ImageTokenizerConfig
from polymodal.models.token_image_generator import TokenImageConfig, TokenImageGenerator
from polymodal.nn.fsq import FSQ
from polymodal.nn.state import guided, pair_rows
from polymodal.text.tokenizer import WordTokenizer

from .conftest import polymodal_cli

pytestmark = pytest.mark.usefixtures("one_thread")

CAPTIONS = ["a red circle", "a small blue square left of a red circle", "circle", "a green star"]
PAIR = ["a red circle", "a blue square"]  # the learning test: each caption its own code grid


def tiny_generator(captions: list[str] = CAPTIONS, seed: int = 0, layers: int = 2, cond_drop: float = 0.1,
                   ) -> TokenImageGenerator:
    torch.manual_seed(seed)
    cfg = TokenImageConfig(image=ImageTokenizerConfig(image_size=16, patch=2, channels=(8, 8), levels=(3, 3)),
                           width=32, layers=layers, heads=2, text_max_len=16, cond_drop=cond_drop)
    return TokenImageGenerator(cfg, WordTokenizer.build(captions))


def pixels(images) -> list[np.ndarray]:
    return [np.asarray(im) for im in images]


# ---- FSQ -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("levels", [(3, 3), (8, 5, 5, 5), (4, 6, 7)])
def test_fsq_ids_give_back_the_quantized_values(levels):
    fsq = FSQ(levels)
    assert fsq.codebook_size == math.prod(levels)
    torch.manual_seed(0)
    z = torch.randn(4, len(levels), 5, 5) * 3
    values, ids = fsq(z)
    assert values.shape == z.shape and ids.shape == (4, 5, 5) and ids.dtype == torch.long
    assert torch.equal(fsq.codes_to_values(ids), values)
    assert values.abs().max() <= 1 and 0 <= int(ids.min()) and int(ids.max()) < fsq.codebook_size
    # every id: values in [-1, 1], distinct ids -> distinct values, each channel takes exactly its L values
    every = torch.arange(fsq.codebook_size)[None]  # (1, N) as a (B, W) grid
    table = fsq.codes_to_values(every)[0].T  # (N, d)
    assert table.abs().max() <= 1
    assert len({tuple(row.tolist()) for row in table}) == fsq.codebook_size
    for channel, n in enumerate(levels):
        assert len(set(table[:, channel].tolist())) == n
    # values -> the quantizer again gives the same ids: feed atanh of the bounded target (inverse of `bound`)
    lv = torch.tensor(levels, dtype=torch.float32)[None, :, None]
    half_width = torch.div(lv, 2, rounding_mode="floor")
    target = table.T[None] * half_width  # rounded levels, what `bound` must land near
    half = (lv - 1) * (1 - fsq.eps) / 2
    offset = torch.where(lv % 2 == 0, 0.5, 0.0)
    z_back = torch.atanh(((target + offset) / half).clamp(-0.999, 0.999)) - torch.atanh(offset / half)
    again_values, again_ids = fsq(z_back)
    assert torch.equal(again_ids, every)
    assert torch.equal(again_values, fsq.codes_to_values(every))


def test_fsq_straight_through_gradient():
    fsq = FSQ((8, 5, 5, 5))
    z = torch.randn(2, 4, 3, 3, requires_grad=True)
    values, _ = fsq(z)
    (values * torch.randn_like(values)).sum().backward()
    assert z.grad is not None and z.grad.abs().sum() > 0 and torch.isfinite(z.grad).all()


def test_fsq_two_levels_work():
    fsq = FSQ((2, 3))
    values, ids = fsq(torch.randn(64, 2, 3, 3) * 3)
    assert torch.isfinite(values).all() and 0 <= int(ids.min()) and int(ids.max()) < 6
    assert set(ids.unique().tolist()) == set(range(6))  # both values of the 2-level channel are reached


def test_fsq_refuses_too_few_levels():
    with pytest.raises(ValueError):
        FSQ((1, 3))
    with pytest.raises(ValueError):
        FSQ(())


# ---- left padding and guidance -----------------------------------------------------------------------------

def test_left_pad_rows_of_every_length():
    right = torch.tensor([[5, 6, 7], [8, 0, 0], [9, 4, 0], [0, 0, 0]])
    ids, valid = left_pad(right, pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8], [0, 9, 4], [0, 0, 0]]
    assert valid.int().tolist() == [[1, 1, 1], [0, 0, 1], [0, 1, 1], [0, 0, 0]]


def test_guided_mixes_log_probs_and_keeps_ruled_out_tokens_out():
    cond = torch.tensor([[2.0, 0.5, -math.inf, 1.0], [0.0, 3.0, 1.0, -1.0]])
    uncond = torch.tensor([[0.0, 1.0, 4.0, 0.0], [1.0, 1.0, -math.inf, 2.0]])
    table = torch.stack([cond, uncond], dim=1).flatten(0, 1)  # rows in pairs: (cond, uncond) per input
    seen = {}

    def step(tokens, state):
        seen["tokens"], seen["h"] = tokens, state["h"]
        return table.clone(), {"h": state["h"] + 1}, None

    state = pair_rows({"h": torch.arange(4.0)[:, None]})
    assert state["h"].shape == (2, 2, 1)
    out1, new, _ = guided(step, 1.0)(torch.tensor([7, 9]), state)
    assert seen["tokens"].tolist() == [7, 7, 9, 9] and seen["h"].flatten().tolist() == [0, 1, 2, 3]
    assert new["h"].shape == (2, 2, 1) and new["h"].flatten().tolist() == [1, 2, 3, 4]
    both_finite = torch.isfinite(cond) & torch.isfinite(uncond)
    assert torch.allclose(out1[both_finite], cond.log_softmax(-1)[both_finite])
    out0, _, _ = guided(step, 0.0)(torch.tensor([7, 9]), state)
    assert torch.allclose(out0[both_finite], uncond.log_softmax(-1)[both_finite])
    out3, _, _ = guided(step, 3.0)(torch.tensor([7, 9]), state)
    lc, lu = cond.log_softmax(-1), uncond.log_softmax(-1)
    assert torch.allclose(out3[both_finite], (lu + 3 * (lc - lu))[both_finite])
    for out in (out0, out1, out3):  # -inf in either row stays -inf, never NaN
        assert torch.isneginf(out[~both_finite]).all() and not torch.isnan(out).any()
    assert torch.isneginf(out0[0, 2])  # ruled out by the condition, even when the condition is ignored


# ---- the token generator --------------------------------------------------------------------------------------

def test_cached_decoding_matches_teacher_forcing():
    model = tiny_generator(layers=2).eval()
    assert model.cfg.tokens == 16 and model.codes == 9
    texts = ["a red circle", "a small blue square left of a red circle", "circle"]
    captions = model.caption_ids(texts)
    lengths = (captions != model.tokenizer.pad_id).sum(1).tolist()
    assert len(set(lengths)) == 3  # right-padded rows of three lengths
    torch.manual_seed(1)
    codes = torch.randint(0, model.codes, (3, 16))
    with torch.no_grad():
        forced, losses = model({"tokens": captions, "codes": codes})
        assert forced.shape == (3, 16, model.codes) and torch.isfinite(losses["loss"])
        state = model.init_state(captions)
        tokens = torch.full((3,), model.tokenizer.eos_id)
        for j in range(16):
            logits, state, _ = model.step(tokens, state)
            assert logits.shape == (3, model.text_vocab + model.codes)
            assert torch.isneginf(logits[:, : model.text_vocab]).all()
            torch.testing.assert_close(logits[:, model.text_vocab:], forced[:, j], atol=1e-4, rtol=0)
            tokens = codes[:, j] + model.text_vocab
    # one row alone decodes as in the batch: the padding of the others changes nothing
    with torch.no_grad():
        alone, _ = model({"tokens": model.caption_ids(texts[2:]), "codes": codes[2:]})
    torch.testing.assert_close(alone[0], forced[2], atol=1e-4, rtol=0)


def test_generate_images_seeded_counts_and_guidance():
    model = tiny_generator()
    a = model.generate_images(["a red circle", "a green star"], n=3, seed=5, guidance=3.0)
    b = model.generate_images(["a red circle", "a green star"], n=3, seed=5, guidance=3.0)
    assert len(a) == 6 and all(im.size == (16, 16) and im.mode == "RGB" for im in a)
    assert all(np.array_equal(x, y) for x, y in zip(pixels(a), pixels(b), strict=True))
    c = model.generate_images(["a red circle", "a green star"], n=3, seed=6, guidance=3.0)
    assert not all(np.array_equal(x, y) for x, y in zip(pixels(a), pixels(c), strict=True))
    for guidance in (0.0, 1.0, 3.0):
        codes = model.sample_codes(["a red circle"], n=2, seed=0, guidance=guidance)
        assert codes.shape == (2, 16) and int(codes.min()) >= 0 and int(codes.max()) < model.codes
        assert len(model.generate_images("a red circle", n=2, seed=0, guidance=guidance)) == 2
    # guidance 0 ignores the prompt: two prompts (one call each, the same seed), the same codes; guided, they differ
    x0 = model.sample_codes(["a red circle"], n=8, seed=3, guidance=0.0)
    assert torch.equal(x0, model.sample_codes(["a green star"], n=8, seed=3, guidance=0.0))
    assert not torch.equal(x0, model.sample_codes(["a green star"], n=8, seed=3, guidance=3.0))
    assert len(model.generate_images(["a red circle", "circle", "a green star"], n=2, seed=0, batch_size=1)) == 6
    # a prompt's images depend on the seed (and batch size), not on the prompts beside it
    alone = model.generate_images(["a green star"], n=2, seed=0)
    beside = model.generate_images(["a red circle", "a green star"], n=2, seed=0)[2:]
    assert [np.asarray(a).tobytes() for a in alone] == [np.asarray(b).tobytes() for b in beside]


@pytest.mark.parametrize("kwargs, fragment", [
    ({"texts": ""}, "empty prompt"), ({"texts": "   "}, "empty prompt"), ({"texts": []}, "no prompt"),
    ({"texts": "zebra giraffe"}, "no word this model knows"), ({"n": 0}, "n=0"), ({"n": 1000}, "n=1000"),
    ({"guidance": -1.0}, "guidance=-1.0"), ({"guidance": float("nan")}, "guidance=nan"),
    ({"steps": 10}, "steps=10"), ({"steps": 0}, "steps=0")])
def test_generate_images_refuses_bad_requests(kwargs, fragment):
    model = tiny_generator(layers=1)
    args = {"texts": "a red circle", "n": 1, "guidance": 1.0, **kwargs}
    with pytest.raises(InputError, match=fragment) as info:
        model.generate_images(**args)
    assert "\n" not in str(info.value)


# ---- learning ------------------------------------------------------------------------------------------------

def train_pair(seed: int, steps: int = 200) -> tuple[TokenImageGenerator, torch.Tensor]:
    """A tiny generator taught two captions, each its own fixed random 4 x 4 grid of codes."""
    model = tiny_generator(PAIR, seed=seed, layers=2, cond_drop=0.1)
    grids = torch.randint(0, model.codes, (2, 16), generator=torch.Generator().manual_seed(seed + 100))
    captions = model.caption_ids(PAIR).repeat(8, 1)
    codes = grids.repeat(8, 1)
    opt = torch.optim.AdamW(model.lm.parameters(), lr=3e-3, weight_decay=0.0)
    model.train()
    for _ in range(steps):
        _, losses = model({"tokens": captions, "codes": codes})
        opt.zero_grad()
        losses["loss"].backward()
        opt.step()
    return model.eval(), grids.view(2, 4, 4)


@pytest.fixture(scope="module")
def learned():
    return train_pair(seed=0)


def assert_learned(model: TokenImageGenerator, grids: torch.Tensor, seed: int) -> None:
    """Sampled with guidance 3 (temperature 1), most codes are right and the per-cell majority is each grid."""
    sampled = model.sample_codes(PAIR, n=8, seed=seed, guidance=3.0).view(2, 8, 4, 4)  # prompt-major
    assert (sampled == grids[:, None]).float().mean() >= 0.85, (sampled, grids)
    assert torch.equal(sampled.mode(dim=1).values, grids), (sampled, grids)


def test_learns_each_captions_code_grid(learned):
    model, grids = learned
    assert_learned(model, grids, seed=0)
    # generate_images: n images per prompt, the first prompt's first, each the decoded sampled grid
    sampled = torch.cat([model.sample_codes([p], n=2, seed=0, guidance=3.0) for p in PAIR])  # one call per prompt
    images = model.generate_images(PAIR, n=2, seed=0, guidance=3.0)
    with torch.no_grad():
        decoded = pixels(to_pil(model.image_tokenizer.decode(sampled)))
    assert all(np.array_equal(x, y) for x, y in zip(pixels(images), decoded, strict=True))


@pytest.mark.parametrize("seed", [1, 2])
def test_learning_holds_for_other_seeds(seed):
    assert_learned(*train_pair(seed=seed), seed=seed)


def test_save_and_load_give_the_same_images(learned, tmp_path):
    model, _ = learned
    model.save_pretrained(tmp_path / "m")
    again = polymodal.load(tmp_path / "m")
    assert isinstance(again, TokenImageGenerator) and again.architecture == "token_image_generator"
    for (name, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    first = model.generate_images(PAIR, n=2, seed=4)
    second = again.generate_images(PAIR, n=2, seed=4)
    assert all(np.array_equal(x, y) for x, y in zip(pixels(first), pixels(second), strict=True))


# ---- the task, through the CLI ------------------------------------------------------------------------------------

TINY_TASK = ["data.n=120", "data.render_size=32", "model.image.image_size=32", "val_images=8",
             "tokenizer_train.steps=4", "tokenizer_train.eval_every=2", "tokenizer_train.checkpoint_every=0",
             "tokenizer_train.batch_size=8", "tokenizer_train.warmup_steps=1", "tokenizer_train.log_every=2",
             "train.steps=4", "train.eval_every=2", "train.checkpoint_every=0", "train.batch_size=8",
             "train.warmup_steps=1", "train.log_every=2",
             "model.width=32", "model.layers=1", "model.heads=2", "model.image.channels=[8,8,8]"]


def one_line(stderr: str) -> list[str]:
    return [line for line in stderr.strip().splitlines() if line.strip()]


def test_task_trains_both_stages_and_the_cli_draws(tmp_path_factory, monkeypatch, capsys):
    tmp = tmp_path_factory.mktemp("t2it")
    data, run = f"data.path={tmp / 'shapes'}", tmp / "run"
    code, out, err = polymodal_cli(monkeypatch, capsys, "train", "configs/text_to_image_tokens.yaml", *TINY_TASK,
                                   data, f"train.out_dir={run}", "--quiet")
    assert code == 0, err
    summary = json.loads(out[out.index("{"):])
    assert summary["step"] == 4 and summary["train_pairs"] > 0 and np.isfinite(summary["final_loss"])
    assert np.isfinite(summary["image_tokenizer_val_mse"])
    assert (run / "image_tokenizer" / "model" / "model.safetensors").is_file()
    assert (run / "model" / "model.safetensors").is_file()
    assert polymodal.load(run / "image_tokenizer" / "model").architecture == "image_tokenizer"
    model = polymodal.load(run)
    assert isinstance(model, TokenImageGenerator) and model.cfg.tokens == 4 * 4 * 2  # 32 px: a 4 x 4 grid, 2 codes a cell
    assert model.image_tokenizer.encoder is None  # a generator ships the decoder only

    pngs = tmp / "png"
    code, out, err = polymodal_cli(monkeypatch, capsys, "generate", str(run), "a red circle", "--n", "2",
                                   "--out", str(pngs), "--quiet")
    assert code == 0, err
    assert sorted(p.name for p in pngs.iterdir()) == ["contact_sheet.png", "image_00.png", "image_01.png"]
    code, out, err = polymodal_cli(monkeypatch, capsys, "generate", str(run), "a red circle", "--steps", "10",
                                   "--out", str(tmp / "no"), "--quiet")
    lines = one_line(err)
    assert code == 2 and len(lines) == 1 and "steps=10" in lines[0] and "Traceback" not in err, err
    assert not (tmp / "no").exists()

    # a trained image tokenizer: stage 1 is skipped
    again = tmp / "again"
    code, out, err = polymodal_cli(monkeypatch, capsys, "train", "configs/text_to_image_tokens.yaml", *TINY_TASK,
                                   data, f"train.out_dir={again}", f"image_tokenizer={run / 'image_tokenizer' / 'model'}",
                                   "--quiet")
    assert code == 0, err
    assert (again / "model" / "model.safetensors").is_file() and not (again / "image_tokenizer").exists()
    loaded = polymodal.load(again)
    for name, value in model.image_tokenizer.state_dict().items():
        assert torch.equal(value, loaded.image_tokenizer.state_dict()[name]), name

    # ... and one that does not fit model.image is refused in one line
    code, out, err = polymodal_cli(monkeypatch, capsys, "train", "configs/text_to_image_tokens.yaml", *TINY_TASK,
                                   data, f"train.out_dir={tmp / 'bad'}", "model.image.levels=[5,5]",
                                   f"image_tokenizer={run / 'image_tokenizer' / 'model'}", "--quiet")
    lines = one_line(err)
    assert code == 2 and len(lines) == 1 and "image_tokenizer=" in lines[0] and "Traceback" not in err, err
    assert not (tmp / "bad" / "model").exists()
