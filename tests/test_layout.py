"""Imports run one way, from the maths up to the CLI (docs/architecture.md): the graph of
imports between the package's modules, function-level ones included, has no cycle."""

import ast
from pathlib import Path

import pytest

import higgs_tokenizer

PACKAGE = Path(higgs_tokenizer.__file__).parent


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Package modules that `path` imports anywhere in its code."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package.split(".")
            base = base[: len(base) - node.level + 1]
            target = ".".join(base + ([node.module] if node.module else []))
            for alias in node.names:
                candidate = f"{target}.{alias.name}"
                found.add(candidate if any(module_name(p) == candidate for p in PACKAGE.rglob("*.py")) else target)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("higgs_tokenizer"):
            found.add(node.module)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: {t for t in imports_of(p) if t in modules and t != name} for name, p in modules.items()}


def test_no_import_cycles():
    graph = import_graph()
    for name, targets in graph.items():
        # The top package only gathers public names; nothing inside imports through it.
        assert "higgs_tokenizer" not in targets, f"{name} imports the package itself"
    state: dict[str, str] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        for target in sorted(graph[node]):
            if state.get(target) == "open":
                raise AssertionError("import cycle: " + " -> ".join(path + [node, target]))
            if target not in state:
                visit(target, path + [node])
        state[node] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [])


def test_checkpoint_files_is_a_leaf():
    assert import_graph()["higgs_tokenizer.checkpoint_files"] == set()


def test_the_maths_imports_no_file_api():
    graph = import_graph()
    maths = ["layers", "resampling", "quantizer", "hubert", "semantic", "acoustic"]
    file_api = {"higgs_tokenizer." + m for m in ("audio", "codes_file", "tokenizer", "cli", "long_audio", "streaming")}
    for module in maths:
        assert not graph["higgs_tokenizer." + module] & file_api, module


def test_the_high_level_api_is_exported_and_loads_on_first_use():
    import subprocess
    import sys

    code = (
        "import sys, higgs_tokenizer\n"
        "assert 'higgs_tokenizer.tokenizer' not in sys.modules and 'higgs_tokenizer.audio' not in sys.modules\n"
        "from higgs_tokenizer import HiggsAudioTokenizer, load_codes\n"
        "from higgs_tokenizer.tokenizer import HiggsAudioTokenizer as same\n"
        "assert HiggsAudioTokenizer is same and callable(load_codes)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_corpus_workers_and_the_command_line_import_no_torch():
    """A corpus job's decoding workers import `higgs_tokenizer.dataset` in each process, and
    with the spawn start method the command line's module too (the parent's `__main__`): torch
    (a second or more per worker) stays out of them, of `import higgs_tokenizer` and of the
    parser (`--help`); the package's names still load on first use, the resampler as the
    function it names."""
    import subprocess
    import sys

    code = (
        "import sys, higgs_tokenizer, higgs_tokenizer.dataset.local, higgs_tokenizer.dataset.ray_engine\n"
        "import higgs_tokenizer.cli\n"
        "higgs_tokenizer.cli.build_parser()\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
        "import higgs_tokenizer.model\n"
        "from higgs_tokenizer import resample, HiggsAudioV2TokenizerModel\n"
        "assert callable(resample) and higgs_tokenizer.resample is resample\n"
        "assert sorted(higgs_tokenizer.__all__) == sorted(higgs_tokenizer._LAZY), 'exports and lazy names differ'\n"
        "assert all(getattr(higgs_tokenizer, name) is not None for name in higgs_tokenizer.__all__)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_the_server_sits_on_top_and_only_its_app_knows_http():
    """The engine, settings, wire format and metrics know nothing of HTTP: only the app (its
    routes) and its connections (the deadline on uvicorn's protocol) do."""
    graph = import_graph()
    server = {name for name in graph if name.startswith("higgs_tokenizer.serve")}
    for name, targets in graph.items():
        if name not in server and name != "higgs_tokenizer.cli":
            assert not targets & server, f"{name} imports the server"
    assert not any("higgs_tokenizer.cli" in graph[name] for name in server)
    for path in (PACKAGE / "serve").glob("*.py"):
        http = {node.names[0].name.split(".")[0] if isinstance(node, ast.Import) else (node.module or "").split(".")[0]
                for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, (ast.Import, ast.ImportFrom))}
        if path.name not in ("app.py", "connections.py"):
            assert not http & {"starlette", "uvicorn", "fastapi"}, path.name


@pytest.mark.parametrize("script", sorted(p.name for p in (PACKAGE.parents[1] / "benchmarks").glob("*.py") if p.name != "common.py"))
def test_every_benchmark_starts(script):
    """Each benchmark imports and parses its arguments (a renamed module breaks none unseen)."""
    import subprocess
    import sys

    path = PACKAGE.parents[1] / "benchmarks" / script
    done = subprocess.run([sys.executable, str(path), "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
