"""Packaging: shipped rubrics and prompts are package data, found by name from anywhere.

The slow test builds the wheel from a copy of the checkout (so no build/ or *.egg-info lands in
the repository), installs it with --no-deps into a fresh venv whose only extra path is .venv's
site-packages (for the dependencies; `--system-site-packages` would expose the base interpreter's
instead), and lints `helpfulness` from `/`.
"""

from __future__ import annotations

import ast
import importlib.metadata
import re
import shutil
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

import pytest

from rlaif.judging.rubrics import SHIPPED_RUBRICS, find_rubric
from rlaif.shipped import shipped_dir

ROOT = Path(__file__).resolve().parents[1]
COPIED = ["pyproject.toml", "README.md", "rlaif", "rubrics", "prompts", "benchmarks"]


def test_every_package_under_rlaif_is_packaged() -> None:
    packages = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    on_disk = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "rlaif").rglob("__init__.py")}
    assert on_disk - packages == set(), "add these to [tool.setuptools] packages in pyproject.toml"
    assert {"rlaif.shipped.rubrics", "rlaif.shipped.prompts"} <= packages


def test_shipped_dirs_in_a_checkout_are_the_top_level_folders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert shipped_dir("rubrics") == ROOT / "rubrics" == SHIPPED_RUBRICS
    assert (shipped_dir("prompts") / "demo.jsonl").is_file()
    monkeypatch.chdir(tmp_path)  # no ./rubrics here: names resolve to the shipped folder
    assert find_rubric("helpfulness") == ROOT / "rubrics" / "helpfulness.yaml"
    (tmp_path / "rubrics").mkdir()  # a user's ./rubrics/NAME.yaml wins over the shipped one
    shutil.copy(ROOT / "rubrics" / "honesty.yaml", tmp_path / "rubrics" / "honesty.yaml")
    assert find_rubric("honesty") == tmp_path / "rubrics" / "honesty.yaml"


def _venv_with_wheel(tmp: Path) -> Path:
    """A venv holding the built wheel (no deps), with .venv's site-packages on its path."""
    src = tmp / "src"
    src.mkdir()
    for name in COPIED:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(ROOT / name, src / name)
    py = sys.executable
    subprocess.run([py, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(tmp / "dist"),
                    str(src)], check=True, capture_output=True, text=True)
    venv = tmp / "venv"
    subprocess.run([py, "-m", "venv", "--without-pip", str(venv)], check=True)
    vpy = venv / "bin" / "python"
    site = subprocess.run([str(vpy), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    # a plain path line: .venv's packages become importable, its .pth files (the editable rlaif) do not run
    (Path(site) / "rlaif_test_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    wheel = next((tmp / "dist").glob("rlaif-*.whl"))
    subprocess.run([str(vpy), "-m", "pip", "install", "-q", "--no-deps", str(wheel)], check=True,
                   capture_output=True, text=True)
    return venv


def test_wheel_ships_rubrics_and_prompts_found_from_root(tmp_path: Path) -> None:
    venv = _venv_with_wheel(tmp_path)
    lint = subprocess.run([str(venv / "bin" / "rlaif"), "rubric", "lint", "helpfulness"], cwd="/",
                          capture_output=True, text=True, timeout=120)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    assert "1 rubric(s): 0 error(s)" in lint.stderr
    where = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import rlaif; from rlaif.judging.rubrics import find_rubric; "
         "from rlaif.shipped import shipped_dir; "
         "print(rlaif.__file__, find_rubric('helpfulness'), shipped_dir('prompts'), shipped_dir('benchmarks'), "
         "sep='\\n')"],
        cwd="/", capture_output=True, text=True, check=True).stdout.split()
    installed = (venv / "lib").resolve()
    for path in map(Path, where):
        assert path.resolve().is_relative_to(installed), f"{path} is not inside the installed package"
        assert not path.resolve().is_relative_to(ROOT), f"{path} comes from the checkout"
    assert where[1].endswith("rlaif/shipped/rubrics/helpfulness.yaml")
    assert (Path(where[2]) / "demo.jsonl").is_file()
    assert (Path(where[3]) / "basic.jsonl").is_file()  # `rlaif eval --benchmark basic` from anywhere
    rubric_dir = Path(where[1]).parent
    assert (rubric_dir / "helpfulness.jinja").is_file()  # the template_file beside it ships too
    assert not (rubric_dir / "__init__.py").exists()


def test_every_third_party_import_of_tests_and_bench_is_declared() -> None:
    """`make setup` installs ``.[dev,...]``: a module that tests/ or bench/ import must come from a
    distribution pyproject.toml declares (a dependency or an extra). One that another dependency happens
    to pull in (psutil by accelerate, pillow by matplotlib) counts only once declared itself."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"].values()
    requirements = [*project["dependencies"], *(r for extra in extras for r in extra)]
    declared = {_dist_key(re.match(r"[A-Za-z0-9._-]+", r).group()) for r in requirements}
    files = [*(ROOT / "tests").rglob("*.py"), *(ROOT / "bench").rglob("*.py")]
    local = {p.stem for p in files} | {"rlaif", "tests", "bench"}
    owners = importlib.metadata.packages_distributions()
    missing = {}
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) and node.module and not node.level else []
            for top in {name.split(".")[0] for name in names} - local - set(sys.stdlib_module_names):
                if not declared & {_dist_key(d) for d in owners.get(top, [top])}:
                    missing.setdefault(top, path.relative_to(ROOT).as_posix())
    assert missing == {}, "declare these in pyproject.toml (module: first file importing it)"


def _dist_key(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()

