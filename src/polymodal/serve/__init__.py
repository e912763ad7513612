"""The REST API and web page (`polymodal serve`): see app.create_app and docs/serving.md."""

from __future__ import annotations

from .app import ServeConfig, create_app

__all__ = ["ServeConfig", "create_app"]
