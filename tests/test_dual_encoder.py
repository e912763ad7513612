"""The dual encoder: normalized embeddings, the InfoNCE loss and its variants, learning, save/load,
image-tower export, the contrastive task, and the optional Hugging Face text tower."""

from __future__ import annotations

import sys

import pytest
import torch
import torch.nn.functional as F

import polymodal
from polymodal.config import EncoderConfig
from polymodal.data.images import normalize
from polymodal.data.shapes import ShapesWorld
from polymodal.errors import ConfigError
from polymodal.eval.retrieval import model_fingerprint
from polymodal.models.dual_encoder import (
    ContrastiveLoss,
    ContrastiveLossConfig,
    DualEncoder,
    DualEncoderConfig,
    same_pair,
)
from polymodal.nn.encoders import build_encoder
from polymodal.nn.text_encoders import TextEncoderConfig
from polymodal.text.tokenizer import WordTokenizer

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_world(n: int = 20) -> tuple[torch.Tensor, list[str]]:
    """n Shapes World images (normalized, 32 px) and their canonical captions, made in memory."""
    world = ShapesWorld(n=n * 2, seed=3, image_size=32)
    from polymodal.data.images import image_to_uint8

    images = torch.stack([image_to_uint8(world.image("train", i), 32) for i in range(n)])
    return normalize(images), [world.captions("train", i)[0] for i in range(n)]


def tiny_dual(text: str = "transformer", pooling: str = "attention", seed: int = 0, **loss) -> DualEncoder:
    torch.manual_seed(seed)
    _, captions = tiny_world()
    cfg = DualEncoderConfig(encoder=EncoderConfig(name="small_cnn", width=8), image_size=32, embed_dim=16,
                            pooling=pooling, text=TextEncoderConfig(name=text, width=16, layers=1, heads=2),
                            loss=ContrastiveLossConfig(**loss))
    return DualEncoder(cfg, WordTokenizer.build(captions))


@pytest.mark.parametrize("text,pooling", [("transformer", "attention"), ("lstm", "mean")])
def test_embeddings_are_unit_length(text, pooling):
    model = tiny_dual(text, pooling).eval()
    images, captions = tiny_world(4)
    img = model.encode_image(images)
    txt = model.encode_text(model.tokenize(captions))
    assert img.shape == txt.shape == (4, 16)
    assert torch.allclose(img.norm(dim=-1), torch.ones(4), atol=1e-5)
    assert torch.allclose(model.embed_texts(captions).norm(dim=-1), torch.ones(4), atol=1e-5)
    assert model.encode_image(images, normalize=False).norm(dim=-1).sub(1).abs().max() > 1e-3


def test_padding_does_not_change_a_caption_embedding():
    model = tiny_dual().eval()
    alone = model.embed_texts(["a red circle"])
    with_long = model.embed_texts(["a red circle", "three shapes: a small red circle, a blue star and a square"])
    assert torch.allclose(alone[0], with_long[0], atol=1e-5)


def test_loss_decreases_and_pairs_are_retrieved_on_a_tiny_set():
    model = tiny_dual()
    images, captions = tiny_world(16)
    batch = {"images": images, "text_ids": model.tokenize(captions), "record": torch.arange(16)}
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        _, terms = model(batch)
        opt.zero_grad()
        terms["loss"].backward()
        opt.step()
        losses.append(float(terms["contrastive_loss"].detach()))
    assert losses[-1] < 0.5 * losses[0], losses
    model.eval()
    with torch.no_grad():
        sim = model.encode_image(images) @ model.encode_text(batch["text_ids"]).T
    assert (sim.argmax(1) == torch.arange(16)).float().mean() > 0.8  # memorised: far above chance (1/16)


def test_loss_at_chance_is_log_batch_and_duplicates_are_positives():
    loss = ContrastiveLoss(ContrastiveLossConfig())
    same = torch.zeros(6, 8)
    same[:, 0] = 1  # every embedding identical: all scores equal, the loss is chance, log(6)
    assert loss(same, same, torch.tensor(10.0))["loss"].item() == pytest.approx(torch.log(torch.tensor(6.0)).item())
    # images 0 and 1 share the caption "a red circle" (texts 0 and 1 are identical): a perfect model
    # maps both images onto it. Counted as negatives, the duplicate would cost log(2) per such row.
    ids = torch.tensor([[5, 6, 7], [5, 6, 7], [5, 8, 9], [4, 6, 9]])
    positives = same_pair(ids, torch.arange(4))
    assert positives.tolist() == [[True, True, False, False], [True, True, False, False],
                                  [False, False, True, False], [False, False, False, True]]
    txt = torch.eye(4, 8)
    txt[1] = txt[0]
    img = txt.clone()
    assert loss(img, txt, torch.tensor(100.0), positives)["loss"].item() < 1e-3
    assert loss(img, txt, torch.tensor(100.0))["loss"].item() > 0.3
    assert same_pair(torch.tensor([[1, 2], [3, 4]]), torch.tensor([7, 7])).all()  # same image: positive


