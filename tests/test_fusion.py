"""Every registered fusion variant: shapes, gradients into every modality, masks; votes on hand-made logits."""

from __future__ import annotations

import math

import pytest
import torch

from polymodal.errors import ConfigError
from polymodal.nn.fusion.base import FusionConfig, build_fusion
from polymodal.registry import FUSION

DIMS = {"image": 6, "text": 5, "audio": 4}
K = 7


pytestmark = pytest.mark.usefixtures("one_thread")


def _features(batch: int = 3) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return {"image": torch.randn(batch, 9, 6, requires_grad=True),   # regions
            "text": torch.randn(batch, 4, 5, requires_grad=True),    # padded tokens
            "audio": torch.randn(batch, 4, requires_grad=True)}      # one vector


MASKS = {"text": torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]], dtype=torch.bool)}


def _build(name: str, dims: dict[str, int] = DIMS) -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = FusionConfig(name=name, dim=16, hidden=12, heads=2, dropout=0.0)
    return build_fusion(cfg, dims, num_classes=K).eval()


def test_all_variants_are_registered():
    assert set(FUSION.names()) >= {"concat_linear", "concat_mlp", "gated", "bilinear", "film", "cross_attention",
                                   "vote_fixed", "vote_learned", "vote_hard", "vote_soft"}


@pytest.mark.parametrize("name", FUSION.names())
def test_shapes_and_gradients_reach_every_modality(name):
    fusion, feats = _build(name), _features()
    out = fusion(feats, MASKS)
    if fusion.level == "decision":
        assert out.shape == (3, K)
        assert torch.allclose(out.exp().sum(-1), torch.ones(3), atol=1e-4)  # log-probabilities
    else:
        assert out.shape == (3, fusion.out_dim) == (3, 16)
    (out * torch.randn_like(out)).sum().backward()
    for modality, x in feats.items():
        assert x.grad is not None and x.grad.abs().sum() > 0, f"{name}: no gradient reaches {modality}"


@pytest.mark.parametrize("name", FUSION.names())
def test_padding_never_changes_the_output(name):
    fusion, feats = _build(name), _features()
    changed = {**feats, "text": feats["text"].detach().clone()}
    changed["text"][~MASKS["text"]] = 1e3  # garbage in the padded positions only
    with torch.no_grad():
        assert torch.allclose(fusion(feats, MASKS), fusion(changed, MASKS), atol=1e-5)


@pytest.mark.parametrize("name", FUSION.names())
def test_two_modalities_and_wrong_inputs(name):
    fusion = _build(name, {"image": 6, "text": 5})
    feats = _features()
    assert fusion({"image": feats["image"], "text": feats["text"]}).shape[0] == 3
    with pytest.raises(ValueError, match="built for"):
        fusion({"image": feats["image"]})


def _vote(name: str, logits: dict[str, list[float]], weights: list[float] | None = None) -> int:
    fusion = build_fusion(FusionConfig(name=name, weights=weights or []), {m: 2 for m in logits}, num_classes=3)
    combined = fusion.combine({m: torch.tensor([v]) for m, v in logits.items()})
    assert torch.allclose(combined.exp().sum(), torch.tensor(1.0), atol=1e-5)
    return int(combined.argmax())


def test_votes_on_hand_made_logits():
    # a and b weakly prefer class 0; c is very sure of class 1
    logits = {"a": [1.0, 0.5, 0.0], "b": [1.0, 0.5, 0.0], "c": [-5.0, 5.0, -5.0]}
    assert _vote("vote_hard", logits) == 0           # two votes beat one, however confident
    assert _vote("vote_soft", logits) == 1           # mean probability of class 1 is 0.54 vs 0.34
    assert _vote("vote_fixed", logits, [1, 1, 0]) == 0   # only a and b count
    assert _vote("vote_fixed", logits, [0, 0, 1]) == 1   # only c counts
    assert _vote("vote_learned", logits) == _vote("vote_fixed", logits)  # learned weights start equal
    # two voters disagree: the tie goes to the more confident one
    assert _vote("vote_hard", {"a": [2.0, 0.0, 0.0], "b": [0.0, 9.0, 0.0]}) == 1
    assert _vote("vote_hard", {"a": [9.0, 0.0, 0.0], "b": [0.0, 2.0, 0.0]}) == 0


