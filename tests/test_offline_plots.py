"""`dvc plots show` through the configured offline template: no CDN, and the plots draw in a browser offline.

    python -m pytest tests/test_offline_plots.py
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tasks import offline_plots
from tests.browser import needs_chromium, open_page
from tests.conftest import ROOT, run

DVC_YAML = """plots:
  - loss.tsv:
      x: step
      y: loss
  - confusion.json:
      template: confusion
      x: predicted
      y: actual
"""
# Non-white pixels per canvas: a blank page (scripts missing) has no canvas at all,
# a failed render an empty one.
INK = """() => [...document.querySelectorAll(".vega-embed canvas.marks")].map(c => {
  const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
  let ink = 0;
  for (let i = 0; i < d.length; i += 4) if (d[i + 3] && (d[i] < 250 || d[i + 1] < 250 || d[i + 2] < 250)) ink++;
  return ink;
})"""


@pytest.fixture(scope="module")
def plots_repo(tmp_path_factory):
    """A git+DVC repo with the project's plots.html_template setting, its template built, and two tiny plots."""
    repo = tmp_path_factory.mktemp("plots-repo")
    run(["git", "init", "-q"], repo)
    run(["dvc", "init", "-q"], repo)
    setting = run(["dvc", "config", "--project", "plots.html_template"], ROOT).stdout.strip()
    run(["dvc", "config", "plots.html_template", setting], repo)
    offline_plots.build(offline_plots.template_path(repo))
    (repo / "dvc.yaml").write_text(DVC_YAML)
    (repo / "loss.tsv").write_text("step\tloss\n0\t2.3\n1\t1.1\n2\t0.6\n3\t0.4\n")
    pairs = [(a, p) for a in range(3) for p in range(3) for _ in range(1 + 3 * (a == p))]
    (repo / "confusion.json").write_text(json.dumps([{"actual": a, "predicted": p} for a, p in pairs]))
    return repo


def test_committed_config_names_a_gitignored_template_in_the_repo():
    path = offline_plots.template_path(ROOT)
    assert path.is_relative_to(ROOT) and not path.is_relative_to(ROOT / ".dvc" / "tmp")
    run(["git", "check-ignore", "-q", str(path)], ROOT)  # fails unless gitignored


def test_build_is_idempotent_and_says_what_to_run_without_npm(plots_repo, tmp_path, monkeypatch):
    template = offline_plots.template_path(plots_repo)
    assert offline_plots.is_current(template)
    assert offline_plots.build(template) is False  # no npm call: nothing to do
    monkeypatch.setenv("PATH", str(tmp_path))  # no npm here
    with pytest.raises(offline_plots.SetupError, match=r"npm not found.*python -m tasks.offline_plots"):
        offline_plots.build(tmp_path / "new.html")
    assert not (tmp_path / "new.html").exists()


def test_without_npm_setup_goes_on_and_plots_load_vega_from_dvcs_cdn(plots_repo, tmp_path):
    """A machine with only Python, git and make: `make setup` must not stop `make run` for want of npm. On
    PATH here: a folder with git alone, and the virtualenv's bin (python, dvc; no npm), as the Makefile's."""
    bare = tmp_path / "bin"
    bare.mkdir()
    (bare / "git").symlink_to(shutil.which("git"))
    env = os.environ | {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{bare}", "PYTHONPATH": str(ROOT)}
    assert shutil.which("npm", path=env["PATH"]) is None
    repo = tmp_path / "repo"
    shutil.copytree(plots_repo, repo, ignore=shutil.ignore_patterns("dvc_plots"))
    template = offline_plots.template_path(repo)
    template.unlink()  # as in a fresh clone
    res = subprocess.run([sys.executable, "-m", "tasks.offline_plots"], cwd=repo, env=env, capture_output=True,
                         text=True)
    said = (res.stdout + res.stderr).strip().splitlines()
    assert res.returncode == 0 and len(said) == 1, said  # one line: how to get the offline page later
    assert "install npm" in said[0] and "python -m tasks.offline_plots" in said[0]
    page = template.read_text()
    assert "{scripts}" in page and "{plot_divs}" in page and not offline_plots.is_current(template)
    shown = subprocess.run(["dvc", "plots", "show"], cwd=repo, env=env, capture_output=True, text=True)
    assert shown.returncode == 0, shown.stderr
    html = (repo / "dvc_plots" / "index.html").read_text()
    assert re.search(r"<script[^>]*\ssrc\s*=\s*[\"']?https://[^\"']*vega", html)  # DVC's CDN tags
    assert html.count("vegaEmbed('#") == 2
    assert offline_plots.build(template) is True  # with npm (this PATH): the offline page replaces it
    assert offline_plots.is_current(template)


@pytest.fixture(scope="module")
def plots_html(plots_repo):
    """What a plain `dvc plots show` wrote (no --html-template: the config names it)."""
    out = run(["dvc", "plots", "show"], plots_repo).stdout
    assert "index.html" in out, out
    return plots_repo / "dvc_plots" / "index.html"


def test_page_inlines_vega_and_loads_nothing_remote(plots_html):
    html = plots_html.read_text()
    assert not re.search(r"<script[^>]*\ssrc\s*=\s*[\"']?(https?:)?//", html, re.I)
    assert "cdn.jsdelivr.net" not in html
    for p in offline_plots.PACKAGES:
        assert f"/* {p.name}@{p.version} */" in html
    assert html.count("vegaEmbed('#") == 2  # one call per plot, from dvc-render


@pytest.mark.browser
@needs_chromium
def test_page_renders_offline(plots_html, tmp_path):
    with open_page(plots_html.as_uri()) as page:
        # vega's drawing surface has class "marks"; the actions menu ("...") has an svg of its own
        page.page.wait_for_function("document.querySelectorAll('.vega-embed .marks').length == 2", timeout=10_000)
        ink = page.page.evaluate(INK)
        mode = page.page.evaluate("document.compatMode")
        page.screenshot(tmp_path / "plots.png")
        assert page.blocked == []
    assert mode == "CSS1Compat"  # standards mode: the stamp comment sits after the doctype
    assert len(ink) == 2 and min(ink) > 500, ink
