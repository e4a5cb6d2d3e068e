"""Which source files a stage depends on, derived from its imports (never a hand-kept list).

The closure starts at a module and follows every `import` of the project's own packages found anywhere in its
source (module level and inside functions alike, so lazy imports count), then the imports of those modules,
and so on. Importing `a.b.c` also runs `a/__init__.py` and `a/b/__init__.py`, so those are in the closure too.
The answer is deliberately coarse: a module is a dependency as soon as it is imported, whether or not the stage
calls into it. Both drivers read it: the Prefect flow hashes these files into each stage's record, and the
generated `dvc.yaml` lists them as the stage's code deps.
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("ssl_components", "flows")  # the project's own top-level packages


def _module_file(module: str) -> Path | None:
    """The file of a project module ('pkg/__init__.py' for a package), or None if it is not one of ours."""
    parts = module.split(".")
    if parts[0] not in PACKAGES:
        return None
    base = ROOT.joinpath(*parts)
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _with_parents(module: str) -> list[str]:
    parts = module.split(".")
    return [".".join(parts[: i + 1]) for i in range(len(parts))]


def _imported_modules(path: Path, module: str) -> set[str]:
    """Every module named by an import statement anywhere in `path` (relative imports resolved)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, node.module] if node.module else anchor)
            else:
                base = node.module or ""
            found.add(base)
            # `from pkg import name` may import the submodule pkg.name
            found.update(f"{base}.{alias.name}" for alias in node.names if alias.name != "*")
    return found


@functools.cache
def module_closure(module: str) -> tuple[str, ...]:
    """Repo-relative paths of the project files `module` depends on, itself included, sorted."""
    seen: set[str] = set()
    files: set[Path] = set()
    todo = _with_parents(module)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        path = _module_file(name)
        if path is None:
            continue
        files.add(path)
        for imported in _imported_modules(path, name):
            todo.extend(m for m in _with_parents(imported) if m not in seen)
    return tuple(sorted(p.relative_to(ROOT).as_posix() for p in files))
