"""SCST: the CIDEr-D reward equals pycocoevalcap's, the policy gradient raises the reward, the task runs."""

from __future__ import annotations

import pytest
import torch

from polymodal.config import DecoderConfig, EncoderConfig, ModelConfig
from polymodal.errors import ConfigError
from polymodal.eval.caption_metrics import simple_tokenize
from polymodal.models.captioner import Captioner
from polymodal.train.scst import CiderD, ScstConfig, SelfCritical

from .conftest import CAPTIONS, tiny_model

REFS = [["a red circle", "a red round circle", "one red circle"], ["a small blue square", "a blue square"],
        ["a green star and a circle", "two shapes: a green star and a circle"], ["a large yellow triangle"]]


def test_cider_d_equals_pycocoevalcap_per_image():
    from pycocoevalcap.cider.cider import Cider

    hyps = ["a red circle", "a blue square left", "a green star", "a triangle, yellow and large"]
    gts = {i: [simple_tokenize(r) for r in refs] for i, refs in enumerate(REFS)}
    res = {i: [simple_tokenize(h)] for i, h in enumerate(hyps)}
    _, expected = Cider().compute_score(gts, res)
    reward = CiderD(REFS)  # IDF from the same four images, as pycocoevalcap computes it
    got = reward(hyps, [0, 1, 2, 3])
    assert torch.allclose(got, torch.tensor(expected, dtype=got.dtype), atol=1e-6)
    assert reward.score("a red circle", 0) > reward.score("a red square", 0) > reward.score("", 0) == 0.0


def _toy_reward(captions: list[str], indices: list[int]) -> torch.Tensor:
    """Reward the word "red": a signal a random tiny model can find by sampling."""
    return torch.tensor([c.split().count("red") / max(len(c.split()), 1) for c in captions])


def _train(objective: SelfCritical, batch: dict, steps: int, lr: float) -> None:
    optimizer = torch.optim.Adam(objective.parameters(), lr=lr)
    for _ in range(steps):
        objective.train()
        _, terms = objective(batch)
        optimizer.zero_grad()
        terms["loss"].backward()
        optimizer.step()


@pytest.mark.parametrize("baseline", ["greedy", "mean"])
def test_policy_gradient_raises_the_reward(baseline):
    torch.manual_seed(0)
    model = tiny_model(decoder="transformer" if baseline == "mean" else "attention_lstm")
    objective = SelfCritical(model, _toy_reward, ScstConfig(baseline=baseline, num_samples=6))
    batch = {"images": torch.randn(4, 3, 32, 32), "record": torch.arange(4)}

    def mean_reward() -> float:
        torch.manual_seed(123)  # the same sampling seeds before and after
        return float(torch.stack([objective(batch)[1]["reward"] for _ in range(3)]).mean())

    before = mean_reward()
    _train(objective, batch, steps=10, lr=0.03)
    after = mean_reward()
    assert after > before + 0.2, (before, after)


def test_objective_shares_the_captioners_parameters_and_advantages():
    torch.manual_seed(0)
    model = tiny_model(decoder="transformer")
    objective = SelfCritical(model, _toy_reward, ScstConfig(baseline="mean", num_samples=4))
    assert objective.state_dict().keys() == model.state_dict().keys()  # checkpoints and resume see the model
    objective.train()
    assert not model.training  # on-policy: the sampling network has no dropout
    logp, mask = objective.sequence_logprobs(torch.randn(2, 3, 32, 32), [[4, 5, 6], [7]])
    assert mask.sum(1).tolist() == [4, 2] and (logp[mask] < 0).all() and (logp[~mask] == 0).all()
    with pytest.raises(ConfigError, match="greedy or mean"):
        SelfCritical(model, _toy_reward, ScstConfig(baseline="max"))


def test_scst_task_fine_tunes_a_saved_captioner(tmp_path):
    from polymodal import load
    from polymodal.config import load_config
    from polymodal.train.tasks import load_task_config

    torch.manual_seed(0)
    cfg = ModelConfig(image_size=32, encoder=EncoderConfig(width=8),
                      decoder=DecoderConfig(name="transformer", hidden_dim=16, num_heads=2, max_len=8))
    from polymodal.data.datasets import load_split
    from polymodal.text.tokenizer import WordTokenizer

    data = load_config(None, ["data.n=40", "data.render_size=32"]).data
    captions = [c for r in load_split(data, "train") for c in r.captions] + CAPTIONS
    Captioner(cfg, WordTokenizer.build(captions)).save_pretrained(tmp_path / "xe")
    task, scst_cfg = load_task_config(None, [
        "task=scst", f"init_from={tmp_path / 'xe'}", f"train.out_dir={tmp_path / 'scst'}", "train.steps=3",
        "train.batch_size=4", "train.eval_every=3", "train.log_every=1", "scst.num_samples=2",
        "scst.eval_images=4", "data.n=40", "data.render_size=32"])
    summary = task(scst_cfg, progress=False)
    assert summary["step"] == 3 and summary["architecture"] == "captioner" and "final_reward" in summary
    tuned = load(tmp_path / "scst")
    assert type(tuned) is Captioner and tuned.cfg.decoder.name == "transformer"


def test_truth_penalty_lowers_the_reward_of_hallucinated_and_missing_objects():
    from polymodal.eval.hallucination import ObjectTruth, SceneObject, ShapesVocabulary
    from polymodal.train.scst import TruthPenalty

    truth = ObjectTruth({"a": [SceneObject("circle", {"colour": "red"}), SceneObject("star", {"colour": "blue"})]},
                        ShapesVocabulary())
    reward = TruthPenalty(lambda caps, idx: torch.full((len(caps),), 3.0), truth, ["a"],
                          ScstConfig(hallucination_penalty=1.0, missing_penalty=0.25))
    scores = reward(["a red circle and a blue star", "a red circle", "a green circle and a red square"], [0, 0, 0])
    assert scores.tolist() == [3.0, 2.75, 3.0 - 2 * 1.0 - 2 * 0.25]
    with pytest.raises(ConfigError, match="no objects known for image 'b'"):
        TruthPenalty(lambda caps, idx: torch.zeros(len(caps)), truth, ["a", "b"], ScstConfig(hallucination_penalty=1))


def test_truth_penalty_off_shapes_world_needs_an_instances_file(tmp_path):
    from polymodal.config import DataConfig
    from polymodal.train.scst import ScstExperimentConfig, _object_truth

    cfg = ScstExperimentConfig(data=DataConfig(format="coco", path=str(tmp_path / "c.json")),
                               scst=ScstConfig(hallucination_penalty=1.0))
    with pytest.raises(ConfigError, match="needs scst.objects"):
        _object_truth(cfg)
