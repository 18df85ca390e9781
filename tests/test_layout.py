"""The house: no import circle in minigen/ (imports inside functions and the registry's module names included),
one entry point per command, and files small enough to read in one sitting."""

import ast
import re
from pathlib import Path

import minigen

PACKAGE = Path(minigen.__file__).parent
# the longest a file may be, and the files allowed more, each with its reason
MAX_LINES = 450
LONGER = {
    "tokenizers.py": 500,  # three registered tokenizers: moving one changes its checkpoints' and shipped weights' key
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports_of(source: str, name: str, known: set) -> set:
    """Every minigen module that module `name` imports (`source`: its text), wherever the import statement
    stands, plus the modules named in strings ("minigen.token_ar") that importlib loads."""
    out = set()
    tree = ast.parse(source)
    prose = {id(node.value) for node in ast.walk(tree) if isinstance(node, ast.Expr)}  # docstrings name modules too
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:  # a submodule by name, else a name the module itself defines
                out.add(f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in known else node.module)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in prose:
            out |= set(re.findall(r"\bminigen(?:\.\w+)+", node.value))
    return {other for other in out if other in known and other != name}


def graph() -> dict:
    found = modules()
    return {name: imports_of(path.read_text(), name, set(found)) for name, path in found.items()}


def circles(edges: dict) -> list:
    """Every strongly connected set of more than one module (Tarjan), and every module importing itself."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                out.append(sorted(group))

    for v in edges:
        if v not in index:
            visit(v)
    return out


def test_the_graph_sees_function_level_and_string_imports():
    edges = graph()
    assert "minigen.cli" in edges["minigen.__main__"]
    assert "minigen.token_ar" in edges["minigen.registry"]  # named in a string, loaded by importlib
    assert "minigen.speculative" in edges["minigen.speculative_variants"]
    old_tail = 'if __name__ == "__main__":\n    from minigen.cli import main\n'  # weights.py's, once: a circle
    planted = dict(edges, **{"minigen.weights": imports_of(old_tail, "minigen.weights", set(edges))})
    assert planted["minigen.weights"] == {"minigen.cli"}
    assert any("minigen.weights" in group for group in circles(planted))


def test_no_import_circle():
    assert circles(graph()) == []


def test_python_m_minigen_is_the_one_entry_point():
    mains = [name for name, path in modules().items() if "__main__" in path.read_text() and name != "minigen.__main__"]
    assert sorted(mains) == ["minigen.bench"]  # python -m minigen ... and python -m minigen.bench, nothing else


def test_files_read_in_one_sitting():
    lengths = {path.name: len(path.read_text().splitlines()) for path in PACKAGE.glob("*.py")}
    too_long = {name: n for name, n in lengths.items() if n > LONGER.get(name, MAX_LINES)}
    assert too_long == {}
    # the side-by-side runner alone (two speculative families since notebook 13): the roofline kit is in roofline.py
    assert lengths["bench.py"] <= 300
    assert (
        max(lengths["speculative.py"], lengths["speculative_variants.py"], lengths["continuous_speculative.py"]) <= 400
    )
