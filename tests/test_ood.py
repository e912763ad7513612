"""Out-of-distribution scoring (polymodal.eval.ood): shifted data is told apart, the threshold flags the
calibrated share, the statistics round-trip through safetensors, and a checkpoint without them says so."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from polymodal import load
from polymodal.assets import ATTENTION_LSTM, bundled_model_dir
from polymodal.errors import CheckpointError, ConfigError
from polymodal.eval.ood import FILE, FeatureStats, auroc, ledoit_wolf_shrinkage, pooled_image_features

from .conftest import tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")


def gaussian(n: int, d: int = 16, shift: float = 0.0, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    scales = torch.linspace(0.5, 5.0, d)  # features on very different scales, as a network's are
    mix = torch.linalg.qr(torch.randn(d, d, generator=torch.Generator().manual_seed(99)))[0]  # correlated
    return (torch.randn(n, d, generator=g) * scales) @ mix + shift


@pytest.fixture(scope="module")
def stats() -> FeatureStats:
    return FeatureStats.fit(gaussian(2000, seed=1), gaussian(2000, seed=2), quantile=0.98)


def test_shifted_data_is_told_apart_and_the_calibrated_share_is_flagged(stats):
    inside, shifted = gaussian(2000, seed=3), gaussian(500, shift=2.5, seed=4)
    assert auroc(stats.score(inside), stats.score(shifted)) > 0.99
    flagged = 1 - stats.in_distribution(inside).float().mean().item()
    assert 0.01 <= flagged <= 0.03  # ~ 1 - quantile of new in-distribution data
    assert stats.in_distribution(shifted).float().mean().item() < 0.05


def test_a_shift_along_the_smallest_direction_is_caught_where_euclidean_distance_misses_it(stats):
    mix = torch.linalg.qr(torch.randn(16, 16, generator=torch.Generator().manual_seed(99)))[0]
    inside = gaussian(1000, seed=5)
    shifted = gaussian(1000, seed=6) + 3.0 * mix[0]  # the direction of scale 0.5: six standard deviations
    euclid = auroc((inside - stats.mean).norm(dim=1), (shifted - stats.mean).norm(dim=1))
    assert auroc(stats.score(inside), stats.score(shifted)) > 0.99 and euclid < 0.6


def test_few_samples_in_many_dimensions_still_give_a_finite_useful_score():
    g = torch.Generator().manual_seed(0)
    few = FeatureStats.fit(torch.randn(20, 64, generator=g), torch.randn(20, 64, generator=g))
    assert few.shrinkage > 0.3 and torch.isfinite(few.precision).all()
    assert auroc(few.score(torch.randn(200, 64, generator=g)), few.score(torch.randn(200, 64, generator=g) + 1)) > 0.99


def test_shrinkage_is_small_with_plenty_of_samples_and_the_estimate_is_symmetric():
    mix = torch.tensor([[1.0, 0.9, 0.0], [0.0, 0.4, 0.0], [0.0, 0.0, 2.0]], dtype=torch.float64)
    z = torch.randn(5000, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64) @ mix
    cov, weight = ledoit_wolf_shrinkage(z - z.mean(0))
    assert weight < 0.01 and torch.allclose(cov, cov.T) and torch.allclose(cov, mix.T @ mix, atol=0.15)
    _, weight = ledoit_wolf_shrinkage(z[:, :1] * torch.ones(1, 3) + 0.01 * z)  # the truth far from its target
    assert weight < 0.01
    z = torch.randn(5000, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    assert ledoit_wolf_shrinkage(z - z.mean(0))[1] > 0.5  # the truth is the target (mu * I): lean on it


def test_save_load_round_trip_is_exact(stats, tmp_path):
    path = stats.save(tmp_path)
    assert path.name == FILE and not list(tmp_path.glob("*.tmp"))
    back = FeatureStats.load(tmp_path)
    assert torch.equal(back.mean, stats.mean) and torch.equal(back.precision, stats.precision)
    assert (back.threshold, back.quantile, back.score_name, back.shrinkage) == \
        (stats.threshold, stats.quantile, stats.score_name, stats.shrinkage)
    x = gaussian(10, seed=7)
    assert torch.equal(back.score(x), stats.score(x))


def test_a_checkpoint_without_stats_gives_none_and_a_broken_file_one_line(tmp_path):
    assert FeatureStats.load(tmp_path) is None
    assert FeatureStats.load(bundled_model_dir("shapes_video_captioner")) is None  # saved before OOD scoring
    assert FeatureStats.load(bundled_model_dir()).threshold > 0  # the bundled captioner ships its statistics
    (tmp_path / FILE).write_bytes(b"not safetensors")
    with pytest.raises(CheckpointError) as info:
        FeatureStats.load(tmp_path)
    assert FILE in str(info.value) and "\n" not in str(info.value)


def test_fit_refuses_mismatched_shapes_with_one_line():
    with pytest.raises(ConfigError, match="same D"):
        FeatureStats.fit(torch.randn(10, 3), torch.randn(10, 4))


@pytest.mark.parametrize("name", [None, ATTENTION_LSTM])
def test_pooled_image_features_of_both_bundled_captioner_kinds(name):
    model = load(bundled_model_dir() if name is None else bundled_model_dir(name)).train()
    images = [Image.new("RGB", (64, 64), "white"), Image.new("RGB", (50, 70), (200, 10, 10))]
    feats = pooled_image_features(model, images, batch_size=1)
    assert feats.shape == (2, model.encoder.out_dim) and feats.dtype == torch.float32
    assert model.training  # the caller's mode is kept
    with torch.inference_mode():
        expected = model.eval().encoder(model.preprocess(images)).mean(1)
    assert torch.allclose(feats, expected, atol=1e-5) and not torch.allclose(feats[0], feats[1])


def test_pooled_image_features_refuses_a_model_without_an_image_encoder():
    model = tiny_model()
    del model.encoder
    with pytest.raises(ConfigError, match="no image encoder"):
        pooled_image_features(model, [Image.new("RGB", (32, 32))])


def test_auroc_on_known_inputs():
    assert auroc([0.0, 1.0], [2.0, 3.0]) == 1.0 and auroc([2.0, 3.0], [0.0, 1.0]) == 0.0
    assert auroc([0.0, 2.0], [1.0, 3.0]) == 0.75  # 3 of the 4 pairs ordered right
    assert auroc([1.0, 1.0], [1.0]) == 0.5  # ties count half
    assert auroc(torch.tensor([0.0, 1.0, 1.0]), torch.tensor([1.0, 2.0])) == pytest.approx((0.5 + 0.5 + 1 + 3) / 6)
    with pytest.raises(ConfigError):
        auroc([], [1.0])


# ----------------------------------------------------------------------------- wired in: CLI, API, training
def _noise_and_scene(tmp_path):
    import numpy as np
    from PIL import Image

    from polymodal.data.shapes import Scene, ShapeObject, render

    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "noise.png")
    render(Scene((ShapeObject("circle", "red", "large", 0.3, 0.5),), (40, 40, 40)), 64).save(tmp_path / "scene.png")
    return tmp_path / "noise.png", tmp_path / "scene.png"


def test_bundled_captioner_flags_noise_in_the_api_and_the_cli(tmp_path, monkeypatch, capsys):
    from fastapi.testclient import TestClient

    from polymodal.assets import bundled_model_dir
    from polymodal.cli import main
    from polymodal.serve.app import create_app

    noise, scene = _noise_and_scene(tmp_path)
    with TestClient(create_app([bundled_model_dir()])) as client:
        replies = [client.post("/v1/caption", files={"image": (p.name, p.read_bytes(), "image/png")}).json()
                   for p in (noise, scene)]
    assert [r["in_distribution"] for r in replies] == [False, True]
    assert replies[0]["ood_score"] > replies[1]["ood_score"]
    monkeypatch.setattr("sys.argv", ["polymodal", "caption", str(bundled_model_dir()), str(noise), str(scene)])
    with pytest.raises(SystemExit) as stop:
        main()
    err = capsys.readouterr().err
    assert stop.value.code in (0, None)
    assert err.count("warning:") == 1 and "noise.png" in err and "scene.png" not in err


def test_a_model_saved_without_statistics_still_captions_and_says_so_once(tmp_path, monkeypatch, capsys):
    from polymodal.cli import main

    from .conftest import tiny_model

    tiny_model().save_pretrained(tmp_path / "m")
    noise, scene = _noise_and_scene(tmp_path)
    monkeypatch.setattr("sys.argv", ["polymodal", "caption", str(tmp_path / "m"), str(noise), str(scene)])
    with pytest.raises(SystemExit) as stop:
        main()
    captured = capsys.readouterr()
    assert stop.value.code in (0, None) and captured.out.count(".png:") == 2
    assert captured.err.count("no out-of-distribution statistics") == 1
