"""environment.yml, pyproject.toml, README.md and .ci/run tell the same story."""

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONDA_TO_PIP = {"pytorch": "torch"}  # conda-forge names that differ from PyPI's
CONDA_ONLY = {"python", "pip"}  # the interpreter and installer, not requirements of the package


def parse_environment_yml(text: str) -> dict:
    """The subset of YAML that conda environment files use: top-level `key: value`, and lists of
    `- item` under `channels:` / `dependencies:`, with one nested `- pip:` list."""
    env, key, in_pip = {}, None, False
    for raw in text.splitlines():
        line = raw.split(" #")[0].rstrip() if not raw.lstrip().startswith("#") else ""
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip())
        item = line.strip()
        if indent == 0:
            assert not item.startswith("-"), f"environment.yml: list item outside a key: {raw!r}"
            key, _, value = item.partition(":")
            env[key] = value.strip() if value.strip() else []
            in_pip = False
        elif item == "- pip:":
            env[key].append({"pip": []})
            in_pip = True
        elif item.startswith("- "):
            target = env[key][-1]["pip"] if in_pip and indent > 2 else env[key]
            if in_pip and indent <= 2:
                in_pip = False
            target.append(item[2:].strip())
        else:
            raise AssertionError(f"environment.yml: line outside the supported subset: {raw!r}")
    return env


def requirement_name(spec: str) -> str:
    name = re.match(r"[A-Za-z0-9_.\-]+", spec.strip()).group(0)
    return re.sub(r"[-_.]+", "-", name).lower()


def test_parser_on_a_sample():
    env = parse_environment_yml("name: x\nchannels:\n  - conda-forge\ndependencies:\n  - python>=3.10\n"
                                "  - pytorch>=2.5  # cpu\n  - pip\n  - pip:\n      - mistral-common\n      - -e .\n")
    assert env == {"name": "x", "channels": ["conda-forge"],
                   "dependencies": ["python>=3.10", "pytorch>=2.5", "pip", {"pip": ["mistral-common", "-e ."]}]}


def environment():
    return parse_environment_yml((ROOT / "environment.yml").read_text())


def pyproject():
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_environment_and_pyproject_list_the_same_packages():
    env = environment()
    conda = [d for d in env["dependencies"] if isinstance(d, str)]
    pip = [p for d in env["dependencies"] if isinstance(d, dict) for p in d["pip"]]
    assert "-e ." in pip, "environment.yml must install the package itself (pip: - -e .)"
    env_specs = {CONDA_TO_PIP.get(requirement_name(s), requirement_name(s)): s for s in conda + pip if s != "-e ."}
    for name in CONDA_ONLY:
        env_specs.pop(name, None)

    project = pyproject()["project"]
    py_specs = {requirement_name(s): s for s in project["dependencies"] + project["optional-dependencies"]["dev"]}
    assert sorted(env_specs) == sorted(py_specs), (
        f"only in environment.yml: {sorted(set(env_specs) - set(py_specs))}; "
        f"only in pyproject (deps + dev): {sorted(set(py_specs) - set(env_specs))}")
    # where both pin a version, the pins agree (pytorch>=2.5 <-> torch>=2.5)
    for name, spec in py_specs.items():
        version = spec.strip()[len(re.match(r"[A-Za-z0-9_.\-]+", spec.strip()).group(0)):].strip()
        env_spec = env_specs[name]
        env_version = env_spec.strip()[len(re.match(r"[A-Za-z0-9_.\-]+", env_spec.strip()).group(0)):].strip()
        assert version == env_version, f"{name}: pyproject says {spec!r}, environment.yml says {env_spec!r}"


def test_environment_python_matches_requires_python():
    conda = [d for d in environment()["dependencies"] if isinstance(d, str)]
    python = [d for d in conda if requirement_name(d) == "python"]
    assert python, "environment.yml must pin python"
    assert python[0].replace("python", "", 1) == pyproject()["project"]["requires-python"]


def test_readme_gives_the_test_command():
    readme = (ROOT / "README.md").read_text()
    assert "pytest --nbval" in readme


def ci_commands():
    lines = (ROOT / ".ci" / "run").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]


def test_ci_runs_the_readme_command():
    assert "pytest --nbval" in ci_commands()


def test_ci_installs_pinned_torch_before_the_package():
    commands = ci_commands()
    torch_at = [i for i, c in enumerate(commands) if re.search(r"pip install .*\btorch==2\.13\.0\b", c)]
    package_at = [i for i, c in enumerate(commands) if re.search(r"pip install .*-e \"?\.(\[dev\])?\"?", c)]
    test_at = commands.index("pytest --nbval")
    assert torch_at, ".ci/run must install torch==2.13.0 (the CPU build) explicitly"
    assert package_at, ".ci/run must install the package with its dev extra"
    assert torch_at[0] < package_at[0] < test_at
    assert "[dev]" in commands[package_at[0]]


def test_every_subpackage_and_every_data_file_is_installed():
    """pyproject lists the packages (the data folder is mapped in, so discovery cannot be used): the list must
    hold every folder of minimistral/ with an __init__.py, and the package-data globs every file of data/."""
    from fnmatch import fnmatch
    tool = pyproject()["tool"]["setuptools"]
    on_disk = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "minimistral").rglob("__init__.py")}
    assert set(tool["packages"]) == on_disk | {"minimistral.data"}
    assert tool["package-dir"] == {"minimistral.data": "data"}
    globs = tool["package-data"]["minimistral.data"]
    files = [p.relative_to(ROOT / "data").as_posix() for p in (ROOT / "data").rglob("*") if p.is_file()]
    missed = [f for f in files if not any(fnmatch(f, g) for g in globs)]
    assert not missed, f"data files a wheel would leave out: {missed}; add them to package-data in pyproject.toml"


def test_data_folder_setting(tmp_path, monkeypatch):
    import pytest

    from minimistral import paths
    monkeypatch.delenv(paths.ENV_VAR, raising=False)
    assert paths.data_dir() == ROOT / "data"  # the checkout's, when the package is imported from it
    monkeypatch.setenv(paths.ENV_VAR, str(tmp_path))
    with pytest.raises(FileNotFoundError, match=f"{paths.ENV_VAR}=.*tokenizer.model"):
        paths.data_dir()
    (tmp_path / "tokenizer.model").write_bytes(b"")
    assert paths.data_dir() == tmp_path


def test_notebook_cleaner_drops_run_metadata_only(tmp_path):
    import subprocess
    import sys

    import nbformat
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("1 + 1"), nbformat.v4.new_markdown_cell("x")])
    nb.cells[0].metadata.update(execution={"iopub.status.busy": "2026-01-01T00:00:00Z"}, ExecuteTime={"end": 1},
                                nbgrader={"grade": True})
    path = tmp_path / "a.ipynb"
    nbformat.write(nb, path)
    tool = [sys.executable, str(ROOT / ".ci" / "clean_notebooks.py")]
    assert subprocess.run([*tool, "--check", str(path)], capture_output=True).returncode == 1
    assert subprocess.run([*tool, str(path)], capture_output=True).returncode == 0
    assert subprocess.run([*tool, "--check", str(path)], capture_output=True).returncode == 0
    cleaned = nbformat.read(path, as_version=4)
    assert cleaned.cells[0].metadata == {"nbgrader": {"grade": True}} and cleaned.cells[0].source == "1 + 1"
