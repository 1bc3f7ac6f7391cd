"""The shape of the library: one-way imports in layers, no cycles, a docstring per module,
modules of a few hundred lines, and no hidden (function-level) imports of fslib modules."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "fslib"

# Each module's layer; a module may import only from its own layer or the layers above (lower numbers).
LAYERS = {
    0: ["paths", "io", "artefacts", "device", "distributed", "constants", "spectral", "images", "models", "inference"],
    1: ["synthetic", "data"],
    2: ["augment", "tracking", "objectives", "train", "recipes", "runs"],
    3: ["metrics", "stability", "dfm", "localization", "ntk", "ntk_flow", "ntk_linear", "ntk_fourier"],
    4: ["dynamics", "ood", "compare", "report", "mitigation", "sensitivity", "adcs_sensitivity", "protocols"],
    5: ["plot"],
    6: ["shortcuts", "book", "cli", "__main__"],
}
LAYER_OF = {name: level for level, names in LAYERS.items() for name in names}
MAX_LINES = 520  # "a few hundred lines at most"


def modules():
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT).with_suffix("")
        name = ".".join(("fslib", *rel.parts)).removesuffix(".__init__")
        yield name, path


def top(name: str) -> str:
    return name.split(".")[1] if name.count(".") >= 1 else ""


def fslib_imports(tree, name):
    """(module imported, function-level?, line) for every import of an fslib module."""
    out = []
    typing_only = {id(n) for block in ast.walk(tree)
                   if isinstance(block, ast.If) and getattr(block.test, "id", "") == "TYPE_CHECKING"
                   for stmt in block.body for n in ast.walk(stmt)}  # annotations only: not an import at run time
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            targets = [node.module] if node.module != "fslib" else [f"fslib.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        else:
            continue
        for t in targets:
            if t.startswith("fslib.") and t != name:
                out.append((t, node.col_offset > 0, node.lineno))
    return out


def test_every_top_level_module_has_a_layer():
    found = {top(n) for n, _ in modules() if n != "fslib"}
    assert found == set(LAYER_OF), f"assign a layer to {found - set(LAYER_OF)}; stale: {set(LAYER_OF) - found}"


def test_imports_flow_one_way_and_have_no_cycle():
    graph, problems = {}, []
    for name, path in modules():
        tree = ast.parse(path.read_text())
        graph[name] = set()
        for target, _, line in fslib_imports(tree, name):
            graph[name].add(target)
            here, there = LAYER_OF.get(top(name)), LAYER_OF.get(top(target))
            if here is not None and there is not None and there > here:
                problems.append(f"{path.relative_to(ROOT.parent)}:{line} imports {target} from a lower layer")
    assert not problems, "\n".join(problems)
    # module-level cycles (a package counts as its modules)
    state = {}

    def visit(n, stack):
        state[n] = 1
        for m in graph.get(n, ()):
            m = m if m in graph else m.rsplit(".", 1)[0]
            if state.get(m) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(m):] + [m]))
            if m in graph and not state.get(m):
                visit(m, stack + [m])
        state[n] = 2

    for n in graph:
        if not state.get(n):
            visit(n, [n])


def test_no_function_level_fslib_import_without_a_reason():
    lines_of = {}
    hidden = []
    for name, path in modules():
        source = path.read_text().splitlines()
        lines_of[name] = source
        for target, nested, line in fslib_imports(ast.parse("\n".join(source)), name):
            context = " ".join(source[max(0, line - 2):line])
            if nested and "#" not in context:
                hidden.append(f"{path.relative_to(ROOT.parent)}:{line} imports {target} inside a function")
    assert not hidden, "\n".join(hidden)


@pytest.mark.parametrize("name,path", list(modules()), ids=[n for n, _ in modules()])
def test_module_has_a_docstring_and_a_modest_size(name, path):
    text = path.read_text()
    doc = ast.get_docstring(ast.parse(text))
    assert doc and len(doc.split()) >= 4, f"{name} needs a docstring naming its concept"
    assert len(text.splitlines()) <= MAX_LINES, f"{name} has {len(text.splitlines())} lines; split it by concept"
