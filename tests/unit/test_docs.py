"""The README stays short, and every relative link in the README and the docs resolves.

A link resolves when the file it names exists and, for ``#anchor``, the file has a heading whose
GitHub slug is the anchor: lower-case, punctuation dropped, spaces to ``-``, and ``-1``, ``-2``
after a repeated heading. Links inside code (fenced blocks, inline spans) are not links.
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parents[2]
README_MAX_LINES = 150

FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.S | re.M)
COMMENT = re.compile(r"<!--.*?-->", re.S)
INLINE_CODE = re.compile(r"`[^`\n]*`")
#: ``[text](target "title")`` and ``![alt](target)``; the text may hold code spans and brackets one level deep.
INLINE_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+[\"'][^)]*[\"'])?\s*\)")
REFERENCE = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$", re.M)
HEADING = re.compile(r"^ {0,3}(#{1,6})[ \t]+(.*?)[ \t#]*$", re.M)
SCHEME = re.compile(r"^[a-z][a-z0-9+.-]*:", re.I)


def doc_files() -> list[Path]:
    """The pages whose links are checked."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "bench" / "README.md"]


def _prose(text: str) -> str:
    """The text outside code blocks and HTML comments."""
    return COMMENT.sub("", FENCE.sub("", text))


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: the rendered text, lower-case, punctuation dropped, spaces to '-'."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading renders as its text
    text = re.sub(r"<[^>]+>", "", text).lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading anchor of a Markdown file, repeated headings numbered as GitHub does."""
    seen: dict[str, int] = {}
    found = set()
    for match in HEADING.finditer(_prose(path.read_text())):
        base = slug(match.group(2))
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def links(path: Path) -> list[str]:
    """The link targets of a Markdown file, code left out."""
    text = INLINE_CODE.sub("", _prose(path.read_text()))
    return INLINE_LINK.findall(text) + REFERENCE.findall(text)


def _shown(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def broken_links(path: Path) -> list[str]:
    """Each relative link of ``path`` that names a missing file or a heading its file lacks, with why."""
    problems = []
    for target in links(path):
        if SCHEME.match(target) or target.startswith("//"):
            continue  # another site: not checked here (no test reaches the internet)
        file_part, _, anchor = target.partition("#")
        dest = (path.parent / unquote(file_part)).resolve() if file_part else path
        if not dest.exists():
            problems.append(f"{target}: no file {_shown(dest)}")
        elif anchor and dest.suffix == ".md" and unquote(anchor) not in anchors(dest):
            problems.append(f"{target}: no heading '#{anchor}' in {_shown(dest)}")
    return problems


@pytest.mark.parametrize("path", doc_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(path: Path):
    assert path.exists()
    problems = broken_links(path)
    assert not problems, f"{_shown(path)}: " + "; ".join(problems)


def test_the_readme_reads_in_five_minutes():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines; move detail into docs/"


def test_the_checker_sees_what_github_renders(tmp_path: Path):
    page = tmp_path / "page.md"
    (tmp_path / "other.md").write_text("# Other\n\n## Spend: budgets & `max_cost_usd`\n\n## Repeated\n\n## Repeated\n")
    page.write_text(
        "# Title\n\n"
        "[ok](other.md#spend-budgets--max_cost_usd) [ok](other.md#repeated-1) [ok](#title) [web](https://x.example)\n"
        "[gone](missing.md) [no heading](other.md#nowhere) [not numbered](other.md#repeated-2)\n"
        "`[code](missing-too.md)`\n\n```\n[fenced](missing-three.md)\n# not a heading\n```\n"
    )
    assert [problem.split(":")[0] for problem in broken_links(page)] == [
        "missing.md", "other.md#nowhere", "other.md#repeated-2"]
