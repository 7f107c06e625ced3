"""What code a stage runs, for its cache key: the stage's module plus every project module it can
reach through imports (module-level and function-level, read with `ast`, not by importing), plus
the packages' `__init__` files on the way. Editing any of them changes the key; editing a module
the stage cannot reach (the model card, the bench) leaves it cached.

Only static `import` statements count: the format registry's discovery (`importlib` by name) is
deliberately invisible here, so a stage does not depend on every other format.
"""

from __future__ import annotations

import ast
import functools
import hashlib
from pathlib import Path

PROJECT_PACKAGES = ("mbv3_mobile", "mobile_harness")


def _package_root(package: str) -> Path | None:
    """The folder holding `package` (a package, or a top-level module's folder)."""
    import importlib.util

    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    if spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations))).parent
    return Path(spec.origin).parent if spec.origin else None


def module_file(module: str, roots: dict[str, Path] | None = None) -> Path | None:
    """The source file of a project module (`a.b.c` -> a/b/c.py or a/b/c/__init__.py), or None.
    `roots` maps further top-level names to the folder holding them (a user's own stage modules)."""
    top = module.split(".")[0]
    if roots and top in roots:
        root = roots[top]
    elif top in PROJECT_PACKAGES:
        root = _package_root(top)
    else:
        return None
    if root is None:
        return None
    base = root.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


@functools.cache
def _imports_of(path: Path, module: str, mtime_ns: int) -> tuple[str, ...]:
    """Every module name `path` imports anywhere (module level or inside functions)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
                origin = ".".join(base + ([node.module] if node.module else []))
            else:
                origin = node.module or ""
            found.add(origin)
            # `from pkg import sub` may import a submodule
            found.update(f"{origin}.{alias.name}" for alias in node.names)
    return tuple(sorted(m for m in found if m))


def _parents(module: str) -> list[str]:
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def import_closure(module: str) -> dict[str, Path]:
    """Every project module `module` can reach, with its file (itself and parent packages included).
    A stage module outside the project (a user's own pipeline) also brings the modules beside it
    that it imports (same folder or package); installed libraries are covered by tool versions."""
    roots: dict[str, Path] = {}
    top = module.split(".")[0]
    own_root = _package_root(top) if top not in PROJECT_PACKAGES else None
    seen: dict[str, Path] = {}
    todo = [module]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        head = name.split(".")[0]
        if own_root is not None and head not in PROJECT_PACKAGES and head not in roots and _beside(own_root, head):
            roots[head] = own_root
        path = module_file(name, roots)
        if path is None:
            continue
        seen[name] = path
        todo.extend(_parents(name))
        todo.extend(_imports_of(path, name, path.stat().st_mtime_ns))
    return seen


def _beside(root: Path, top: str) -> bool:
    return (root / f"{top}.py").is_file() or (root / top / "__init__.py").is_file()


def code_fingerprint(module: str) -> str:
    """sha256 over the sorted (module, source sha256) pairs of `import_closure(module)`."""
    h = hashlib.sha256()
    for name, path in sorted(import_closure(module).items()):
        h.update(name.encode())
        h.update(hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()


def import_graph(package: str = "mbv3_mobile") -> dict[str, set[str]]:
    """module -> the project modules it imports (statically), for every module of `package`."""
    root = _package_root(package)
    graph: dict[str, set[str]] = {}
    if root is None:
        return graph
    for path in sorted((root / package).rglob("*.py")):
        rel = path.relative_to(root).with_suffix("")
        parts = list(rel.parts[:-1]) if rel.name == "__init__" else list(rel.parts)
        name = ".".join(parts)
        graph[name] = {m for m in _imports_of(path, name, path.stat().st_mtime_ns) if module_file(m) is not None}
    return graph
