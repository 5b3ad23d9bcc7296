"""The design's boundaries: torch only in export/; engines/ knows nothing of faces; library code never prints."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _py(folder):
    return sorted((REPO / folder).rglob("*.py"))


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    mods = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            mods |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            mods.add(node.module.split(".")[0])
    return mods


@pytest.mark.parametrize("folder", ["runtime", "engines", "cli"])
def test_serving_path_never_imports_torch(folder):
    bad = [str(p.relative_to(REPO)) for p in _py(folder) if _imports(p) & {"torch", "torchvision"}]
    assert not bad, f"torch imported in the serving path: {bad}"


def test_engines_know_nothing_of_faces():
    for p in _py("engines"):
        tree = ast.parse(p.read_text(), str(p))
        mods = [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module]
        mods += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
        bad = [m for m in mods if m.startswith(("beautyrt.runtime", "beautyrt.export", "beautyrt.cli"))]
        assert not bad, f"{p.relative_to(REPO)} imports {bad}"


@pytest.mark.parametrize("folder", ["runtime", "engines", "export"])
def test_library_code_does_not_print(folder):
    for p in _py(folder):
        tree = ast.parse(p.read_text(), str(p))
        calls = [
            n
            for n in ast.walk(tree)
            if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == "print"
        ]
        assert not calls, f"print() in library code: {p.relative_to(REPO)}:{calls[0].lineno}"


def test_no_unrestricted_pickle_load():
    for folder in ("export", "runtime", "engines", "cli"):
        for p in _py(folder):
            src = p.read_text()
            assert "pickle.load(" not in src and "pickle.loads(" not in src, p
            for line in src.splitlines():
                if "torch.load(" in line:
                    assert "weights_only=True" in line, f"{p}: {line.strip()}"


def test_every_source_package_ships_in_the_wheel():
    """pyproject lists packages explicitly (package-dir maps export/ -> beautyrt.export ...): a new
    subpackage missing from that list works in an editable install but vanishes from a wheel."""
    import tomllib

    cfg = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(cfg["packages"])
    for pkg, folder in cfg["package-dir"].items():
        for init in (REPO / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(REPO / folder)
            name = ".".join([pkg, *rel.parts])
            assert name in listed, f"{name} ({init.parent.relative_to(REPO)}) is not in pyproject's packages"
    data = cfg.get("package-data", {}).get("beautyrt.export", [])
    assert "demo_pack/*" in data, "the demo pack's weights must be package data of beautyrt.export"


SERVE_ONLY = {"fastapi", "starlette", "uvicorn", "prometheus_client", "python_multipart", "multipart", "anyio"}


@pytest.mark.parametrize("folder", ["runtime", "engines", "cli"])
def test_the_serve_extra_is_imported_only_by_runtime_serve(folder):
    """The base install stays lean: the web stack is imported by runtime/serve/ alone (and there not by errors.py
    and config.py, which the CLI and the docs test import without the extra)."""
    serve = REPO / "runtime" / "serve"
    lean = {serve / "errors.py", serve / "config.py", serve / "__init__.py"}
    bad = [
        str(p.relative_to(REPO))
        for p in _py(folder)
        if _imports(p) & SERVE_ONLY and (serve not in p.parents or p in lean)
    ]
    assert not bad, f"the serve extra imported outside runtime/serve: {bad}"


def test_importing_the_api_and_cli_loads_no_web_stack():
    import subprocess
    import sys

    code = (
        "import sys, beautyrt.runtime.api, beautyrt.cli.main, beautyrt.runtime.serve.errors, "
        "beautyrt.runtime.serve.config; print(sorted(m for m in " + repr(sorted(SERVE_ONLY)) + " if m in sys.modules))"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]", r.stdout


def test_the_page_ships_in_the_wheel():
    import tomllib

    cfg = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert "static/*" in cfg["package-data"].get("beautyrt.runtime.serve", [])
    for name in ("index.html", "app.js", "style.css"):
        assert (REPO / "runtime" / "serve" / "static" / name).is_file(), name
    page = (REPO / "runtime" / "serve" / "static" / "index.html").read_text()
    js = (REPO / "runtime" / "serve" / "static" / "app.js").read_text()
    for text in (page, js):  # works offline: nothing is loaded from another host
        assert "http://" not in text and "https://" not in text and "//cdn" not in text


@pytest.mark.parametrize("folder", ["runtime", "engines", "cli"])
def test_ray_is_imported_only_by_runtime_scale(folder):
    """The ray extra: imported at module level by runtime/scale/serve_ray.py and batch_ray.py alone (common.py,
    which the batch command's local path imports, imports ray only inside functions)."""
    scale = REPO / "runtime" / "scale"
    allowed = {scale / "serve_ray.py", scale / "batch_ray.py"}
    bad = []
    for p in _py(folder):
        tree = ast.parse(p.read_text())
        top = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
        mods = {a.name.split(".")[0] for n in top if isinstance(n, ast.Import) for a in n.names}
        mods |= {n.module.split(".")[0] for n in top if isinstance(n, ast.ImportFrom) and n.module and not n.level}
        if "ray" in mods and p not in allowed:
            bad.append(str(p.relative_to(REPO)))
    assert not bad, f"ray imported at module level outside runtime/scale's Ray modules: {bad}"


def test_importing_the_cli_and_the_batch_job_loads_no_ray():
    import subprocess
    import sys

    code = (
        "import sys, beautyrt.cli.main, beautyrt.runtime.tools.batch, beautyrt.runtime.scale.common; "
        "print('ray' in sys.modules)"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "False", r.stdout
