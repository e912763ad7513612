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
