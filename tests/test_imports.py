"""The layers point one way: no module imports another that imports it back, no folder imports a higher layer's,
and the model files know nothing of pipelines, engines or front doors. Imports inside functions count (a lazy
import is still a dependency); only those under `if TYPE_CHECKING:` do not, as they name a type without importing
its module."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "speechrs"
FRONT = ("speechrs.engine", "speechrs.server", "speechrs.cli", "speechrs.api")
# The layers, lowest first (docs/architecture.md): a module imports its own layer or lower ones. The modules at the
# package's root (errors, hub, weights, request, ...) are shared helpers outside this order; the cycle test covers them.
LAYERS = [
    ("speechrs.kernels",),  # CPU detection, the C kernels and their build
    ("speechrs.linear", "speechrs.audio"),  # compute plan and Linear-like layers; audio in and out
    ("speechrs.layers",),  # RoPE, RMSNorm, attention, KV caches
    ("speechrs.voxtral", "speechrs.dia", "speechrs.align"),  # the families (model, then pipeline); the aligner
    ("speechrs.engine",),  # loaded pipelines, the scheduler
    ("speechrs.server", "speechrs.cli", "speechrs.api"),  # the front doors
]


def _module(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_module(name: str) -> bool:
    path = PACKAGE.parent.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _runtime_nodes(tree: ast.AST):
    """Every node, skipping the bodies of `if TYPE_CHECKING:`."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            yield from (n for child in node.orelse for n in [child, *_runtime_nodes(child)])
            continue
        yield node
        yield from _runtime_nodes(node)


def _imports(path: Path) -> set[str]:
    mod = _module(path)
    package = mod if path.name == "__init__.py" else mod.rsplit(".", 1)[0]
    out = set()
    for node in _runtime_nodes(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                name = f"{base}.{node.module}" if node.module else base
            else:
                name = node.module or ""
            submodules = {f"{name}.{a.name}" for a in node.names if _is_module(f"{name}.{a.name}")}
            out |= submodules or {name}  # `from .. import audio` imports speechrs.audio.decode, not speechrs/__init__
    return {m for m in out if m.startswith("speechrs")}


def _graph() -> dict[str, set[str]]:
    files = {_module(p): p for p in PACKAGE.rglob("*.py")}
    return {m: {d for d in _imports(p) if d in files and d != m} for m, p in files.items()}


def test_no_import_cycles():
    graph, state, cycles = _graph(), {}, []

    def visit(m: str, path: list[str]) -> None:
        state[m] = "open"
        for d in sorted(graph[m]):
            if state.get(d) == "open":
                cycles.append(path[path.index(d) :] + [d])
            elif d not in state:
                visit(d, [*path, d])
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert not cycles, f"import cycles: {cycles}"


def test_model_files_import_no_higher_layer():
    graph = _graph()
    models = [m for m in graph if m.endswith((".model", ".dac", ".dac_stream", ".dac_encoder"))]
    assert len(models) >= 5, models
    for m in models:
        higher = {d for d in graph[m] if d.endswith((".pipeline", ".streaming")) or d.startswith(FRONT)}
        assert not higher, f"{m} imports {higher}"


def _layer(module: str) -> int | None:
    for rank, prefixes in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return rank
    return None


def test_no_folder_imports_a_higher_layer():
    graph = _graph()
    assert {_layer(m) for m in graph} >= set(range(len(LAYERS))), "a layer has no module"
    upward = [
        (m, d)
        for m, deps in graph.items()
        for d in deps
        if _layer(m) is not None and _layer(d) is not None and _layer(d) > _layer(m)  # type: ignore[operator]
    ]
    assert not upward, f"imports of a higher layer: {upward}"
