"""The bad-input case type and the runner that judges one case.

A case writes its input into a fresh folder (`make`), hands it to one polymodal entry point
(`action`) and states what must happen: either a documented `PolymodalError` subclass whose
one-line message names the input and says what to do, or a documented successful result
(`check`). Whatever happens, the process must survive (nothing but a `PolymodalError` escapes)
and the folder must hold no half-written files afterwards.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from polymodal.errors import PolymodalError

# A message says what to do after the "; " that ends its description, with one of these words.
FIX_WORDS = ("check", "re-", "remove", "pass", "use", "fix", "delete", "send", "convert", "resize", "set",
             "rename", "write", "train", "choose", "save", "give", "expected", "must", "add", "did you mean",
             "raise", "known keys", "the first row", "upload", "retry", "try", "start", "allow", "install",
             "export", "encode", "one of", "change", "quote", "lower")
HALF_WRITTEN = (".tmp-", ".old", ".partial")


@dataclass(frozen=True)
class Case:
    """One bad (or odd but valid) input and its documented outcome."""

    category: str                                   # images, uploads, annotations, configs, checkpoints, media
    name: str                                       # unique within its category
    make: Callable[[Path], Any]                     # write the input under a folder; return action's argument
    action: Callable[[Any], Any]                    # the polymodal call under test
    expect: type[PolymodalError] | None = None      # the error type; None: a documented success
    mentions: Callable[[Any], str] | None = None    # what the message must name (default: the path's name)
    check: Callable[[Any, Any], None] | None = None  # success: assert on (argument, result)
    contains: str = ""                              # error: a phrase the message must hold

    @property
    def id(self) -> str:
        return f"{self.category}/{self.name}"


def _default_mention(arg: Any) -> str:
    if isinstance(arg, Path):
        return arg.name
    if isinstance(arg, tuple) and arg and isinstance(arg[0], Path):
        return arg[0].name
    return ""


def leftovers(folder: Path) -> list[str]:
    """Files a crashed or failed write would leave behind (temp files, moved-aside copies)."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if any(m in p.name for m in HALF_WRITTEN))


def run_case(case: Case, folder: Path) -> str | None:
    """Run one case in `folder`; None if it behaved as documented, else what went wrong."""
    folder.mkdir(parents=True, exist_ok=True)
    arg = case.make(folder)
    before = set(folder.rglob("*"))
    problem = _judge(case, arg)
    if problem is None:
        stale = leftovers(folder)
        if stale:
            problem = f"left half-written files behind: {stale}"
        elif case.expect is not None and set(folder.rglob("*")) - before:
            problem = f"a failed call created files: {sorted(set(folder.rglob('*')) - before)}"
    return problem


def _judge(case: Case, arg: Any) -> str | None:
    try:
        result = case.action(arg)
    except PolymodalError as err:
        if case.expect is None:
            return f"expected success, got {type(err).__name__}: {err}"
        return _judge_message(case, arg, err)
    except Exception as err:  # noqa: BLE001 - any other exception is exactly what a case must report
        return f"uncaught {type(err).__name__}: {err}\n{traceback.format_exc(limit=-3)}"
    if case.expect is not None:
        return f"expected {case.expect.__name__}, but the call succeeded and returned {str(result)[:120]!r}"
    if case.check is not None:
        try:
            case.check(arg, result)
        except AssertionError as err:
            return f"decoded, but wrongly: {err}"
    return None


def _judge_message(case: Case, arg: Any, err: PolymodalError) -> str | None:
    message = str(err)
    if not isinstance(err, case.expect):  # type: ignore[arg-type]
        return f"expected {case.expect.__name__}, got {type(err).__name__}: {message}"  # type: ignore[union-attr]
    if "\n" in message or "Traceback" in message:
        return f"message is not one line: {message!r}"
    mention = (case.mentions or _default_mention)(arg)
    if mention and mention not in message:
        return f"message does not name {mention!r}: {message}"
    if case.contains and case.contains not in message:
        return f"message lacks {case.contains!r}: {message}"
    fix = message.split("; ", 1)[1].lower() if "; " in message else ""
    if not any(word in fix for word in FIX_WORDS):
        return f"message says no fix (after the first '; '): {message}"
    return None
