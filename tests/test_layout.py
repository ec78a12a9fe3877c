"""The shape of the system: who may import what, no pickle, and how the package installs."""

import ast
import functools
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@functools.cache
def _tree(path: Path) -> ast.Module:
    """A source file's syntax tree, parsed once for all the tests here."""
    return ast.parse(path.read_text(encoding="utf-8"))


def imported_modules(path: Path) -> set[str]:
    tree = _tree(path)
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_library_never_imports_the_adapters():
    for path in (ROOT / "vaekit").rglob("*.py"):
        if path.name == "__main__.py":  # `python -m vaekit` is the CLI entry, by design
            continue
        bad = imported_modules(path) & {"typer", "rich", "gradio", "click", "vaekit_cli", "vaekit_demo"}
        assert not bad, f"{path.relative_to(ROOT)} imports {bad}"


def test_adapters_depend_on_vaekit_not_the_reverse():
    for folder in ("cli", "demo"):
        for path in (ROOT / folder).rglob("*.py"):
            mods = imported_modules(path)
            assert not mods & {"cli", "demo"}, f"{path} imports the source folder name, not the installed package"


def test_no_pickle_anywhere():
    pattern = re.compile(r"\bimport pickle\b|\bfrom pickle\b|\bcloudpickle\b|allow_pickle\s*=\s*True|weights_only\s*=\s*False")
    for folder in ("vaekit", "cli", "demo", "benchmarks"):
        for path in (ROOT / folder).rglob("*.py"):
            text = path.read_text(encoding="utf-8")
            assert not pattern.search(text), f"{path} uses pickle"
            for m in re.finditer(r"torch\.load\(([^)]*)\)", text):
                assert "weights_only=True" in m.group(1), f"{path}: torch.load without weights_only=True"


@pytest.mark.slow
def test_wheel_installs_namespaced_packages_only(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(ROOT)],
        capture_output=True, text=True,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    wheel = next(tmp_path.glob("vaekit-*.whl"))
    tops = {n.split("/")[0] for n in zipfile.ZipFile(wheel).namelist() if not n.startswith("vaekit-")}
    assert tops == {"vaekit", "vaekit_cli", "vaekit_demo"}
    entry = [n for n in zipfile.ZipFile(wheel).namelist() if n.endswith("entry_points.txt")][0]
    assert "vaekit = vaekit_cli.main:main" in zipfile.ZipFile(wheel).read(entry).decode()


def test_adapters_import_from_the_repository_root_and_elsewhere(tmp_path):
    code = "import vaekit, vaekit_cli.main, vaekit_demo; print(vaekit.__file__)"
    for cwd in (ROOT, tmp_path):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd)
        assert out.returncode == 0, out.stderr
        assert Path(out.stdout.strip()).parent == ROOT / "vaekit"


def test_one_file_locker():
    """Every lock is vaekit.fileio.try_lock (filelock's, which works on Windows): no hand-written flock."""
    pattern = re.compile(r"\bimport fcntl\b|\bimport msvcrt\b|\bflock\(|\bfrom filelock\b|\bimport filelock\b")
    users = {path.relative_to(ROOT).as_posix() for folder in ("vaekit", "cli", "demo")
             for path in (ROOT / folder).rglob("*.py") if pattern.search(path.read_text(encoding="utf-8"))}
    assert users == {"vaekit/fileio/__init__.py"}


def test_one_safetensors_header_reader():
    """Only vaekit.fileio parses a safetensors header by hand (8-byte length, then JSON)."""
    pattern = re.compile(r"from_bytes\(\w+\[:8\]")
    users = {path.relative_to(ROOT).as_posix() for folder in ("vaekit", "cli", "demo")
             for path in (ROOT / folder).rglob("*.py") if pattern.search(path.read_text(encoding="utf-8"))}
    assert users == {"vaekit/fileio/__init__.py"}


# modules of other owners that still import a sibling's private names (issue #22); empty it as they go
PRIVATE_IMPORTS_LEFT: set[str] = set()


def test_no_module_imports_another_modules_private_names():
    """A helper that siblings share loses its underscore and gets a docstring."""
    found = set()
    for folder in ("vaekit", "cli", "demo"):
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(_tree(path)):
                if isinstance(node, ast.ImportFrom) and any(
                        a.name.startswith("_") and not a.name.startswith("__") for a in node.names):
                    found.add(path.relative_to(ROOT).as_posix())
    assert found <= PRIVATE_IMPORTS_LEFT, sorted(found - PRIVATE_IMPORTS_LEFT)


def test_the_root_keeps_the_face_and_a_few_shared_leaves():
    """The tree reads as the pipeline (model/, training/, inference/, stream/, ...): the root keeps
    the package's face, the documented `vaekit.config` and `vaekit.train`, and the shared leaves."""
    root = sorted(p.name for p in (ROOT / "vaekit").glob("*.py"))
    assert (ROOT / "vaekit" / "fileio" / "__init__.py").is_file()  # the shared leaf, with its leftovers module
    assert root == ["__init__.py", "__main__.py", "config.py", "errors.py", "progress.py", "train.py",
                    "version.py"]


def test_every_package_is_in_pyprojects_list():
    tomllib = pytest.importorskip("tomllib")
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(("vaekit", *p.parent.relative_to(ROOT / "vaekit").parts)) for p in (ROOT / "vaekit").rglob("__init__.py")}
    assert found <= listed, sorted(found - listed)
