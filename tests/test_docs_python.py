"""Every fenced Python block of README.md and docs/*.md runs, as printed.

* One test per block, id `<page>:<block number>:<first code line>`. The block's text runs
  unchanged; tracebacks point at the page's own line numbers.
* The blocks of one page run in order in one namespace, as a reader following the page would run
  them: a later block may use names an earlier block defined. Running one block alone (`-k`) first
  runs the page's earlier blocks; when an earlier block failed, the later ones are skipped and
  name it (the failure itself is reported once, by its own test).
* Each page runs in its own empty working folder. The names the docs give a user's files are
  symlinks there to the real files of `../shared/data` (`USER_FILES`, the whole substitution).
  Nothing of the checkout is visible, as for a user of the installed package. A page that names
  none of them needs no shared data.
* A block of `>>>` lines (```pycon or ```python) runs as a doctest, its printed output checked.
"""

import doctest
import re
from pathlib import Path

import pytest

from tests.official_tflite import shared_data_dir

ROOT = Path(__file__).resolve().parents[1]
PAGES = ["README.md", *sorted(f"docs/{p.name}" for p in (ROOT / "docs").glob("*.md"))]
PYTHON_FENCES = ("python", "py", "python3", "pycon")

# A name a doc uses for the user's file -> the real file under ../shared/data it stands for.
USER_FILES = {
    "deeplabv3_257_mv_gpu.tflite": "deeplabv3_tflite/deeplabv3_257_mv_gpu.tflite",  # Google's
    "2007_000129.jpg": "voc2012_samples/JPEGImages/2007_000129.jpg",  # a photo
    "VOC2012": "voc2012_samples",  # a PASCAL VOC 2012 folder (8 val images)
}


def python_blocks(page):
    """`(first line number, code)` of each fenced Python block of `page`, in order."""
    blocks, code, start = [], None, 0
    for number, line in enumerate((ROOT / page).read_text().splitlines(), 1):
        fence = re.match(r"^\s*```\s*(\S*)", line)
        if fence and code is None:
            if fence.group(1).lower() in PYTHON_FENCES:
                code, start = [], number + 1
        elif fence:
            blocks.append((start, "\n".join(code) + "\n"))
            code = None
        elif code is not None:
            code.append(line)
    assert code is None, f"{page}: unclosed code fence"
    return blocks


BLOCKS = [(page, i) for page in PAGES for i in range(len(python_blocks(page)))]


def _block_id(page, index):
    first = next(line for line in python_blocks(page)[index][1].splitlines() if line.strip())
    return f"{page}:{index}:{first.strip()[:50]}"


def test_every_python_block_is_found():
    """The parser sees every ```python fence (no block silently left out), and there are some."""
    for page in PAGES:
        text = (ROOT / page).read_text()
        fences = len(re.findall(r"^\s*```\s*(?:python3?|py|pycon)\s*$", text, re.M | re.I))
        assert len(python_blocks(page)) == fences, page
    assert len(BLOCKS) >= 10
    assert any(page == "README.md" for page, _ in BLOCKS), "the README shows no Python"


def test_substitutions_are_used_and_exist():
    """Each substitute is named by some block (the table stays minimal) and exists."""
    code = "".join(c for page in PAGES for _, c in python_blocks(page))
    for name, target in USER_FILES.items():
        assert name in code, f"USER_FILES[{name!r}] is used by no block: remove it"
        assert (shared_data_dir() / target).exists(), target


class _Page:
    """The running state of one page: its folder, namespace and progress."""

    def __init__(self, page, folder):
        self.page = page
        self.folder = folder
        self.namespace = {"__name__": "__main__"}
        self.done = 0
        self.failed = None
        code = "".join(c for _, c in python_blocks(page))
        for name, target in USER_FILES.items():
            if name in code:
                (folder / name).symlink_to(shared_data_dir() / target)

    def run(self, index):
        start, code = python_blocks(self.page)[index]
        path = str(ROOT / self.page)
        if code.lstrip().startswith(">>>"):
            parser = doctest.DocTestParser()
            test = parser.get_doctest(code, self.namespace, self.page, path, start - 1)
            runner = doctest.DocTestRunner(
                optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
            )
            output = []
            runner.run(test, out=output.append, clear_globs=False)
            self.namespace.update(test.globs)
            assert runner.failures == 0, "".join(output)
        else:
            # Leading blank lines make the line numbers of tracebacks those of the page.
            exec(compile("\n" * (start - 1) + code, path, "exec"), self.namespace)


@pytest.fixture(scope="module")
def pages(tmp_path_factory):
    return {}


@pytest.fixture(scope="module")
def restore_registries():
    """Undoes what a page registers (docs/architecture.md adds a toy head, architecture and
    model) before the next page and after the last, so no other test sees it."""
    import keras_deeplab.architectures  # noqa: F401 - the package's own entries, registered first
    from keras_deeplab import registry

    tables = (registry.HEADS, registry.ARCHITECTURES, registry.MODELS)
    saved = [dict(table) for table in tables]

    def restore():
        for table, entries in zip(tables, saved, strict=True):
            table.clear()
            table.update(entries)

    yield restore
    restore()


@pytest.mark.parametrize("page, index", BLOCKS, ids=[_block_id(p, i) for p, i in BLOCKS])
def test_python_block(page, index, pages, restore_registries, tmp_path_factory, monkeypatch):
    if page not in pages:
        restore_registries()
        folder = tmp_path_factory.mktemp(Path(page).stem)
        pages[page] = _Page(page, folder)
    state = pages[page]
    monkeypatch.chdir(state.folder)
    while state.done <= index:
        if state.failed is not None:
            pytest.skip(f"{page}: block {state.failed}, which this one follows, failed")
        current = state.done
        state.done += 1
        try:
            state.run(current)
        except BaseException:
            state.failed = current
            if current != index:
                pytest.fail(f"{page}: block {current}, which this one follows, failed")
            raise
