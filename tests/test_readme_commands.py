"""The shell commands of the READMEs cannot rot: every line of every ```bash block is checked.

Checked files: README.md, docs/*.md, examples/README.md, export/README.md (all their bash blocks).

* `keras-deeplab ...`: parsed by the CLI's own parser (`keras_deeplab.cli.build_parser`);
  synopsis notation is expanded first (`[optional]` with and without, `(a | b)` each
  alternative, `X|Y` the first, `...` dropped). Cheap ones (`models`, `presets`, `table`
  of a MobileNet model) really run.
* `python -m MOD args` / `python path/script.py args`: the module / file exists and its
  argparse accepts the arguments (the run stops right after parsing).
* `python -c CODE`: the code compiles.
* `make TARGET`: the target exists in the Makefile.
* `pip install keras-deeplab`, `pip install "keras-deeplab[EXTRA]"`, `pip install -e ".[EXTRA]"`:
  the package name is setup.cfg's and every extra exists there; a pinned `tensorflow...==V`
  matches the pinned tensorflow version.
* Anything else must be in `OTHER_TOOLS` (deployment commands shown for reference).
"""

import argparse
import configparser
import re
import runpy
import shlex
import sys
from pathlib import Path

import pytest

from keras_deeplab.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[1]
READMES = (
    "README.md",
    *sorted(f"docs/{p.name}" for p in (ROOT / "docs").glob("*.md")),
    "examples/README.md",
    "export/README.md",
)
OTHER_TOOLS = {"docker", "curl", "printf", "tensorboard", "git", "cd"}
RUN_FOR_REAL = {"models", "presets", "table"}


def bash_lines(path):
    """Logical lines of the bash blocks of `path` (continuations joined, comments dropped)."""
    lines, block, pending = [], False, ""
    for raw in (ROOT / path).read_text().splitlines():
        if raw.startswith("```"):
            block = raw.strip() in ("```bash", "```sh", "```shell")
            continue
        if not block:
            continue
        text = pending + raw.strip()
        if text.endswith("\\"):
            pending = text[:-1] + " "
            continue
        pending = ""
        text = re.sub(r"\s+#.*$", "", text).strip()
        if text and not text.startswith("#"):
            lines.append(text)
    return lines


COMMANDS = [(path, line) for path in READMES for line in bash_lines(path)]


def expand_synopsis(line):
    """Concrete command lines of a synopsis (`[opt]`, `(a | b)`, `X|Y`, `...`)."""
    match = re.search(r"\[([^\[\]]*)\]", line)  # innermost optional group
    if match:
        before, inner, after = line[: match.start()], match.group(1), line[match.end() :]
        variants = expand_synopsis(before + after) + expand_synopsis(before + inner + after)
        return list(dict.fromkeys(variants))
    match = re.search(r"\(([^()]*\|[^()]*)\)", line)
    if match:
        before, after = line[: match.start()], line[match.end() :]
        return [
            v for alt in match.group(1).split("|") for v in expand_synopsis(before + alt + after)
        ]
    tokens = [t.split("|")[0] for t in line.split() if t != "..."]
    return [" ".join(tokens)]


def test_readmes_have_checked_commands():
    kinds = {line.split()[0] for _, line in COMMANDS}
    assert {"make", "pip", "keras-deeplab", "python"} <= kinds
    assert sum(line.startswith("keras-deeplab") for _, line in COMMANDS) >= 10
    assert {path for path, _ in COMMANDS} >= {"README.md", "docs/training.md", "docs/weights.md"}


def test_synopsis_expansion():
    variants = expand_synopsis("keras-deeplab eval --data DIR [--flip] (--a A | --b B) [--crf [P]]")
    assert "keras-deeplab eval --data DIR --a A" in variants
    assert "keras-deeplab eval --data DIR --flip --b B --crf P" in variants
    assert len(variants) == 2 * 2 * 3


class _Parsed(Exception):
    pass


def _parse_only(monkeypatch):
    """Makes every argparse parser stop the program right after a successful parse."""
    real = argparse.ArgumentParser.parse_args

    def parse_args(self, args=None, namespace=None):
        raise _Parsed(real(self, args, namespace))

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_args)


def _check_python(words, monkeypatch):
    if words[1] == "-c":
        compile(words[2], "<readme>", "exec")
        return
    _parse_only(monkeypatch)
    if words[1] == "-m":
        module, args = words[2], words[3:]
        monkeypatch.setattr(sys, "argv", [module, *args])
        with pytest.raises(_Parsed):
            runpy.run_module(module, run_name="__main__")
        return
    script, args = ROOT / words[1], words[2:]
    assert script.is_file(), f"{words[1]} does not exist"
    monkeypatch.setattr(sys, "argv", [str(script), *args])
    with pytest.raises(_Parsed):
        runpy.run_path(str(script), run_name="__main__")


def _check_make(words):
    targets = re.findall(r"^([A-Za-z][\w-]*):", (ROOT / "Makefile").read_text(), re.M)
    for target in words[1:]:
        assert target in targets, f"make {target}: no such Makefile target"


def _check_pip(words):
    setup = configparser.ConfigParser()
    setup.read(ROOT / "setup.cfg")
    extras = setup["options.extras_require"]
    name = setup["metadata"]["name"]
    requires = setup["options"]["install_requires"]
    assert words[1] == "install", f"pip {words[1]}: only `pip install` is checked"
    for word in words[2:]:
        if word.startswith("-"):
            continue
        requirement = re.fullmatch(r"([\w.-]+)(?:\[([\w,-]+)\])?(?:==([\d.]+))?", word)
        assert requirement, f"pip install {word}: not a requirement this test understands"
        package, extra, version = requirement.groups()
        if package in (".", name):
            for each in extra.split(",") if extra else ():
                assert each in extras, f"pip extra [{each}] missing in setup.cfg"
        elif package.startswith("tensorflow") and version:
            assert re.search(rf"^tensorflow[\w\[\]-]*=={re.escape(version)}\b", requires, re.M), (
                f"{word}: setup.cfg pins another tensorflow version"
            )
        else:
            pytest.fail(f"pip install {word}: neither this package nor tensorflow")


@pytest.mark.parametrize("path, line", COMMANDS, ids=[f"{p}:{line[:60]}" for p, line in COMMANDS])
def test_readme_command(path, line, monkeypatch, capsys):
    words = shlex.split(line)
    tool = words[0]
    if tool == "keras-deeplab":
        parser = build_parser()
        for variant in expand_synopsis(line):
            argv = shlex.split(variant)[1:]
            try:
                parser.parse_args(argv)
            except SystemExit:
                pytest.fail(f"{path}: `{variant}` does not parse:\n{capsys.readouterr().err}")
            if argv[0] in RUN_FOR_REAL and (argv[0] != "table" or "xception" not in variant):
                assert main(argv) == 0, variant
                assert capsys.readouterr().out.strip()
    elif tool == "python":
        _check_python(words, monkeypatch)
    elif tool == "make":
        _check_make(words)
    elif tool == "pip":
        _check_pip(words)
    else:
        assert tool in OTHER_TOOLS, f"{path}: unchecked command {line!r}; teach this test about it"
