"""The user documentation stays true: relative links resolve, and complete YAML examples validate.

Every fenced ```yaml block in ``docs/*.md`` must start with one of two markers:

* ``# file: PATH``: a complete task, run or accelerate config. It is written to a temporary mirror of the
  repository at ``PATH`` (every other entry of the repository symlinked in), so its relative paths resolve
  exactly as they would in the checkout, and ``cgpo validate`` must accept it. An optional
  ``# pythonpath: DIR`` line right after it puts ``DIR`` on ``sys.path`` (for ``module:Class`` names).
* ``# partial``: a fragment, not validated.

A block with neither marker fails, so a new example cannot silently escape the check.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
DOC_FILES = sorted(DOCS.glob("*.md"))

_FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
_INLINE_CODE = re.compile(r"`+[^`\n]*`+")
_LINK = re.compile(r"\[[^\]\n]*\]\(([^)\s]+)\)")
_HEADING = re.compile(r"^(#{1,6})[ \t]+(.+?)[ \t]*#*[ \t]*$", re.MULTILINE)


def _without_code(text: str) -> str:
    """The markdown outside fenced blocks and inline code spans (links there are not links)."""
    return _INLINE_CODE.sub("", _FENCE.sub("", text))


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped (``-`` and ``_`` kept), spaces to ``-``."""
    text = heading.replace("`", "").strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    """Every heading anchor of a markdown file, with GitHub's ``-1``, ``-2`` suffixes for repeats."""
    seen: dict[str, int] = {}
    out = set()
    for match in _HEADING.finditer(_FENCE.sub("", path.read_text(encoding="utf-8"))):
        slug = _slug(match.group(2))
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        out.add(slug if count == 0 else f"{slug}-{count}")
    return out


def _yaml_blocks() -> list[tuple[str, int, str]]:
    """``(doc name, block number, body)`` of every ```yaml block in the docs."""
    blocks = []
    for doc in DOC_FILES:
        yaml_bodies = [
            body for lang, body in _FENCE.findall(doc.read_text(encoding="utf-8")) if lang.strip() == "yaml"
        ]
        blocks += [(doc.name, i, body) for i, body in enumerate(yaml_bodies)]
    return blocks


def test_docs_exist():
    names = {doc.name for doc in DOC_FILES}
    assert {"README.md", "quickstart.md", "task-yaml.md", "judges.md", "optimizers.md", "scaling.md"} <= names
    assert _yaml_blocks(), "the docs have yaml examples; the pattern above must find them"


@pytest.mark.parametrize("doc", DOC_FILES, ids=lambda p: p.name)
def test_relative_links_resolve(doc: Path):
    problems = []
    for target in _LINK.findall(_without_code(doc.read_text(encoding="utf-8"))):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        file_part, _, anchor = target.partition("#")
        path = (doc.parent / file_part).resolve() if file_part else doc
        if not path.exists():
            problems.append(f"{target}: {path} does not exist")
        elif anchor and path.suffix == ".md" and anchor not in _anchors(path):
            problems.append(f"{target}: no heading with anchor #{anchor} in {path.name}")
    assert not problems, f"{doc.name}: broken links:\n" + "\n".join(problems)


def _mirror(root: Path, relative: Path) -> Path:
    """A copy of the repository under ``root`` made of symlinks, with real folders along ``relative``'s parent.

    Returns the path at which the example file is to be written.
    """
    parts = relative.parent.parts
    for depth in range(len(parts) + 1):
        here = Path(*parts[:depth]) if depth else Path()
        (root / here).mkdir(parents=True, exist_ok=True)
        keep = parts[depth] if depth < len(parts) else None
        for child in (REPO / here).iterdir():
            if child.name in (keep, relative.name) or child.name == ".git":
                continue
            (root / here / child.name).symlink_to(child, target_is_directory=child.is_dir())
    return root / relative


@pytest.mark.parametrize(("doc", "index", "body"), [pytest.param(*b, id=f"{b[0]}-{b[1]}") for b in _yaml_blocks()])
def test_yaml_examples_validate(doc: str, index: int, body: str, tmp_path: Path, monkeypatch, capsys):
    lines = body.splitlines()
    first = lines[0].strip() if lines else ""
    if first.startswith("# partial"):
        return
    assert first.startswith("# file: "), (
        f"{doc}, yaml block {index}: start it with '# file: PATH' (a complete file, validated) or '# partial'"
    )
    relative = Path(first[len("# file: ") :].strip())
    assert not relative.is_absolute() and ".." not in relative.parts, f"{doc}, yaml block {index}: {relative}"
    if len(lines) > 1 and lines[1].strip().startswith("# pythonpath: "):
        monkeypatch.syspath_prepend(str(REPO / lines[1].strip()[len("# pythonpath: ") :]))
    target = _mirror(tmp_path, relative)
    target.write_text(body, encoding="utf-8")

    from cgpo.cli import main

    status = main(["validate", str(target)])
    captured = capsys.readouterr()
    assert status == 0, f"{doc}, yaml block {index} ({relative}) does not validate:\n{captured.err}"
    assert ": ok (" in captured.out
