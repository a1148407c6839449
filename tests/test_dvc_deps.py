"""dvc.yaml sees everything a stage depends on: every project module its command imports is a dep.

A stage's command is `python -m <module>`; its closure is every project module
(tasks, models, flows) that module imports, directly or through other project
modules, at the top or inside a function (found in the source, so a module
imported only on one path counts too). A dep covers a module when it names the
file or a folder above it. A module missing from the deps means an edit to it
reruns nothing (and `python -m flows.plan` says "up to date"), so this fails,
naming the stage and the module.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT

PROJECT = ("tasks", "models", "flows")


def module_file(name: str, root: Path = ROOT) -> Path | None:
    """The source file of a project module (a package's __init__.py), or None for a namespace package."""
    base = root.joinpath(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def imported_modules(path: Path, root: Path = ROOT) -> set[str]:
    """Every project module the file imports, anywhere in it (`from a import b` counts a.b when b is a module)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        for name in names:
            if name.split(".")[0] in PROJECT:
                parts = name.split(".")  # importing a.b.c runs a/__init__ and a/b/__init__ too
                found |= {".".join(parts[:i]) for i in range(1, len(parts) + 1)}
    return {n for n in found if module_file(n, root)}


def closure(module: str, root: Path = ROOT) -> set[Path]:
    """The files of `module` and of every project module it imports, transitively."""
    seen, todo = set(), [module]
    while todo:
        name = todo.pop()
        path = module_file(name, root)
        if name in seen or path is None:
            continue
        seen.add(name)
        todo.extend(imported_modules(path, root))
    return {module_file(n, root).relative_to(root) for n in seen}


def missing_deps(dvc_yaml: dict, root: Path = ROOT) -> dict[str, list[str]]:
    """{stage: [module files its command imports that no dep covers]}."""
    out = {}
    for name, stage in dvc_yaml["stages"].items():
        words = stage["cmd"].split()
        module = words[words.index("-m") + 1]
        deps = [Path(d) for d in stage.get("deps", []) if "${" not in str(d)]
        missing = [str(f) for f in sorted(closure(module, root)) if not any(f == d or d in f.parents for d in deps)]
        if missing:
            out[name] = missing
    return out


def test_every_module_a_stage_imports_is_one_of_its_deps():
    missing = missing_deps(yaml.safe_load((ROOT / "dvc.yaml").read_text()))
    assert not missing, "dvc.yaml: stage deps miss modules their command imports: " + "; ".join(
        f"{stage}: {', '.join(files)}" for stage, files in missing.items())


def test_the_closure_follows_imports_inside_functions_and_through_packages(tmp_path):
    (tmp_path / "tasks" / "pkg").mkdir(parents=True)
    (tmp_path / "models").mkdir()
    (tmp_path / "tasks" / "stage.py").write_text("import os\nfrom tasks.pkg import helper\n")  # no tasks/__init__
    (tmp_path / "tasks" / "pkg" / "__init__.py").write_text("from tasks.pkg import helper\n")
    (tmp_path / "tasks" / "pkg" / "helper.py").write_text("def f():\n    from models import net\n")
    (tmp_path / "models" / "net.py").write_text("WIDTH = 8\n")
    (tmp_path / "tasks" / "unused.py").write_text("")
    assert closure("tasks.stage", tmp_path) == {Path("tasks/stage.py"), Path("tasks/pkg/__init__.py"),
                                                Path("tasks/pkg/helper.py"), Path("models/net.py")}
    dvc = {"stages": {"stage": {"cmd": "python -m tasks.stage", "deps": ["tasks/stage.py", "tasks/pkg"]}}}
    assert missing_deps(dvc, tmp_path) == {"stage": ["models/net.py"]}


@pytest.mark.parametrize("stage", ["ingest", "clean", "augment", "train", "evaluate", "register"])
def test_each_stage_of_the_dag_is_checked(stage):
    assert stage in yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


SECTIONS = ("ingest", "contract", "clean", "augment", "train", "evaluate", "register")


def params_read(module: str, root: Path = ROOT) -> set[str]:
    """The params sections or keys a stage reads: `p.<section>[.<key>[.<key>]]` in its module and in the modules of
    its closure that take the whole params (`p: Params`)."""
    found = set()
    for f in closure(module, root):
        text = (root / f).read_text()
        if f == Path(*module.split(".")).with_suffix(".py") or "p: Params" in text:
            found |= {m.group(1).rstrip("_")  # from_ is the `from` key (a Python keyword)
                      for m in re.finditer(rf"\bp\.((?:{'|'.join(SECTIONS)})(?:\.[a-z_]+){{0,2}})\b", text)}
    return found


def test_every_params_key_a_stage_reads_is_one_of_its_params():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    missing = {}
    for name, stage in stages.items():
        declared = set(stage.get("params", []))
        words = stage["cmd"].split()
        read = params_read(words[words.index("-m") + 1])
        gaps = sorted(k for k in read if not any(k == d or k.startswith(d + ".") for d in declared))
        if gaps:
            missing[name] = gaps
    assert not missing, f"dvc.yaml: stages read params DVC does not track: {missing}"
