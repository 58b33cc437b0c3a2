"""The layering rule of docs/ARCHITECTURE.md, checked on every import statement (module level and inside
functions alike): a unit imports itself and the units of lower layers only, so no import cycle can form."""

import ast
from pathlib import Path

from .conftest import REPO

# lowest first; units of one layer do not import each other
LAYERS = [
    ["mode.core"],
    ["run_configs", "mode.toy"],
    ["mode.datacomp", "mode.prep", "dr"],
    ["open_clip_patch"],
    ["mode.train", "mode.evaluation", "dr.generate"],  # dr.generate builds teachers with the plugin's models
    ["mode.cli", "src.training"],
    ["mode.__main__"],
]
RANK = {unit: i for i, layer in enumerate(LAYERS) for unit in layer}


def unit_of(module: str) -> str | None:
    """The unit a dotted module name belongs to (its longest prefix in LAYERS), None if not ours."""
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        if ".".join(parts[:n]) in RANK:
            return ".".join(parts[:n])
    return None


def our_files():
    for top in ("mode", "dr", "open_clip_patch", "src"):
        yield from sorted((REPO / top).rglob("*.py"))
    yield REPO / "run_configs.py"


def module_name(path: Path) -> str:
    rel = path.relative_to(REPO).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def imports(path: Path, module: str):
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: up node.level - 1 packages from this one
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([base] if base else []))
            for alias in node.names:  # `from mode import x` names a submodule
                yield node.lineno, f"{base}.{alias.name}" if unit_of(f"{base}.{alias.name}") else base


def test_every_module_has_a_layer():
    missing = [module_name(p) for p in our_files() if unit_of(module_name(p)) is None
               and module_name(p) not in ("mode", "src", "src.training")]
    assert not missing, f"modules outside LAYERS: {missing}"


def test_imports_go_down_the_layers_only():
    wrong = []
    for path in our_files():
        module = module_name(path)
        mine = unit_of(module)
        if mine is None:
            continue
        for line, target in imports(path, module):
            theirs = unit_of(target)
            if theirs is None or theirs == mine:
                continue
            if RANK[theirs] >= RANK[mine]:
                wrong.append(f"{path.relative_to(REPO)}:{line} ({mine}, layer {RANK[mine]}) imports {target} "
                             f"({theirs}, layer {RANK[theirs]})")
    assert not wrong, "\n".join(wrong)
