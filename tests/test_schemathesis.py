"""Schemathesis against the server's own OpenAPI spec (in process, the tiny captioner, no network).

Every generated request, valid or not, must get an answer that is not a 5xx and whose body matches
the documented response schema. "Schema-valid request rejected" is not checked here: no schema can
say "base64 of a decodable image" or "the last chat message is the user's", so such requests are
rightly refused (docs/reliability.md lists the full `st run --checks all` result).
"""

from __future__ import annotations

import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from polymodal.serve import ServeConfig, create_app
from polymodal.serve.uploads import Limits

from .conftest import tiny_model

APP = create_app({"tiny": tiny_model()}, config=ServeConfig(limits=Limits(max_bytes=2**20, max_pixels=512 * 512)))
schema = schemathesis.openapi.from_asgi("/openapi.json", APP)


@schema.parametrize()
@settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))
def test_api_never_fails_and_answers_as_documented(case):
    response = case.call()
    assert response.status_code < 500, (response.status_code, response.text[:300])
    case.validate_response(response, checks=[status_code_conformance, content_type_conformance,
                                             response_schema_conformance])


def test_the_app_serves_again_after_its_lifespan_ran_twice():
    """Regression (found by schemathesis): the model thread was shut down for good at the first shutdown."""
    import io

    from fastapi.testclient import TestClient
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 0, 0)).save(buffer, "PNG")
    for _ in range(2):
        with TestClient(APP) as client:
            r = client.post("/v1/caption", files={"image": ("a.png", buffer.getvalue(), "image/png")})
            assert r.status_code == 200, r.text