def test_soft_and_fixed_votes_have_their_closed_forms():
    logits = {"a": torch.tensor([[0.2, 1.0, -1.0]]), "b": torch.tensor([[2.0, 0.0, 0.5]])}
    pa, pb = logits["a"].softmax(-1), logits["b"].softmax(-1)
    soft = build_fusion(FusionConfig(name="vote_soft"), {"a": 2, "b": 2}, num_classes=3)
    assert torch.allclose(soft.combine(logits).exp(), (pa + pb) / 2, atol=1e-6)
    fixed = build_fusion(FusionConfig(name="vote_fixed", weights=[3, 1]), {"a": 2, "b": 2}, num_classes=3)
    expected = (0.75 * pa.log() + 0.25 * pb.log()).softmax(-1)
    assert torch.allclose(fixed.combine(logits).exp(), expected, atol=1e-6)


def test_learned_vote_weights_learn_to_trust_the_informative_head():
    torch.manual_seed(0)
    fusion = build_fusion(FusionConfig(name="vote_learned", hidden=8, dropout=0.0), {"good": 3, "noise": 3},
                          num_classes=3)
    opt = torch.optim.Adam(fusion.parameters(), lr=0.05)
    for _ in range(60):
        x = torch.randn(32, 3)
        target = x.argmax(-1)
        out = fusion({"good": x, "noise": torch.randn(32, 3)})
        loss = torch.nn.functional.nll_loss(out, target)
        opt.zero_grad()
        loss.backward()
        opt.step()
    weights = fusion.mixing_weights().detach()
    assert weights[0] > 0.6 and math.isclose(float(weights.sum()), 1.0, rel_tol=1e-5)


def test_bad_fusion_configs_are_config_errors():
    with pytest.raises(ConfigError, match="weights"):
        build_fusion(FusionConfig(name="vote_fixed", weights=[1.0]), {"image": 2, "text": 2}, num_classes=3)
    with pytest.raises(ConfigError, match="query"):
        build_fusion(FusionConfig(name="cross_attention", query="audio"), {"image": 2, "text": 2})
    with pytest.raises(ConfigError, match="num_classes"):
        build_fusion(FusionConfig(name="vote_soft"), {"image": 2, "text": 2})
    with pytest.raises(ConfigError, match="did you mean"):
        build_fusion(FusionConfig(name="gatd"), {"image": 2, "text": 2})
    with pytest.raises(ConfigError, match="at least 2"):
        build_fusion(FusionConfig(name="film"), {"image": 2})




def _relation_head():
    from polymodal.nn.fusion.relation import RelationHead

    torch.manual_seed(0)
    return RelationHead(obj_dim=6, q_dim=5, hidden=12, out_dim=7, slots=3).eval()


def test_relation_head_shapes_and_gradients():
    from polymodal.nn.fusion.relation import grid_xy

    head = _relation_head()
    regions, question = torch.randn(3, 9, 6, requires_grad=True), torch.randn(3, 4, 5, requires_grad=True)
    picked, attention = head.select(regions, grid_xy(9, regions.device), question)
    assert picked.shape == (3, 3, 6 + 2) and attention.shape == (3, 3, 9)
    assert torch.allclose(attention.sum(-1), torch.ones(3, 3))
    out = head(regions, grid_xy(9, regions.device), question)
    assert out.shape == (3, 7)
    out.sum().backward()
    assert regions.grad.abs().sum() > 0 and question.grad.abs().sum() > 0
    assert head.score.weight.grad.abs().sum() > 0 and head.slot_words.weight.grad.abs().sum() > 0  # selection learns
    assert head(torch.randn(2, 1, 6), grid_xy(1, regions.device), torch.randn(2, 4, 5)).shape == (2, 7)  # one region


def test_relation_head_ignores_the_order_of_objects_and_masked_regions():
    from polymodal.nn.fusion.relation import grid_xy

    head = _relation_head()
    regions, question, xy = torch.randn(2, 9, 6), torch.randn(2, 4, 5), grid_xy(9, torch.device("cpu"))
    with torch.no_grad():
        picked, _ = head.select(regions, xy, question)
        order = torch.tensor([2, 0, 1])  # the selected objects in another order: same pairs, same result
        assert torch.allclose(head.relate(picked, question[:, 0]), head.relate(picked[:, order], question[:, 0]), atol=1e-5)
        perm = torch.randperm(9)  # shuffling the regions (with their positions) changes nothing
        assert torch.allclose(head(regions, xy, question), head(regions[:, perm], xy[:, perm], question), atol=1e-5)
        mask = torch.ones(2, 9, dtype=torch.bool)
        mask[:, 7:] = False
        garbage = regions.clone()
        garbage[:, 7:] = 1e3
        assert torch.allclose(head(regions, xy, question, mask), head(garbage, xy, question, mask), atol=1e-5)
        assert not torch.allclose(head(regions, xy, question), head(regions, xy.flip(1), question))  # xy matters
