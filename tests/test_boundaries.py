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
