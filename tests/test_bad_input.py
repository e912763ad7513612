"""The bad-input corpus (tests/badinput): every case gets its documented error or decode.

Each case is generated into its own temporary folder; see tests/badinput/cases.py for what
"documented" means (error type, one line naming the file and the fix, process alive, nothing
half-written). `python -m tests.badinput.make_corpus --write docs/reliability.md` runs the same
cases outside pytest and records the figures.
"""

from __future__ import annotations

import pytest

from .badinput.cases import Case, run_case
from .badinput.make_corpus import all_cases

CASES = all_cases()


def test_the_corpus_is_large_and_covers_every_category():
    categories = {c.category for c in CASES}
    assert len(CASES) >= 200
    assert {"images", "uploads", "annotations", "configs", "checkpoints"} <= categories
    assert sum(c.expect is None for c in CASES) >= 40  # valid odd inputs: CMYK, 16-bit, EXIF, BOM, ...


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, tmp_path):
    problem = run_case(case, tmp_path)
    assert problem is None, problem
