"""The README's generated blocks: each sits between `<!-- NAME:begin -->` and `<!-- NAME:end -->`.

    python docs/readme_blocks.py          rewrite the blocks (and the generated docs pages)
    python docs/readme_blocks.py --check  exit 1 when a page disagrees (tests/test_layout.py runs this)

"architecture" is the package tree, one line per module or package, read from their docstrings, so
the README cannot describe a layout the code no longer has. Every other block is a results table or
sentence drawn from docs/results/*.json by docs/readme_tables.py. Two docs pages are generated as well:
docs/captioning.md (from captioning.json) and the sections of docs/benchmarks.md (from each benchmark's
history, bench/_history.py).
"""

from __future__ import annotations

import ast
import re
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import readme_tables as tables
from readme_tables import _history  # bench/_history.py: every benchmark run, per benchmark

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "src" / "polymodal"
README = ROOT / "README.md"
NAME_WIDTH = 20
LINE_WIDTH = 110


def first_line(path: Path) -> str:
    """The first sentence line of a module's docstring (empty when it has none)."""
    doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


def _entry(name: str, text: str, members: list[str]) -> list[str]:
    lines = textwrap.wrap(text, LINE_WIDTH - NAME_WIDTH - 2) or [""]
    if members:
        lines += textwrap.wrap(", ".join(members), LINE_WIDTH - NAME_WIDTH - 2)
    out = [f"  {name:<{NAME_WIDTH}}{lines[0]}".rstrip()]
    out += [f"  {'':<{NAME_WIDTH}}{line}" for line in lines[1:]]
    return out


def _members(package: Path) -> list[str]:
    names = [p.stem for p in sorted(package.glob("*.py")) if p.stem != "__init__"]
    names += [f"{p.name}/" for p in sorted(package.iterdir()) if (p / "__init__.py").is_file()]
    return names


def architecture() -> str:
    """The package tree: top-level modules first (the shared base), then the packages in pipeline order."""
    lines = ["src/polymodal/"]
    for path in sorted(PACKAGE.glob("*.py")):
        if path.stem != "__main__":
            lines += _entry(path.name, first_line(path), [])
    for name in ("data", "text", "nn", "models", "eval", "train", "serve", "cli", "assets"):
        package = PACKAGE / name
        lines += _entry(f"{name}/", first_line(package / "__init__.py"), _members(package))
    return "```\n" + "\n".join(lines) + "\n```"


BLOCKS: dict[str, Callable[[], str]] = {
    "quickstart": tables.quickstart, "captioning": tables.captioning, "caption_findings": tables.caption_findings,
    "truth": tables.truth,
    "tasks": tables.tasks, "serving": tables.serving, "performance": tables.performance,
    "architecture": architecture, "reliability": tables.reliability}


def render(readme: str) -> str:
    """The README text with every block regenerated."""
    for name, build in BLOCKS.items():
        pattern = re.compile(rf"(<!-- {name}:begin -->\n).*?(\n<!-- {name}:end -->)", re.S)
        if not pattern.search(readme):
            raise SystemExit(f"README.md: no <!-- {name}:begin --> / <!-- {name}:end --> markers")
        block = build()
        readme = pattern.sub(lambda m, block=block: m.group(1) + block + m.group(2), readme)
    return readme


def pages() -> dict[Path, Callable[[str], str]]:
    """Each generated file and how to redraw it from its current text."""
    out: dict[Path, Callable[[str], str]] = {README: render,
                                             ROOT / "docs" / "captioning.md": lambda _: tables.captioning_page()}
    for page in _history.pages():
        out[ROOT / page] = lambda text, page=page: _history.render_page(text, page)
    return out


def main(argv: list[str]) -> int:
    """Redraw every generated page, or with --check only say which are stale (exit status 1)."""
    stale = []
    for path, draw in pages().items():
        text = path.read_text(encoding="utf-8") if path.exists() else ""
        new = draw(text)
        if new != text and "--check" in argv:
            stale.append(str(path.relative_to(ROOT)))
        elif new != text:
            path.write_text(new, encoding="utf-8")
    if stale:
        print(f"{', '.join(stale)}: generated text is stale; run python docs/readme_blocks.py")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
