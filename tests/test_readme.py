"""The README is true: every shell block it shows runs, in order, in a fresh clone, and exits 0.

    python -m pytest -m slow tests/test_readme.py     # about 3 minutes on 2 cores

A block is a fenced ```bash, ```sh or ```console block (of a console block, the
`$ ` lines). One that cannot run here (a GPU, several machines, a server that
runs until stopped, `make run` and `make test` themselves) carries a visible
marker on the line before it, `<!-- not run by tests: REASON -->`; every other
block runs, as a user would type it after `make run`'s setup, with bash's
`-e` (a failing line fails its block). The own-data snippets (YAML) are
checked too: each example source, ingested with its snippet, meets its
contract; and the label budget's, on the shipped digits (a fast test).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import GIT_ENV, ROOT, run

README = ROOT / "README.md"
FENCE = re.compile(r"^```(\w*)[ \t]*\n(.*?)^```[ \t]*$", re.M | re.S)
MARKER = re.compile(r"<!--\s*not run by tests:\s*(.*?)\s*-->")
SHELL = ("bash", "sh", "console")
PORT = "29797"  # train.master_port for this clone's runs (DAGTRAIN_MASTER_PORT): no other test's


def blocks(text: str) -> list[dict]:
    """Every fenced block: its language, first line number, code (for console, the commands), and the reason
    it is not run (the marker on the line before it), or None."""
    found = []
    for m in FENCE.finditer(text):
        before = text[:m.start()].rstrip("\n").rsplit("\n", 1)[-1]
        marker = MARKER.fullmatch(before.strip())
        code = m[2]
        if m[1] == "console":
            code = "\n".join(line[2:] for line in code.splitlines() if line.startswith("$ "))
        found.append({"lang": m[1], "line": text[:m.start()].count("\n") + 1, "code": code,
                      "skip": marker[1] if marker else None})
    return found


def shell_blocks() -> list[dict]:
    return [b for b in blocks(README.read_text()) if b["lang"] in SHELL]


def test_every_shell_block_runs_or_says_why_not():
    text = README.read_text()
    shell = shell_blocks()
    assert len(shell) >= 8
    for b in shell:
        assert b["skip"] is None or len(b["skip"]) > 10, b  # a reason, not a bare marker
    markers = len(MARKER.findall(text))
    assert markers == sum(b["skip"] is not None for b in blocks(text)), "a marker not right before a block"
    assert any("make run" in b["code"] and b["skip"] for b in shell)
    runnable = [b for b in shell if b["skip"] is None]
    assert any(b["code"].lstrip().startswith("dvc repro") for b in runnable)


def test_git_notes_of_a_version_name_its_commit():
    """A version's tag is annotated; its notes hang on the commit, which only `TAG^{}` names."""
    uses = re.findall(r"git notes [^`\n]*", README.read_text())
    assert uses
    for use in uses:
        for spec in re.findall(r"\S*@v\d+\.\d+\.\d+\S*", use):
            assert spec.strip("'\"").endswith("^{}"), use


def fresh_clone(dest: Path) -> Path:
    """A git clone of the project as it stands (its files as `git ls-files` sees them, committed in a
    repo of their own, then cloned), without a run of its own."""
    src = dest.parent / "origin"
    files = run(["git", "ls-files", "-co", "--exclude-standard"], ROOT).stdout.split()
    for f in files:
        if (ROOT / f).is_file():
            (src / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / f, src / f)
    run(["git", "init", "-q", "-b", "main"], src)
    run(["git", "add", "-A"], src)
    run(["git", "commit", "-qm", "initial"], src)
    run(["git", "clone", "-q", str(src), str(dest)], dest.parent)
    return dest


def env() -> dict:
    """The README's reader's shell: the virtualenv's bin first on PATH, as after `source .venv/bin/activate`."""
    return os.environ | GIT_ENV | {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
                                   "DAGTRAIN_MASTER_PORT": PORT}


@pytest.fixture(scope="module")
def clone(tmp_path_factory) -> Path:
    """A fresh clone in which every runnable block ran, in the README's order."""
    repo = fresh_clone(tmp_path_factory.mktemp("readme") / "clone")
    # `make run`'s setup, less the virtualenv: the plot page template (the offline one, or DVC's CDN page)
    run([sys.executable, "-m", "tasks.offline_plots"], repo, env=env())
    for b in shell_blocks():
        if b["skip"]:
            continue
        res = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", b["code"]], cwd=repo, env=env(),
                             capture_output=True, text=True, timeout=420)
        assert res.returncode == 0, (f"README.md line {b['line']}: the block exits {res.returncode}\n{b['code']}\n"
                                     f"--- stdout ---\n{res.stdout[-3000:]}\n--- stderr ---\n{res.stderr[-3000:]}")
    return repo


