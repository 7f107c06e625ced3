"""Maintainer tool: the package's shape in figures (files and sizes, the largest functions, import
arrows that run up a floor), read from the source with `ast` (nothing is imported but the stdlib).

    python scripts/layout_report.py [SRC_ROOT]      # default: src/ of this checkout

The floors are the layering that `tests/test_layout.py` enforces (`FLOORS` there); a module's floor
is its room's (the first matching prefix, longest first). Run it on an older checkout's src/ to
compare (the floors are looked up by room name, so old room names are mapped too).
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from layout_rules import FLOORS, floor_of  # noqa: E402


def modules(src: Path, package: str = "mbv3_mobile") -> dict[str, Path]:
    out = {}
    for path in sorted((src / package).rglob("*.py")):
        rel = path.relative_to(src).with_suffix("")
        parts = list(rel.parts[:-1]) if rel.name == "__init__" else list(rel.parts)
        out[".".join(parts)] = path
    return out


def imports(path: Path, name: str) -> set[str]:
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                origin = ".".join(base + ([node.module] if node.module else []))
            else:
                origin = node.module or ""
            found.add(origin)
            found |= {f"{origin}.{a.name}" for a in node.names}
    return found


def up_arrows(mods: dict[str, Path]) -> list[tuple[str, str, int, int]]:
    """(importer, imported, importer's floor, imported's floor) for every project import that runs up."""
    out = []
    for name, path in mods.items():
        mine = floor_of(name)
        for dep in sorted(imports(path, name)):
            if dep not in mods or dep == name or name.startswith(dep + ".") or dep.startswith(name + "."):
                continue
            theirs = floor_of(dep)
            if mine is not None and theirs is not None and theirs > mine:
                out.append((name, dep, mine, theirs))
    return out


def largest_functions(mods: dict[str, Path], n: int = 10) -> list[tuple[int, str]]:
    sizes = []
    for name, path in mods.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                sizes.append((node.end_lineno - node.lineno + 1, f"{name}.{node.name}"))
    return sorted(sizes, reverse=True)[:n]


def main() -> None:
    src = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "src"
    mods = modules(src)
    lines = {m: len(p.read_text().splitlines()) for m, p in mods.items()}
    print(f"{len(mods)} modules, {sum(lines.values())} lines; median {sorted(lines.values())[len(lines) // 2]}, "
          f"largest {max(lines.values())} ({max(lines, key=lines.get)})")
    print("\n10 largest functions (lines):")
    for size, fn in largest_functions(mods):
        print(f"  {size:4d}  {fn}")
    arrows = up_arrows(mods)
    print(f"\nimport arrows that run up a floor: {len(arrows)} (floors: {', '.join(f'{k}={v}' for k, v in FLOORS.items())})")
    for a, b, fa, fb in arrows:
        print(f"  {a} ({fa}) -> {b} ({fb})")


if __name__ == "__main__":
    main()
