"""The package's modules import one another without a cycle (function-level imports included), so each
layer can be read and tested from the bottom up: a plan describes, balance measures, the runtime runs."""
import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "dfa_async"


def graph() -> dict[str, set[str]]:
    mods = {".".join(p.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__"): p
            for p in PACKAGE.rglob("*.py")}
    out = {m: set() for m in mods}
    for m, path in mods.items():
        pkg = m if path.name == "__init__.py" else m.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                parts = pkg.split(".")
                target = ".".join(parts[:len(parts) - node.level + 1] + ([node.module] if node.module else []))
                subs = [f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in mods]
                out[m] |= {c for c in subs or ([target] if target in mods else []) if c != m}
    return out


def cycle(g: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the path, 2: done

    def visit(u, path):
        state[u] = 1
        for v in sorted(g[u]):
            if state.get(v) == 1:
                return path[path.index(v):] + [v]
            if v not in state and (found := visit(v, path + [v])):
                return found
        state[u] = 2
        return None

    for m in sorted(g):
        if m not in state and (found := visit(m, [m])):
            return found
    return None


def test_the_finder_finds_a_cycle():
    assert cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_in_the_package():
    assert cycle(graph()) is None
