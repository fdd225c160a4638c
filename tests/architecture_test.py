"""The import rule (docs/architecture.md): no loop imports another loop, the trainer library imports no loop
and nothing from data/, and data/ imports no JAX. Read from the source with `ast`, so it holds for every module
added later: a loop is a module with a top-level `run(config, workdir)`; an entry point is main, sweep, or a
module runnable as a command (`if __name__ == "__main__"`)."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "bert_jax"
JAX_PACKAGES = ("jax", "flax", "optax", "orbax")


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        name = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        yield name.removesuffix(".__init__"), ast.parse(path.read_text())


def _imports(tree) -> set[str]:
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            # `from bert_jax import pretrain` imports the module bert_jax.pretrain.
            found |= {f"{node.module}.{a.name}" for a in node.names}
    return found


def _is_loop(tree) -> bool:
    return any(
        isinstance(node, ast.FunctionDef)
        and node.name == "run"
        and [a.arg for a in node.args.args[:2]] == ["config", "workdir"]
        for node in tree.body
    )


def _is_entry_point(name, tree) -> bool:
    runnable = any(
        isinstance(node, ast.If) and "__main__" in ast.unparse(node.test) for node in tree.body
    )
    return runnable or name in ("bert_jax.main", "bert_jax.sweep")


MODULES = dict(_modules())
LOOPS = {n for n, t in MODULES.items() if _is_loop(t) and not _is_entry_point(n, t)}


def test_the_loops_are_found():
    # One pretraining loop and ONE fine-tuning loop: a task is a module of bert_jax.tasks, never a loop.
    assert LOOPS == {"bert_jax.pretrain", "bert_jax.finetune"}


def test_predict_builds_its_step_from_the_task_not_a_loop():
    assert not _imports(MODULES["bert_jax.predict"]) & LOOPS
    assert "bert_jax.tasks" in _imports(MODULES["bert_jax.predict"])


def test_no_loop_imports_another_and_only_entry_points_import_loops():
    for name, tree in MODULES.items():
        imported = _imports(tree) & LOOPS - {name}
        if _is_entry_point(name, tree):
            continue
        assert not imported, f"{name} imports the loop(s) {sorted(imported)}"


def test_train_lib_imports_no_loop_and_no_data():
    for library in ("bert_jax.train_lib", "bert_jax.reporting"):
        imported = _imports(MODULES[library])
        assert not imported & LOOPS
        assert not [m for m in imported if m.startswith("bert_jax.data")]


def test_data_imports_no_jax():
    for name, tree in MODULES.items():
        if name.startswith("bert_jax.data"):
            jax_imports = [m for m in _imports(tree) if m.split(".")[0] in JAX_PACKAGES]
            assert not jax_imports, f"{name} imports {jax_imports}"


def _bert_jax_imports(name, tree) -> set[str]:
    """The bert_jax modules `name` imports (at any level: a function-level import is an import all the same)."""
    return {m for m in _imports(tree) if m in MODULES and m != name}


def test_no_library_module_imports_a_command():
    commands = {n for n, t in MODULES.items() if _is_entry_point(n, t)}
    for name, tree in MODULES.items():
        if name in commands:
            continue
        imported = _bert_jax_imports(name, tree) & commands
        assert not imported, f"{name} (a library) imports the command(s) {sorted(imported)}"


def test_no_import_cycles():
    graph = {name: _bert_jax_imports(name, tree) for name, tree in MODULES.items()}
    # A package's __init__ is imported by its modules implicitly; its own lazy imports are not a cycle.
    graph = {n: {m for m in deps if not n.startswith(m + ".")} for n, deps in graph.items()}
    state = {}

    def visit(node, path):
        state[node] = "open"
        for dep in sorted(graph[node]):
            assert state.get(dep) != "open", f"import cycle: {' -> '.join([*path, node, dep])}"
            if dep not in state:
                visit(dep, [*path, node])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [])