def test_hard_negative_variants():
    torch.manual_seed(0)
    img, txt = F.normalize(torch.randn(8, 8), dim=-1), F.normalize(torch.randn(8, 8), dim=-1)
    scale = torch.tensor(10.0)
    plain = ContrastiveLoss(ContrastiveLossConfig())(img, txt, scale)
    flat = ContrastiveLoss(ContrastiveLossConfig("weighted", beta=0.0))(img, txt, scale)
    assert flat["loss"].item() == pytest.approx(plain["loss"].item(), rel=1e-5)  # beta 0 = uniform weights
    weighted = ContrastiveLoss(ContrastiveLossConfig("weighted", beta=1.0))(img, txt, scale)
    assert weighted["loss"].item() > plain["loss"].item()  # hard negatives weigh more: a larger denominator
    hardest = ContrastiveLoss(ContrastiveLossConfig("hardest", hard_weight=1.0, margin=0.2))(img, txt, scale)
    assert set(hardest) == {"contrastive_loss", "hard_negative_loss", "loss"}
    assert hardest["hard_negative_loss"].item() > 0
    with pytest.raises(ConfigError, match="hard_negatives"):
        ContrastiveLoss(ContrastiveLossConfig("semi"))


def test_hard_negative_captions_swap_or_replace_words_within_their_group():
    import random

    from polymodal.text.perturb import CaptionPerturber

    groups = [["red", "orange", "blue"], ["circle", "square"], ["three", "four"]]
    perturb, rng = CaptionPerturber(groups), random.Random(0)
    caption = "three shapes: a red circle, an orange square and a blue circle"
    seen = {perturb(caption, rng) for _ in range(200)}
    assert caption not in seen and None not in seen
    assert "three shapes: an orange circle, a red square and a blue circle" in seen  # a swap, articles fixed
    assert "four shapes: a red circle, an orange square and a blue circle" in seen  # a replacement
    for negative in seen:  # one edit, only ever within a group: the other words stay where they are
        changed = [(a, b) for a, b in zip(caption.split(), negative.split(), strict=True) if a != b]
        assert 1 <= len(changed) <= 4
        assert all(any(a.strip(",:") in g and b.strip(",:") in g for g in groups) or {a, b} == {"a", "an"}
                   for a, b in changed)
    assert perturb("there is a green star", rng) is None
    always_swap = CaptionPerturber(groups, swap_probability=1.0)
    assert always_swap("a red circle and a blue square", rng) in {"a blue circle and a red square",
                                                                  "a red square and a blue circle"}


def test_negative_captions_are_extra_candidates_for_the_images():
    torch.manual_seed(0)
    img, txt = F.normalize(torch.randn(6, 8), dim=-1), F.normalize(torch.randn(6, 8), dim=-1)
    loss, scale = ContrastiveLoss(ContrastiveLossConfig()), torch.tensor(10.0)
    plain = loss(img, txt, scale)["loss"]
    none_valid = loss(img, txt, scale, negatives=txt.flip(0), negative_valid=torch.zeros(6, dtype=torch.bool))
    assert none_valid["loss"].item() == pytest.approx(plain.item(), rel=1e-6)  # masked out: no change
    copies = loss(img, txt, scale, negatives=txt, negative_valid=torch.ones(6, dtype=torch.bool))
    assert copies["loss"].item() > plain.item()  # a negative as close as the caption itself costs
    model = tiny_dual()
    images, captions = tiny_world(4)
    batch = {"images": images, "text_ids": model.tokenize(captions),
             "negative_ids": model.tokenize(captions[::-1]), "negative_valid": torch.ones(4, dtype=torch.bool)}
    _, terms = model(batch)
    terms["loss"].backward()
    assert 0.0 <= terms["negative_caption_accuracy"].item() <= 1.0


def test_logit_scale_is_learned_and_clamped_at_100():
    model = tiny_dual()
    assert model.scale().item() == pytest.approx(1 / 0.07, rel=1e-4)
    with torch.no_grad():
        model.logit_scale.fill_(10.0)
    assert model.scale().item() == pytest.approx(100.0)
    images, captions = tiny_world(4)
    _, terms = model({"images": images, "text_ids": model.tokenize(captions)})
    terms["loss"].backward()
    assert model.logit_scale.grad is not None and model.logit_scale.grad.item() == 0.0  # clamped: no gradient


