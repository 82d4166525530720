"""The package's layering, read from its source: no import cycle, a config that builds nothing, and no code
outside the models that asks which model class or type it has."""

import ast
from pathlib import Path

import pytest

from conftest import REPO

PACKAGE = REPO / "pyro_vae"
MODEL_CLASSES = {"VAE", "StackedVAE", "SSVAE", "CVAE", "GroupedVAE"}
# former homes of the models, kept so old imports work: they only re-export
SHIMS = {"pyro_vae.model", "pyro_vae.hierarchical", "pyro_vae.hierarchical.registry", "pyro_vae"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict:
    return {_module_name(p): ast.parse(p.read_text(encoding="utf-8"), str(p)) for p in PACKAGE.rglob("*.py")}


def _imports(name: str, tree: ast.AST, known: set) -> set:
    """Every pyro_vae module ``name`` imports, at module level or inside functions; importing ``a.b`` imports ``a``
    (for a module outside ``a``: the root package and a package's own modules are initialised before them)."""
    package = name if (PACKAGE / Path(*name.split(".")[1:]) / "__init__.py").exists() else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        targets = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                stem = ".".join(base + ([node.module] if node.module else []))
            else:
                stem = node.module or ""
            targets = [stem] + [f"{stem}.{alias.name}" for alias in node.names]
        for target in targets:
            while target:
                # a module inside a package runs while that package initialises: its own package is no edge
                if target in known and target != name and not name.startswith(target + "."):
                    found.add(target)
                target = target.rpartition(".")[0]
    return found


def _graph() -> dict:
    modules = _modules()
    return {name: _imports(name, tree, set(modules)) for name, tree in modules.items()}


def _cycle(graph: dict):
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_the_import_walk_sees_lazy_and_relative_imports():
    graph = _graph()
    assert "pyro_vae.evaluate" in graph["pyro_vae.train"]  # module level, relative
    assert "pyro_vae.run" in graph["pyro_vae.cli"]  # inside a function
    assert "pyro_vae.models" in graph["pyro_vae.importance"]  # a submodule's import runs its package
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]  # the walk finds a cycle


def test_no_import_cycle_inside_the_package():
    assert _cycle(_graph()) is None


def test_config_imports_no_component_module():
    """The schema checks names through the registries; building is pyro_vae.build's."""
    assert _graph()["pyro_vae.config"] <= {"pyro_vae._io", "pyro_vae._registry", "pyro_vae.plugins"}


def _outside_models():
    for name, tree in _modules().items():
        if not name.startswith("pyro_vae.models") and name not in SHIMS:
            yield name, tree


def test_nothing_outside_the_models_names_a_model_class():
    """Code outside pyro_vae.models asks the declared interface; it never imports or tests a concrete class."""
    found = []
    for name, tree in _outside_models():
        for node in ast.walk(tree):
            if isinstance(node, ast.Name) and node.id in MODEL_CLASSES:
                found.append(f"{name}:{node.lineno} {node.id}")
            if isinstance(node, ast.alias) and node.name in MODEL_CLASSES:
                found.append(f"{name} imports {node.name}")
    assert not found


def test_nothing_outside_the_models_branches_on_a_model_type_name():
    """No comparison of a model type (``config.model.type``, ``model.type``) with a string outside the models."""

    def model_type(node):
        return isinstance(node, ast.Attribute) and node.attr == "type" and (
            isinstance(node.value, ast.Attribute) and node.value.attr == "model"
            or isinstance(node.value, ast.Name) and node.value.id in ("model", "m"))

    found = []
    for name, tree in _outside_models():
        for node in ast.walk(tree):
            if isinstance(node, ast.Compare):
                sides = [node.left, *node.comparators]
                if any(model_type(s) for s in sides) and \
                        any(isinstance(s, ast.Constant) and isinstance(s.value, str) for s in sides):
                    found.append(f"{name}:{node.lineno}")
    assert not found
    probe = ast.parse("if config.model.type == 'cvae': pass")  # what the check catches
    assert any(isinstance(n, ast.Compare) and model_type(n.left) for n in ast.walk(probe))


@pytest.mark.parametrize("layer, allowed", [
    ("pyro_vae.priors", {"pyro_vae._registry", "pyro_vae.distributions"}),
    ("pyro_vae.likelihoods", {"pyro_vae._registry", "pyro_vae.distributions", "pyro_vae.nets"}),
    ("pyro_vae.nets", {"pyro_vae._registry"}),
    ("pyro_vae.step", set()),
])
def test_components_depend_only_on_their_own_layer(layer, allowed):
    assert _graph()[layer] <= allowed
