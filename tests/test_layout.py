"""The package's shape: rooms on floors (no import runs up one), no import cycles, formats that do
not know each other, tasks that know no format, a model card that needs no registry, argparse only
in the CLI, mobile_harness on the shared core only, one registry the README follows. Read from the
source with `ast` (mbv3_mobile.core.code), so nothing here imports torch."""

from pathlib import Path

import pytest
from layout_rules import ALLOWED_UP, FLOORS, floor_of

from mbv3_mobile.core.code import import_graph

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def graph():
    g = import_graph("mbv3_mobile")
    # importing a.b.c runs a/__init__ and a/b/__init__ first: those are edges too
    for name in list(g):
        parts = name.split(".")
        g[name] |= {".".join(parts[:i]) for i in range(1, len(parts))} - {name}
    return g


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in graph:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles(graph):
    # Package __init__ -> child edges are how a package re-exports; a child importing its own
    # parent package is implied by Python itself, so those pairs are not cycles of our making.
    own = {n: {m for m in deps if not (m.startswith(n + ".") or n.startswith(m + "."))} for n, deps in graph.items()}
    assert _cycles(own) == []


def test_every_room_has_a_floor_and_flat_modules_are_gone():
    pkg = ROOT / "src" / "mbv3_mobile"
    rooms = {p.name for p in pkg.iterdir() if p.is_dir() and (p / "__init__.py").is_file()}
    floored = {name.split(".")[1] for name in FLOORS if name.count(".") == 1} - {"report", "__main__"}
    assert rooms == floored, "a room without a floor in tests/layout_rules.py, or a floor without its room"
    assert sorted(p.name for p in pkg.glob("*.py")) == ["__init__.py", "__main__.py"]


def test_no_import_runs_up_a_floor(graph):
    """Commands on top, primitives at the bottom: a module imports its own floor or the floors below
    (package __init__ edges are Python's own and not counted)."""
    up = []
    for mod, deps in graph.items():
        for dep in deps:
            if mod.startswith(dep + ".") or dep.startswith(mod + "."):
                continue
            a, b = floor_of(mod), floor_of(dep)
            if a is not None and b is not None and b > a and (mod, dep) not in ALLOWED_UP:
                up.append(f"{mod} (floor {a}) -> {dep} (floor {b})")
    assert up == []


def test_tasks_never_import_formats_and_the_card_needs_no_registry(graph):
    for mod, deps in graph.items():
        if mod.startswith("mbv3_mobile.tasks"):
            assert not {d for d in deps if d.startswith("mbv3_mobile.export")}, mod
        if mod.startswith("mbv3_mobile.card"):
            assert not {d for d in deps if d.startswith("mbv3_mobile.export")}, mod


def test_pipelines_live_at_the_top_of_the_repository():
    from mbv3_mobile.pipeline.spec import pipeline_files, pipelines_dir

    assert pipelines_dir().resolve() == (ROOT / "pipelines").resolve()
    assert set(pipeline_files()) == {"android", "ios", "onnx", "parity", "bench"}
    assert not (ROOT / "src" / "mbv3_mobile" / "pipelines").exists()


def test_formats_never_import_each_other(graph):
    from mbv3_mobile.export.registry import list_formats

    names = [f.name for f in list_formats()]
    assert set(names) == {"executorch", "coreml", "onnx"}
    for mod, deps in graph.items():
        for fmt in names:
            if mod.startswith(f"mbv3_mobile.export.{fmt}."):
                others = {d for d in deps for o in names if o != fmt and d.startswith(f"mbv3_mobile.export.{o}")}
                assert not others, (mod, others)


def test_argparse_only_in_the_cli():
    offenders = []
    for path in (ROOT / "src" / "mbv3_mobile").rglob("*.py"):
        if "/cli/" not in str(path) and "argparse" in path.read_text():
            offenders.append(str(path.relative_to(ROOT)))
    assert offenders == []


def test_mobile_harness_stands_on_the_shared_core_only(graph):
    harness = import_graph("mobile_harness")
    uses = {d for deps in harness.values() for d in deps if d.startswith("mbv3_mobile")}
    assert uses and all(d.startswith("mbv3_mobile.core") for d in uses), uses
    users = {m for m, deps in graph.items() if any(d.startswith("mobile_harness") for d in deps)}
    assert users and all(m.startswith(("mbv3_mobile.crossformat.bench", "mbv3_mobile.cli")) for m in users), users


def test_no_source_file_past_600_lines():
    long = {str(p.relative_to(ROOT)): n for p in (ROOT / "src").rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 600}
    # the MIL interpreter is one table of op kernels plus its program runner: long by nature
    assert set(long) <= {"src/mbv3_mobile/verify/mil_interpreter.py"}, long


def test_readme_format_table_is_the_registry():
    from mbv3_mobile.export.registry import format_table

    assert format_table() in (ROOT / "README.md").read_text(), \
        "README's format table differs from the registry: paste the output of `mbv3_mobile.export.registry.format_table()`"


def test_every_pipeline_parameter_explains_itself():
    from mbv3_mobile.pipeline.spec import load_pipeline, pipeline_files

    for name in pipeline_files():
        spec = load_pipeline(name)  # raises naming any parameter without a [help] line
        assert spec.help and all(len(text) > 10 for text in spec.help.values()), name
