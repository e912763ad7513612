"""`polymodal serve` and `polymodal export` (registered on the main app)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from ..errors import CheckpointError, PolymodalError
from .app import app
from .kinds import check_for, load_for


@app.command()
def serve(
    model_dirs: list[Path] = typer.Argument(None, help="model directories: captioners, VQA, chat and dual "
                                            "encoder models (default: every bundled model, `polymodal models`)"),
    host: str = typer.Option("127.0.0.1", help="address to bind; 127.0.0.1 keeps it on this machine"),
    port: int = typer.Option(8000, help="TCP port"),
    index: Path | None = typer.Option(None, "--index", help="retrieval index to search (from `polymodal index`)"),
    max_batch: int = typer.Option(8, help="caption requests per forward pass; 1 = no dynamic batching"),
    max_wait_ms: float = typer.Option(25.0, help="most a batch waits for requests already arriving"),
    continuous: bool = typer.Option(False, help="continuous batching: beam search requests join a running "
                                    "batch between steps (default: whole batches, faster on a CPU)"),
    max_mb: float = typer.Option(10.0, "--max-mb", help="largest request body in MB"),
    max_pixels: int = typer.Option(4096 * 4096, help="largest image (width x height) accepted"),
    timeout: float = typer.Option(30.0, help="seconds before a request gives up (HTTP 504)"),
    threads: int | None = typer.Option(None, help="torch threads (default: torch's choice)"),
) -> None:
    """Serve the models as a REST API and a web page (open http://HOST:PORT/)."""
    import torch
    import uvicorn

    from ..serve import ServeConfig, create_app
    from ..serve.uploads import Limits

    for folder in model_dirs or []:
        check_for("serve", folder)
    if threads:
        torch.set_num_threads(threads)
    config = ServeConfig(limits=Limits(max_bytes=int(max_mb * 2**20), max_pixels=max_pixels), max_batch=max_batch,
                         max_wait_ms=max_wait_ms, continuous=continuous, timeout_s=timeout)
    if model_dirs:
        web = create_app(model_dirs, index=index, config=config)
    else:
        bundled = load_bundled()
        web = create_app(bundled, index=index or bundled_index(bundled), config=config)
    if host not in ("127.0.0.1", "localhost", "::1"):
        typer.echo(f"warning: binding {host}: anyone who can reach this address can use the models", err=True)
    typer.echo(f"polymodal: serving {', '.join(web.state.service.models.entries)} on http://{host}:{port}/ "
               f"(API docs at /docs)")
    uvicorn.run(web, host=host, port=port, log_level="warning", timeout_keep_alive=5)


def load_bundled() -> dict[str, Any]:
    """The bundled models the page serves, loaded; one that is missing or broken (a damaged install) is left
    out with one warning naming the capability that is off and why, and the rest are served."""
    from ..api import load
    from ..assets import ASSETS, SERVED, read_card

    models = {}
    for name in SERVED:
        try:
            models[name] = load(ASSETS / name).eval()
        except PolymodalError as err:
            capability = read_card(ASSETS / name).get("capability", name)
            typer.echo(f"warning: {capability} is off: the bundled model {name} did not load ({err}); "
                       f"reinstall polymodal or pass a model directory", err=True)
    if not models:
        raise CheckpointError(f"{ASSETS}: no bundled model loads; reinstall polymodal or pass model directories")
    return models


def bundled_index(models: dict[str, Any]) -> Path | None:
    """The bundled search index, if it loads and the bundled dual encoder that made it is among `models`;
    else None, with one warning saying search is off and why."""
    from ..assets import ASSETS, BUNDLED_DUAL_ENCODER, BUNDLED_INDEX
    from ..eval.retrieval import RetrievalIndex

    path = ASSETS / BUNDLED_INDEX
    try:
        if BUNDLED_DUAL_ENCODER not in models:
            raise CheckpointError(f"the bundled dual encoder {BUNDLED_DUAL_ENCODER} is not loaded")
        RetrievalIndex.load(path).check_model(models[BUNDLED_DUAL_ENCODER], str(path))
    except PolymodalError as err:
        typer.echo(f"warning: search is off: the bundled index {BUNDLED_INDEX} cannot be used ({err}); "
                   f"reinstall polymodal or pass --index", err=True)
        return None
    return path


@app.command()
def models(model_dirs: list[Path] = typer.Argument(None, help="model directories (default: the bundled ones)"),
           ) -> None:
    """List models: kind, size, what they were trained on and their headline figures (from card.json)."""
    from ..assets import ASSETS, BUNDLED_INDEX, bundled_names, read_card
    from ..checkpoint import read_model_dir, resolve_model_dir

    folders = model_dirs or [ASSETS / name for name in bundled_names()]
    total = 0
    for given in folders:
        folder = resolve_model_dir(given)
        kind = read_model_dir(folder)[0]["architecture"]
        size = sum(f.stat().st_size for f in folder.iterdir() if f.is_file())
        total += size
        card = read_card(folder)
        typer.echo(f"{given}  [{kind}, {size / 2**20:.1f} MB]" + (f"  {card['capability']}" if "capability" in card
                                                                   else ""))
        typer.echo(f"    trained on: {card.get('trained_on', 'not recorded (no card.json beside the weights)')}")
        for label, value in card.get("figures", {}).items():
            typer.echo(f"    {label}: {value}")
    if not model_dirs and (ASSETS / BUNDLED_INDEX).is_dir():  # what search serves, beside the models
        index = ASSETS / BUNDLED_INDEX
        size = sum(f.stat().st_size for f in index.rglob("*") if f.is_file())
        total += size
        typer.echo(f"{index}  [search index, {size / 2**20:.1f} MB]  {read_card(index).get('capability', '')}")
    typer.echo(f"{len(folders)} model(s), {total / 2**20:.1f} MB in all")


@app.command()
def export(
    model_dir: Path = typer.Argument(..., help="captioner model directory"),
    onnx: Path = typer.Option(..., "--onnx", metavar="OUT_DIR", help="output folder for the ONNX graphs"),
    int8: bool = typer.Option(False, "--int8", help="also write dynamically int8-quantized graphs"),
    check: list[Path] = typer.Option(None, "--check", help="images to caption with PyTorch and ONNX to compare"),
) -> None:
    """Export a captioner to ONNX: image encoder + one decoder step, state in/out as tensors."""
    from ..serve.export import OnnxCaptioner, export_onnx

    model = load_for("export", model_dir)
    out = export_onnx(model, onnx, int8=int8)
    typer.echo(f"wrote {', '.join(sorted(p.name for p in out.iterdir()))} to {out}")
    if check:
        reference = [c[0] for c in model.caption_nbest(list(check), strategy="greedy")]
        for variant in ([False, True] if int8 else [False]):
            captions = OnnxCaptioner(out, int8=variant).caption(list(check))
            same = sum(a == b for a, b in zip(reference, captions, strict=True))
            typer.echo(f"{'int8' if variant else 'fp32'}: {same}/{len(check)} captions identical to PyTorch greedy")
