"""The import rule (docs/architecture.md), read from the source with `ast` so it holds for every module added
later. A loop is a module with a top-level `run(config, workdir)`; an entry point is main, sweep, or a module
runnable as a command (`if __name__ == "__main__"`). Imports are followed transitively, including imports inside
functions (a lazy import still runs when its function is called), and `import a.b.c` runs `a/__init__` and
`a/b/__init__` too."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "bert_jax"
JAX_PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax")
MAX_LINES = 400
# Modules allowed past MAX_LINES, each with the reason it stands (docs/architecture.md repeats it).
LONG_MODULES: dict[str, str] = {
    "bert_jax.checkpoint": "the Orbax wrapper, its manifest (checksums, finite flags) and the one "
    "fallback-and-verify path; the manifest is the next split",
    "bert_jax.layouts": "every checkpoint layout (transformers, TF1, workdir) dispatched, and the transformers "
    "and TF1 writers (TF1 reading is layouts_tf1; each family's names and tokenizer writer live in "
    "models/*_hf.py, *_tf1.py); the writers (save_pretrained, save_tf1, write_tokenizer) are the next split",
    "bert_jax.data.loader": "the step-pure loader with its phases, packing and data-fingerprint hooks",
    "bert_jax.data.tokenizer": "WordPiece, SentencePiece and byte-level BPE behind one interface",
    "bert_jax.startup": "signals during start-up, host agreement with the run fingerprint, and the workdir lock",
}


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        name = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        yield name.removesuffix(".__init__"), (path, ast.parse(path.read_text()))


MODULES = {name: tree for name, (_, tree) in _modules()}
PATHS = {name: path for name, (path, _) in _modules()}


def _imports(tree, lazy: bool = True) -> set[str]:
    """Every module name an import statement in `tree` names (`from a import b` names a and a.b); with
    `lazy` False, only the statements that run when the module is imported (none inside a function)."""
    found = set()
    nodes = ast.walk(tree) if lazy else _module_level(tree)
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
    return found


def _module_level(tree):
    todo = list(tree.body)
    while todo:
        node = todo.pop()
        yield node
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            todo.extend(ast.iter_child_nodes(node))


def _with_parents(name: str) -> set[str]:
    parts = name.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts) + 1)}


def _internal(names: set[str]) -> set[str]:
    """The bert_jax modules (and the packages around them) that importing `names` runs."""
    out = set()
    for name in names:
        out |= {n for n in _with_parents(name) if n in MODULES}
    return out


# A package's __init__ runs whenever any module under it is imported, so only its module-level imports count
# (bert_jax/__init__ loads `load_pretrained` lazily, on first use, to keep bert_jax.data free of JAX).
GRAPH = {
    name: _internal(_imports(tree, lazy=PATHS[name].name != "__init__.py")) - {name}
    for name, tree in MODULES.items()
}


def _closure(name: str) -> set[str]:
    seen, todo = set(), [*_internal({name})]
    while todo:
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            todo.extend(GRAPH[module])
    return seen


def _is_loop(tree) -> bool:
    return any(
        isinstance(node, ast.FunctionDef)
        and node.name == "run"
        and [a.arg for a in node.args.args[:2]] == ["config", "workdir"]
        for node in tree.body
    )


def _is_runnable(tree) -> bool:
    return any(
        isinstance(node, ast.If) and "__main__" in ast.unparse(node.test) for node in tree.body
    )


def _is_entry_point(name, tree) -> bool:
    return _is_runnable(tree) or name in ("bert_jax.main", "bert_jax.sweep")


LOOPS = {n for n, t in MODULES.items() if _is_loop(t) and not _is_entry_point(n, t)}
ENTRY_POINTS = {n for n, t in MODULES.items() if _is_entry_point(n, t)}


def test_the_loops_are_found():
    # One pretraining loop and ONE fine-tuning loop: a task is a module of bert_jax.tasks, never a loop.
    assert LOOPS == {"bert_jax.pretrain", "bert_jax.finetune"}


def test_predict_builds_its_step_from_the_task_not_a_loop():
    assert not _closure("bert_jax.predict") & LOOPS
    assert "bert_jax.tasks" in GRAPH["bert_jax.predict"]


def test_no_loop_imports_another_and_only_entry_points_import_loops():
    for name in MODULES:
        if name in ENTRY_POINTS:
            continue
        imported = GRAPH[name] & LOOPS
        assert not imported, f"{name} imports the loop(s) {sorted(imported)}"


def test_no_library_module_imports_a_command():
    """A module with `__main__` is a command; libraries must not depend on one (its flags, its side effects)."""
    commands = {n for n, t in MODULES.items() if _is_runnable(t)}
    for name in MODULES.keys() - ENTRY_POINTS:
        imported = GRAPH[name] & commands
        assert not imported, f"library {name} imports the command(s) {sorted(imported)}"


def test_no_import_cycles():
    # Edges to a module's own ancestor packages are implicit (`import a.b.c` runs a/__init__ first), not a cycle.
    graph = {n: deps - _with_parents(n) for n, deps in GRAPH.items()}
    for name in graph:
        seen, todo = set(), list(graph[name])
        while todo:
            module = todo.pop()
            assert module != name, f"import cycle through {name}"
            if module not in seen:
                seen.add(module)
                todo.extend(graph[module])


def test_trainer_library_names_no_loop_no_data_and_no_family():
    for library in ("bert_jax.train_lib", "bert_jax.run_setup", "bert_jax.reporting"):
        closure = _closure(library)
        assert not closure & LOOPS, library
        assert not [m for m in GRAPH[library] if m.startswith("bert_jax.data")], library
        # The model wing only through the registry, which names the families.
        direct = sorted(m for m in GRAPH[library] if m.startswith("bert_jax.models."))
        assert set(direct) <= {"bert_jax.models.registry"}, f"{library} imports {direct}"


@pytest.mark.parametrize("prefix", ["bert_jax.data", "bert_jax.configs"])
def test_data_and_configs_import_no_jax_even_transitively(prefix):
    for name in MODULES:
        if not name.startswith(prefix):
            continue
        for module in _closure(name) | {name}:
            jax = sorted(m for m in _imports(MODULES[module]) if m.split(".")[0] in JAX_PACKAGES)
            assert not jax, f"{name} reaches {module}, which imports {jax}"


def test_nothing_outside_models_names_a_family_config():
    for name, tree in MODULES.items():
        if name.startswith("bert_jax.models"):
            continue
        names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
        # transformers.BertConfig is the reference's own class, not ours.
        names |= {
            n.attr
            for n in ast.walk(tree)
            if isinstance(n, ast.Attribute) and ast.unparse(n.value) != "transformers"
        }
        names |= {a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names}
        assert "BertConfig" not in names, f"{name} names BertConfig (use bert_jax.models.registry)"


def test_modules_stay_short():
    for name, path in PATHS.items():
        lines = len(path.read_text().splitlines())
        if name in LONG_MODULES:
            assert lines > MAX_LINES, f"{name} is short again: drop it from LONG_MODULES"
            continue
        assert lines <= MAX_LINES, (
            f"{path.relative_to(PACKAGE.parent)}: {lines} lines > {MAX_LINES}"
        )


def test_the_rules_catch_what_they_are_for():
    """The checks above on a made-up graph: a cycle through three modules and a transitive JAX import."""
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}}
    seen, todo = set(), ["b"]
    while todo:
        m = todo.pop()
        if m not in seen:
            seen.add(m)
            todo.extend(graph[m])
    assert "a" in seen
    tree = ast.parse("def f():\n    import flax.linen as nn\n")
    assert "flax.linen" in _imports(tree)
    assert "flax.linen" not in _imports(tree, lazy=False)
    assert _with_parents("bert_jax.data.loader") == {
        "bert_jax",
        "bert_jax.data",
        "bert_jax.data.loader",
    }
