"""What an unattended run leaves: overrides checked and undone, commits on a branch, one slot per hardware."""

import shutil
import subprocess
import threading
import time

import pytest
import yaml

from flows import trace
from tasks.errors import InputError
from tasks.registry.git import commit_paths, git
from tests.conftest import GIT_ENV, ROOT


@pytest.fixture
def repo(tmp_path, monkeypatch):
    for k, v in GIT_ENV.items():
        monkeypatch.setenv(k, v)
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    subprocess.run(["git", "init", "-q", "-b", "main"], cwd=tmp_path, check=True)
    subprocess.run(["git", "add", "-A"], cwd=tmp_path, check=True)
    subprocess.run(["git", "commit", "-qm", "initial"], cwd=tmp_path, check=True)
    return tmp_path


def test_overrides_set_keys_keep_comments_and_come_back_byte_for_byte(repo):
    original = (repo / "params.yaml").read_text()
    assert trace.apply_overrides(repo, {"train.epochs": 3, "train.optimizer.lr": 0.01}) == original
    text = (repo / "params.yaml").read_text()
    params = yaml.safe_load(text)
    assert (params["train"]["epochs"], params["train"]["optimizer"]["lr"]) == (3, 0.01)
    assert "# Every parameter of the pipeline" in text  # comments kept
    changed = [a for a, b in zip(original.splitlines(), text.splitlines(), strict=True) if a != b]
    assert len(changed) == 2, changed  # only the two lines
    trace.restore_params(repo, original, "run-1")
    assert (repo / "params.yaml").read_text() == original


@pytest.mark.parametrize("overrides, named", [
    ({"train.epoch": 3}, "'train.epoch'"),                  # a key params.yaml does not have
    ({"train.epochs": "many"}, "train.epochs"),             # the typed params refuse the value
    ({"nosuch.section.key": 1}, "'nosuch.section.key'"),
])
def test_a_bad_override_is_refused_by_name_and_params_stay(repo, overrides, named):
    original = (repo / "params.yaml").read_text()
    with pytest.raises(InputError, match=named.replace(".", r"\.")):
        trace.apply_overrides(repo, overrides)
    assert (repo / "params.yaml").read_text() == original


def test_runs_commit_on_their_branch_only_what_they_name(repo):
    assert trace.switch_branch(repo, "pipeline-runs") == "main"
    (repo / "metrics.json").write_text("{}")
    (repo / "notes.txt").write_text("the user's own file")
    sha = commit_paths(repo, "Pipeline run x", ["metrics.json"])
    assert git("rev-parse", "pipeline-runs", cwd=repo) == sha
    assert git("show", "--name-only", "--format=", sha, cwd=repo) == "metrics.json"
    assert commit_paths(repo, "nothing new", ["metrics.json"]) is None
    assert trace.switch_branch(repo, "pipeline-runs") == "pipeline-runs"  # already there: stays
    with pytest.raises(InputError, match="not a valid git branch name"):
        trace.switch_branch(repo, "bad..name")


def test_push_sends_the_branch_tags_and_registry_notes(repo, tmp_path_factory):
    origin, storage = tmp_path_factory.mktemp("origin") / "repo.git", tmp_path_factory.mktemp("storage")
    subprocess.run(["git", "init", "-q", "--bare", str(origin)], check=True)
    for cmd in (["dvc", "init", "-q"], ["dvc", "remote", "add", "-d", "storage", str(storage)],
                ["git", "add", "-A"], ["git", "commit", "-qm", "dvc"], ["git", "remote", "add", "origin", str(origin)],
                ["git", "tag", "digits@v0.0.1"], ["git", "notes", "--ref=registry", "add", "-m", "{}"]):
        subprocess.run(cmd, cwd=repo, check=True, capture_output=True)
    trace.push(repo, None, "origin", "main")
    refs = {line.split()[1] for line in git("ls-remote", str(origin), cwd=repo).splitlines()}
    assert {"refs/heads/main", "refs/tags/digits@v0.0.1", "refs/notes/registry"} <= refs


def test_two_trainings_never_hold_the_hardware_at_once(prefect_server):
    from flows.pipeline import slot

    spans = []

    def training():
        with slot("test-hardware"):
            start = time.monotonic()
            time.sleep(1.5)
            spans.append((start, time.monotonic()))

    threads = [threading.Thread(target=training) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    (a_start, a_end), (b_start, _) = sorted(spans)
    assert b_start >= a_end  # the second waited for the first