def test_save_load_round_trip_and_image_encoder_export(tmp_path):
    model = tiny_dual().eval()
    images, captions = tiny_world(4)
    model.save_pretrained(tmp_path / "m")
    loaded = polymodal.load(tmp_path / "m")
    assert isinstance(loaded, DualEncoder)
    assert torch.equal(loaded.embed_texts(captions), model.embed_texts(captions))
    assert torch.equal(loaded.encode_image(images), model.encode_image(images))
    assert model_fingerprint(loaded) == model_fingerprint(model)
    path = model.export_image_encoder(tmp_path / "enc.safetensors")
    encoder = build_encoder(EncoderConfig(name="small_cnn", width=8, pretrained=str(path))).eval()
    assert torch.equal(encoder(images), model.encoder(images))


def test_contrastive_task_trains_saves_and_exports(tmp_path):
    from polymodal.train.tasks import load_task_config

    task, cfg = load_task_config("configs/contrastive.yaml", [
        "data.n=30", "data.render_size=32", "model.image_size=32", "model.encoder.width=8",
        "model.text.width=16", "model.text.layers=1", "model.embed_dim=16", "train.steps=6",
        "train.batch_size=16", "train.eval_every=3", "train.warmup_steps=2", "train.similar_batches=2",
        f"train.out_dir={tmp_path / 'run'}"])
    summary = task(cfg, progress=False)
    assert summary["step"] == 6 and summary["test"]["strict"]["images"] == 3
    assert 0.0 <= summary["final_negative_caption_accuracy"] <= 1.0  # the config's hard negative captions
    loaded = polymodal.load(tmp_path / "run")
    assert isinstance(loaded, DualEncoder) and loaded.ood_stats is not None  # search by an unlike image can say so
    assert summary["ood_threshold"] == pytest.approx(loaded.ood_stats.threshold)
    assert (tmp_path / "run" / "image_encoder.safetensors").is_file()


# ----------------------------------------------------------------------------- Hugging Face text tower
@pytest.fixture
def tiny_bert(tmp_path):
    """A tiny random BERT folder written here (the dev extra installs transformers; no MiniLM, no network)."""
    import transformers  # here, not at the top: only the hf_bert tests pay for importing it

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "red", "blue", "circle", "square", "crimson"]
    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "vocab.txt").write_text("\n".join(words) + "\n")
    transformers.BertTokenizerFast(vocab_file=str(tmp_path / "bert" / "vocab.txt")).save_pretrained(tmp_path / "bert")
    config = transformers.BertConfig(vocab_size=len(words), hidden_size=16, num_hidden_layers=1,
                                     num_attention_heads=2, intermediate_size=32, max_position_embeddings=32)
    torch.manual_seed(0)
    transformers.BertModel(config).save_pretrained(tmp_path / "bert")
    return tmp_path / "bert"


@pytest.mark.parametrize("freeze", [True, False])
def test_hf_text_tower_trains_saves_and_loads(tiny_bert, tmp_path, freeze):
    torch.manual_seed(0)
    cfg = DualEncoderConfig(encoder=EncoderConfig(name="small_cnn", width=8), image_size=32, embed_dim=16,
                            text=TextEncoderConfig(name="hf_bert", path=str(tiny_bert), freeze=freeze), text_mlp=24)
    model = DualEncoder(cfg, None)
    bert_params = list(model.text.parameters())
    assert all(p.requires_grad != freeze for p in bert_params)
    texts = ["a red circle", "a blue square", "a crimson circle"]
    emb = model.embed_texts(texts)
    assert emb.shape == (3, 16) and torch.allclose(emb.norm(dim=-1), torch.ones(3), atol=1e-5)
    images, _ = tiny_world(3)
    _, terms = model.train()({"images": images, "text_ids": model.tokenize(texts)})
    terms["loss"].backward()
    assert model.text_proj[0].weight.grad is not None
    assert (bert_params[0].grad is None) == freeze
    model.save_pretrained(tmp_path / "m")
    assert (tmp_path / "m" / "text_tower" / "config.json").is_file()
    loaded = polymodal.load(tmp_path / "m")
    assert torch.allclose(loaded.embed_texts(texts), model.embed_texts(texts), atol=1e-6)


def test_hf_text_tower_without_transformers_is_a_clear_config_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)  # import now fails as if not installed
    cfg = DualEncoderConfig(encoder=EncoderConfig(name="small_cnn", width=8), image_size=32,
                            text=TextEncoderConfig(name="hf_bert", path="/nowhere"))
    with pytest.raises(ConfigError, match="pip install 'polymodal\\[pretrained-text\\]'"):
        DualEncoder(cfg, None)
