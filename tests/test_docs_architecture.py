"""docs/architecture.md stays true: its map lists every module, and its import claims hold.

The map is the ```text block under "## The map": one line per module, its path below
`keras_deeplab/` first. The import graph is read from the sources (every `import` of a
`keras_deeplab` module, at module level or inside functions), nothing is imported.
"""

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "keras_deeplab"
DOC = ROOT / "docs" / "architecture.md"
# The model modules of the doc's import paragraph, and what they may import besides each other.
MODEL_MODULES = (
    "registry",
    "backbones",
    "heads",
    "architectures",
    "segmentation_model",
    "models",
    "msc",
    "layers",
    "pooling",
    "unpooling",
)
MODEL_MAY_USE = ("optimize", "macs", "precision", "_compat", "weights")


def _map_entries():
    text = DOC.read_text()
    section = text.split("## The map", 1)[1]
    block = re.search(r"```text\n(.*?)```", section, re.S).group(1)
    return [line.split()[0] for line in block.splitlines() if line.strip()]


def _modules():
    """`{dotted name below keras_deeplab: path}` of every module of the package."""
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _imports(modules):
    """`{module: set of package modules it imports}` (module names below keras_deeplab)."""

    def resolve(name):
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name

    graph = {}
    for module, path in modules.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names = [f"{node.module}.{alias.name}" for alias in node.names]
            else:
                continue
            for name in names:
                if name.startswith("keras_deeplab."):
                    target = resolve(name.removeprefix("keras_deeplab."))
                    if target and target != module:
                        targets.add(target)
        graph[module] = targets
    return graph


def _cycle(graph):
    """One import cycle as a list of modules, or None."""
    state, stack = {}, []

    def visit(module):
        state[module] = "open"
        stack.append(module)
        for target in sorted(graph[module]):
            if state.get(target) == "open":
                return [*stack[stack.index(target) :], target]
            if target not in state:
                found = visit(target)
                if found:
                    return found
        stack.pop()
        state[module] = "done"
        return None

    for module in sorted(graph):
        if module not in state:
            found = visit(module)
            if found:
                return found
    return None


def test_map_lists_every_module_once_and_nothing_else():
    entries = _map_entries()
    files = sorted(str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py"))
    missing = sorted(set(files) - set(entries))
    stale = sorted(set(entries) - set(files))
    assert not missing, f"docs/architecture.md's map lacks {missing}: add one line each"
    assert not stale, f"docs/architecture.md's map lists {stale}, which do not exist"
    assert len(entries) == len(set(entries)), "a module is listed twice"


def test_no_import_cycle():
    cycle = _cycle(_imports(_modules()))
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_model_modules_use_only_what_the_doc_says():
    def top(module):
        return module.split(".")[0]

    graph = _imports(_modules())
    for module, targets in graph.items():
        if top(module) not in MODEL_MODULES:
            continue
        other = {t for t in targets if top(t) not in MODEL_MODULES + MODEL_MAY_USE}
        assert not other, f"{module} imports {sorted(other)}: update docs/architecture.md"
