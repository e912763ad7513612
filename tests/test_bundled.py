"""What ships in the package: every bundled model loads, has a card, stays small; `polymodal models` lists
them; `polymodal serve` with no model serves them, and a damaged install turns off one capability, not all."""

from __future__ import annotations

import pytest

from polymodal.assets import ASSETS, SERVED, bundled_names, read_card

from .conftest import polymodal_cli

pytestmark = pytest.mark.usefixtures("one_thread")


def test_every_bundled_model_has_a_card_and_all_stay_under_30_mb():
    names = bundled_names()
    assert set(SERVED) <= set(names) and len(names) >= 3
    total = sum(f.stat().st_size for name in names for f in (ASSETS / name).iterdir())
    assert total < 30 * 2**20
    for name in names:
        card = read_card(ASSETS / name)
        assert card["capability"] and card["trained_on"] and card["command"].startswith("polymodal train")
        assert card["figures"], name


def test_models_lists_kind_size_training_data_and_figures(monkeypatch, capsys):
    code, out, err = polymodal_cli(monkeypatch, capsys, "models")
    assert code == 0, err
    assert "[prefix_lm, 3." in out and "trained on: Shapes World" in out and "CHAIR-i" in out
    assert out.strip().splitlines()[-1].endswith("MB in all")


def test_serve_without_models_serves_the_bundled_ones_and_survives_a_broken_one(monkeypatch, capsys, tmp_path):
    import uvicorn

    served = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: served.update(app.state.service.models.entries))
    code, out, err = polymodal_cli(monkeypatch, capsys, "serve", "--port", "0")
    assert code == 0, err
    assert set(served) == set(SERVED)
    served.clear()
    monkeypatch.setattr("polymodal.assets.SERVED", (*SERVED, "shapes_missing_model"))
    code, out, err = polymodal_cli(monkeypatch, capsys, "serve", "--port", "0")
    assert code == 0 and set(served) == set(SERVED), err
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "shapes_missing_model" in warnings[0] and "is off" in warnings[0]


def test_the_page_capabilities_work_right_after_install():
    """What a newcomer gets from `polymodal serve`: a true caption and a right answer about one scene."""
    import io

    from fastapi.testclient import TestClient

    from polymodal.cli.serve import load_bundled
    from polymodal.data.shapes import Scene, ShapeObject, render
    from polymodal.serve.app import create_app

    png = io.BytesIO()
    render(Scene((ShapeObject("circle", "red", "large", 0.3, 0.5),), (40, 40, 40)), 64).save(png, "PNG")
    upload = {"image": ("scene.png", png.getvalue(), "image/png")}
    with TestClient(create_app(load_bundled())) as client:
        caption = client.post("/v1/caption", files=upload).json()
        answer = client.post("/v1/vqa", files=upload, data={"question": "what colour is the circle?"}).json()
    assert "red circle" in caption["captions"][0]["text"] and caption["in_distribution"] is True
    assert answer["answers"][0]["answer"] == "red" and answer["in_distribution"] is True
