"""Who may import what, in one place.

1. The import contracts in `.importlinter` (interfaces -> services -> core; studio never imports
   deployments; jobs is the lowest service; the engine base class knows no engine) hold, and a new
   back-import breaks them.
2. The gateway boundary: no module outside ``studio/gateway`` imports an LLM client or engine SDK
   (openai, litellm, vllm, anthropic, sglang) — every model call goes through
   ``studio.gateway.Client`` (``studio/evals`` included, with no exception). Modules that *run*
   engines rather than call models are allowed, each with its reason. Parsed with ``ast``, so
   imports inside functions and ``importlib.import_module("...")`` with a literal name count too
   (import-linter sees neither literal dynamic imports nor, without external packages, SDKs).
3. No import cycles: between modules of studio/ and deployments/, nor between the top-level packages
   (``studio.train``, ``studio.evals``, …; ``deployments`` as one). Every import statement counts,
   the ones inside functions too (grimp's graph, as import-linter reads it): one lazy import can
   close a circle through a dozen files."""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
from fnmatch import fnmatch
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LINT = str(Path(sys.executable).with_name("lint-imports"))
CLIENTS = {"openai", "litellm", "vllm", "anthropic", "sglang"}
SCANNED = ("studio", "deployments")


def import_cycles(root: Path = REPO) -> dict[str, list[list[str]]]:
    """The import cycles of the tree at ``root``: ``modules`` and ``packages`` (each a sorted strongly
    connected component of the import graph), built in a subprocess so a copy of the tree is read, not
    the installed one."""
    env = {**os.environ, "PYTHONPATH": str(root)}
    r = subprocess.run([sys.executable, __file__], cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    return json.loads(r.stdout)


def _components(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan's, without recursion)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, iter(sorted(edges.get(root, ()))))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    top = stack.pop()
                    on_stack.discard(top)
                    component.append(top)
                    if top == node:
                        break
                if len(component) > 1:
                    out.append(sorted(component))
    return sorted(out)


def _package(module: str) -> str:
    parts = module.split(".")
    return ".".join(parts[:2]) if parts[0] == "studio" and len(parts) > 1 else parts[0]


def _cycles_here() -> dict[str, list[list[str]]]:
    import grimp

    graph = grimp.build_graph(*SCANNED, cache_dir=None)
    modules = {m: set(graph.find_modules_directly_imported_by(m)) & graph.modules for m in graph.modules}
    packages: dict[str, set[str]] = {}
    for m, imported in modules.items():
        packages.setdefault(_package(m), set()).update(_package(i) for i in imported if _package(i) != _package(m))
    return {"modules": _components(modules), "packages": _components(packages)}


def test_no_import_cycles():
    cycles = import_cycles()
    assert not cycles["modules"], ("modules that import each other (lazy imports count): move what both need "
                                   f"into a module both import:\n{cycles['modules']}")
    assert not cycles["packages"], ("packages that import each other (lazy imports count): move what points up "
                                    "into the lower one or into core, or have the caller hand it in "
                                    f"(docs/architecture.md, the services' order):\n{cycles['packages']}")


def test_a_new_import_cycle_is_found(tmp_path):
    for name in SCANNED:
        shutil.copytree(REPO / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__", "static"))
    step = tmp_path / "studio" / "loops" / "step.py"  # imported by the runner: a lazy import back closes a circle
    step.write_text(step.read_text() + "\n\ndef _runner():\n    from studio.loops import runner\n\n    return runner\n")
    cluster = tmp_path / "studio" / "cluster.py"  # training uses the cluster: the cluster reaching into training
    cluster.write_text(cluster.read_text() + "\n\ndef _train():\n    from studio.train import spec\n\n    return spec\n")
    cycles = import_cycles(tmp_path)
    assert any({"studio.loops.runner", "studio.loops.step"} <= set(c) for c in cycles["modules"]), cycles
    assert cycles["packages"] == [["studio.cluster", "studio.train"]], cycles


def lint(root: Path) -> subprocess.CompletedProcess:
    # PYTHONPATH first: the copy under test, not the editable install, is what grimp reads.
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run([LINT, "--config", str(root / ".importlinter"), "--no-cache"], cwd=root, env=env,
                          capture_output=True, text=True, timeout=300)


def test_the_contracts_hold():
    r = lint(REPO)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "0 broken" in r.stdout


def test_a_new_back_import_breaks_them(tmp_path):
    for name in ("studio", "deployments"):
        shutil.copytree(REPO / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__", "static"))
    shutil.copy(REPO / ".importlinter", tmp_path / ".importlinter")
    core = tmp_path / "studio" / "errors.py"
    core.write_text(core.read_text() + "\nimport studio.api.app  # a core module reaching up\n")
    r = lint(tmp_path)
    assert r.returncode != 0
    assert "studio.errors -> studio.api.app" in r.stdout, r.stdout


ALLOWED = {
    "studio/gateway/*": "the gateway itself: the one place that talks to LLM clients",
    "deployments/gateway.py": "the Gateway serving deployment",
    "deployments/engines/*": "serving engines: they run vLLM, they do not call models",
    "deployments/model.py": "the ModelDeployment serving an engine",
    "studio/train/rollout.py": "GRPO rollout actors run vLLM engines to generate rollouts",
    "studio/train/grpo*": "GRPO training drives its own vLLM rollout engines",
    "studio/api/openai_schemas.py": "the SDK's response models document /v1 in the OpenAPI; nothing "
                                    "is called",
    "studio/cli/demo/steps.py": "the demo plays an outside user of the studio's OpenAI-compatible /v1 with the "
                                "official openai client (it calls the studio, never a provider)",
    "studio/loops/simulate.py": "`studio loop simulate`'s users are outside users of the studio's /v1 with the "
                                "official openai client (they call the studio, never a provider)",
}


def imported_clients(path: Path) -> set[str]:
    text = path.read_text(encoding="utf-8")
    try:
        tree = ast.parse(text, str(path))
    except SyntaxError:  # a file being edited: fall back to reading import lines
        lines = re.findall(r"^\s*(?:import|from)\s+([A-Za-z_]\w*)", text, re.MULTILINE)
        return set(lines) & CLIENTS
    found = set()
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) \
                and isinstance(node.args[0].value, str):
            func = node.func
            fname = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if fname in ("import_module", "__import__"):
                names = [node.args[0].value]
        found |= {n.split(".")[0] for n in names} & CLIENTS
    return found


def test_the_scanner_sees_every_import_form(tmp_path):
    src = tmp_path / "m.py"
    src.write_text("import os\nimport openai.types\ndef f():\n    from litellm import Router\n"
                   "    import importlib\n    importlib.import_module('vllm.sampling_params')\n")
    assert imported_clients(src) == {"openai", "litellm", "vllm"}
    src.write_text("import litellm\nx = (\n")  # unparsable: still seen
    assert imported_clients(src) == {"litellm"}


def test_no_module_outside_the_gateway_imports_an_llm_client():
    offenders = []
    for top in SCANNED:
        for path in sorted((REPO / top).rglob("*.py")):
            rel = path.relative_to(REPO).as_posix()
            if any(fnmatch(rel, pattern) for pattern in ALLOWED):
                continue
            clients = imported_clients(path)
            if clients:
                offenders.append(f"{rel} imports {', '.join(sorted(clients))}")
    assert not offenders, ("call models through studio.gateway.Client, not a client library:\n"
                           + "\n".join(offenders))


if __name__ == "__main__":  # import_cycles() runs this file on the tree PYTHONPATH names
    print(json.dumps(_cycles_here()))