@pytest.mark.slow
def test_the_readmes_commands_run_in_a_fresh_clone(clone):
    tags = run(["git", "tag"], clone).stdout.split()
    assert {"digits@v0.0.1", "digits@v0.0.2"} <= set(tags)  # the registry's examples had their versions
    assert (clone / "predictions.parquet").exists() and (clone / "m.safetensors").exists()


def snippets(marker: str = "data/sources/") -> list[tuple[str, dict]]:
    """The YAML snippets of the one block that holds `marker` (by default the own-data block, whose snippets
    name the example sources): (heading, keys); a `# ...` variant keeps its kind's data and contract."""
    (block,) = [b for b in blocks(README.read_text()) if b["lang"] == "yaml" and marker in b["code"]]
    parts = re.split(r"^(# .*)\n", block["code"], flags=re.M)[1:]
    return [(head, yaml.safe_load(body)) for head, body in zip(parts[::2], parts[1::2]) if not head.startswith("# ...")]


def merge(into: dict, keys: dict) -> dict:
    """`into` with `keys` set, nested sections merged key by key."""
    for k, v in keys.items():
        into[k] = merge(dict(into.get(k) or {}), v) if isinstance(v, dict) and isinstance(into.get(k), dict) else v
    return into


def with_snippet(params: dict, snippet: dict) -> dict:
    """params.yaml with a snippet's keys set, as the README says: contract replaced whole, the rest merged."""
    out = merge(dict(params), {k: v for k, v in snippet.items() if k != "contract"})
    return out | ({"contract": snippet["contract"]} if "contract" in snippet else {})


def test_the_label_budget_snippets_ingest_the_digits(tmp_path):
    """The label budget's snippets, set on top of params.yaml (the contract's keys merged too, as the README
    says), take the shipped digits through the whole gate: the classes 0-4 whole, then 10 rows of each of 5-9."""
    from tasks.ingest import ingest
    from tasks.params import load_params

    found = snippets("sample_seed:")
    assert [h.split(":")[0] for h, _ in found] == ["# pretrain", "# fine-tune"]
    for (head, snippet), classes in zip(found, (range(5), range(5, 10))):
        (tmp_path / "params.yaml").write_text(yaml.safe_dump(merge(yaml.safe_load((ROOT / "params.yaml").read_text()),
                                                                   snippet)))
        p = load_params(tmp_path / "params.yaml")
        m = ingest(p.ingest, p.contract, tmp_path / "raw.parquet", tmp_path / "manifest.json",
                   tmp_path / "contract.json", clean=p.clean)
        labels = m["profile"]["labels"]
        assert sorted(labels) == [str(c) for c in classes] and m["selection"]["rows_before"] == 1797, head
        assert all(n == 10 for n in labels.values()) if p.ingest.per_class else min(labels.values()) > 170, head


@pytest.mark.slow
def test_each_example_source_meets_the_contract_of_its_snippet(clone, tmp_path):
    """The example sources the README's block wrote, each ingested with its snippet: a pass, where the
    digits' own contract refuses the table."""
    params = yaml.safe_load((clone / "params.yaml").read_text())
    found = snippets()
    assert len(found) == 4, [h for h, _ in found]
    digits_contract = {k: v for k, v in found[1][1].items() if k != "contract"}  # its data, the digits' contract
    for i, (head, snippet) in enumerate(found + [("the digits' contract", digits_contract)]):
        work = tmp_path / f"kind{i}"
        (work / "data").mkdir(parents=True)
        (work / "data/sources").symlink_to(clone / "data/sources")
        (work / "params.yaml").write_text(yaml.safe_dump(with_snippet(params, snippet), sort_keys=False))
        res = run([sys.executable, "-m", "tasks.ingest"], work, check=False, env=env() | {"PYTHONPATH": str(clone)})
        if head == "the digits' contract":  # the table against the digits' contract: refused, and why
            out = res.stdout + res.stderr  # refused by the contract, not by params that do not load
            assert res.returncode != 0 and "the data contract failed" in out and "at least 500 required" in out, out
        else:
            assert res.returncode == 0, f"{head}\n{res.stdout[-2000:]}\n{res.stderr[-2000:]}"
