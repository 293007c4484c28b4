"""The docs hold together: every relative link and image of README.md and docs/*.md resolves.

A link `[text](path)` or image `![alt](path)` outside code must name an existing file or folder
(relative to the page); a `#fragment` on a Markdown page must be one of its headings (GitHub's
anchor rule). Web links are not fetched. The presets table of docs/weights.md is the package's own.
"""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = ["README.md", *sorted(f"docs/{p.name}" for p in (ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")


def _without_fences(text):
    return re.sub(r"^\s*```.*?^\s*```[^\n]*$", "", text, flags=re.M | re.S)


def prose(text):
    """`text` without fenced blocks and inline code spans (their brackets are not links)."""
    return re.sub(r"`[^`\n]*`", "", _without_fences(text))


def anchors(path):
    """GitHub's heading anchors of a Markdown file (lower case, punctuation dropped, - for spaces)."""
    seen, result = {}, set()
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*$", _without_fences(path.read_text()), re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        result.add(slug if count == 0 else f"{slug}-{count}")
    return result


def relative_links(page):
    return [
        target
        for target in LINK.findall(prose((ROOT / page).read_text()))
        if not re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I)  # http:, https:, mailto:
    ]


LINKS = [(page, target) for page in PAGES for target in relative_links(page)]


def test_links_are_found():
    assert len(LINKS) >= 20
    assert ("README.md", "docs/models.md") in LINKS


@pytest.mark.parametrize("page, target", LINKS, ids=[f"{p}->{t}" for p, t in LINKS])
def test_relative_link_resolves(page, target):
    path, _, fragment = target.partition("#")
    file = (ROOT / page).parent / path if path else ROOT / page
    assert file.exists(), f"{page}: link {target!r} -> {file.relative_to(ROOT)} does not exist"
    if fragment and file.suffix == ".md":
        assert fragment in anchors(file), (
            f"{page}: link {target!r}: no heading with anchor #{fragment} in {path or page}"
        )


def test_anchor_rule():
    assert "the-demo-make-demo--keras-deeplab-demo" in anchors(ROOT / "docs" / "training.md")


def test_presets_table_is_the_packages():
    from keras_deeplab.weights.presets import presets_markdown

    assert presets_markdown() in (ROOT / "docs" / "weights.md").read_text()
