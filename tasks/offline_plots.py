"""offline_plots: an HTML page template for `dvc plots show` that renders without internet.

    python -m tasks.offline_plots     # from the repo root; `make setup` runs it (instant once built)
    dvc plots show                    # then uses the template, through .dvc/config

DVC's own page loads vega, vega-lite and vega-embed from a CDN, so offline it
renders blank. This writes a template (`{plot_divs}` in a page that carries the
three libraries inline, and no `{scripts}` placeholder, which is where DVC puts
its CDN tags) to the path that `plots.html_template` names in .dvc/config.
DVC resolves a relative path there against .dvc/, not the repo root; so does
this module, through DVC's own config reader. When that file is missing, DVC
takes the path itself for the page and fails with "HTML template has to contain
'{plot_divs}'": run this module.

Without npm (a machine with only Python, git and make) this is no reason to
stop `make run`: the template written then is DVC's own page (dvc-render's,
`{scripts}` and all), so `dvc plots show` works as it does without a
template, its pages loading vega from DVC's CDN (they render online only), and
one line says how to get the offline page later: install npm, run this module.
A later run with npm replaces it (its stamp says it is the CDN page).

The JavaScript is third-party code: it is never committed. It comes from the
npm registry at setup time (`npm pack`, exact versions, each tarball checked
against the integrity hash pinned below), and the template is gitignored.
Versions: the majors dvc-render's page loads (vega 5, vega-lite 5, vega-embed 6;
its plot templates declare the vega-lite v5 schema), at their latest releases.
vega 6 ships no browser bundle that sets a global, so it would not fit.
"""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import NamedTuple


class Package(NamedTuple):
    name: str
    version: str
    script: str  # the browser bundle inside the tarball; defines a global (vega, vegaLite, vegaEmbed)
    integrity: str  # npm's dist.integrity: sha512 of the tarball


# In load order: vega-lite needs the vega global, vega-embed needs both.
PACKAGES = (
    Package("vega", "5.33.1", "package/build/vega.min.js",
            "sha512-1fArfVDUqVbb5z8n+/nVQb+VNBzx8svY6CrsyTK4Ujm4yrd9I1auoKxBAPXLCavY1LcrbHUskQbGUP8gXOzyQw=="),
    Package("vega-lite", "5.23.0", "package/build/vega-lite.min.js",
            "sha512-l4J6+AWE3DIjvovEoHl2LdtCUkfm4zs8Xxx7INwZEAv+XVb6kR6vIN1gt3t2gN2gs/y4DYTs/RPoTeYAuEg6mA=="),
    Package("vega-embed", "6.29.0", "package/build/vega-embed.min.js",
            "sha512-PmlshTLtLFLgWtF/b23T1OwX53AugJ9RZ3qPE2c01VFAbgt3/GSNI/etzA/GzdrkceXFma+FDHNXUppKuM0U6Q=="),
)
# Second line of the template (after the doctype): a template that has it is up to date.
STAMP = "<!-- offline-plots: " + " ".join(f"{p.name}@{p.version}" for p in PACKAGES) + " -->"
# What dvc-render replaces with str.replace in the whole page, inlined code included.
DOCTYPE = "<!DOCTYPE html>"
PLACEHOLDERS = ("{plot_divs}", "{scripts}", "{refresh_tag}")
RERUN = "then run `python -m tasks.offline_plots` again"

PAGE_HEAD = """<html>
<head>
    {refresh_tag}
    <meta charset="utf-8">
    <title>DVC Plot</title>
    <style>
        table {
            border-spacing: 15px;
        }
    </style>
"""
PAGE_TAIL = """</head>
<body>
    {plot_divs}
</body>
</html>
"""


CDN_STAMP = "<!-- offline-plots: none, vega from DVC's CDN (install npm, run `python -m tasks.offline_plots`) -->"


class SetupError(RuntimeError):
    """The template cannot be built; the message says what to do."""


class NoNpm(SetupError):
    """npm is not installed: the page can load vega from DVC's CDN meanwhile."""


def template_path(repo: Path) -> Path:
    """Where DVC looks for the page template: `plots.html_template` in .dvc/config, relative to .dvc/."""
    from dvc.config import Config

    dvc_dir = repo / ".dvc"
    if not dvc_dir.is_dir():
        raise SetupError(f"no .dvc/ folder in {repo}: run this from the repo root")
    value = Config(dvc_dir=str(dvc_dir)).get("plots", {}).get("html_template")
    if not value:
        raise SetupError(f"plots.html_template is not set in {dvc_dir / 'config'}: "
                         "run `dvc config plots.html_template ../.cache/offline-plots/template.html`")
    return (dvc_dir / value).resolve()


def is_current(dest: Path) -> bool:
    """Whether dest is a template built from exactly the pinned packages."""
    try:
        with dest.open(encoding="utf8") as f:
            return [f.readline().rstrip("\n") for _ in range(2)] == [DOCTYPE, STAMP]
    except FileNotFoundError:
        return False


def fetch(folder: Path) -> dict[str, str]:
    """`npm pack` the pinned packages into folder; each one's browser bundle, checked against its pin."""
    npm = shutil.which("npm")
    if npm is None:
        raise NoNpm(f"npm not found: install Node.js and npm (Debian: `apt-get install -y nodejs npm`), {RERUN}")
    specs = [f"{p.name}@{p.version}" for p in PACKAGES]
    cmd = [npm, "pack", "--ignore-scripts", "--pack-destination", str(folder), *specs]
    res = subprocess.run(cmd, cwd=folder, capture_output=True, text=True, timeout=300)
    if res.returncode != 0:
        raise SetupError(f"`npm pack {' '.join(specs)}` failed ({res.returncode}):\n{res.stderr.strip()[-2000:]}\n"
                         f"Check that the npm registry is reachable (`npm config get registry`), {RERUN}")
    scripts = {}
    for p in PACKAGES:
        tarball = folder / f"{p.name}-{p.version}.tgz"
        digest = "sha512-" + base64.b64encode(hashlib.sha512(tarball.read_bytes()).digest()).decode()
        if digest != p.integrity:
            raise SetupError(f"{tarball.name} from the registry has integrity {digest}, expected {p.integrity}")
        with tarfile.open(tarball) as tar:
            scripts[p.name] = tar.extractfile(p.script).read().decode("utf8")
    return scripts


def page(scripts: dict[str, str]) -> str:
    """The template: DVC's own page, stamped, with the scripts inline instead of `{scripts}`."""
    blocks = []
    for p in PACKAGES:
        code = scripts[p.name]
        if "</script" in code.lower() or any(ph in code for ph in PLACEHOLDERS):
            raise SetupError(f"{p.name}@{p.version}'s {p.script} cannot be inlined: it contains "
                             f"`</script` or one of DVC's placeholders {PLACEHOLDERS}")
        blocks.append(f'    <script type="text/javascript">/* {p.name}@{p.version} */\n{code}\n    </script>\n')
    return DOCTYPE + "\n" + STAMP + "\n" + PAGE_HEAD + "".join(blocks) + PAGE_TAIL


def build(dest: Path) -> bool:
    """Write the template to dest unless it is already current; True if it was (re)written."""
    if is_current(dest):
        return False
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="offline-plots-") as tmp:
        html = page(fetch(Path(tmp)))
    partial = dest.with_name(dest.name + ".partial")
    partial.write_text(html, encoding="utf8")
    os.replace(partial, dest)  # never a half-written template where DVC reads it
    return True


def write_cdn_page(dest: Path) -> None:
    """DVC's own page (dvc-render's template: DVC fills `{scripts}` with its CDN tags), stamped as such."""
    from dvc_render.html import PAGE_HTML

    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_name(dest.name + ".partial")
    partial.write_text(PAGE_HTML.replace(DOCTYPE, DOCTYPE + "\n" + CDN_STAMP, 1), encoding="utf8")
    os.replace(partial, dest)


def main() -> None:
    try:
        dest = template_path(Path.cwd())
        wrote = build(dest)
    except NoNpm:
        write_cdn_page(dest)
        print("offline_plots: npm not found, so `dvc plots show` pages load vega from a CDN and render online "
              "only; for pages that render offline, install npm and run `python -m tasks.offline_plots`", flush=True)
        return
    except SetupError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.exit(1)
    print(f"{'wrote' if wrote else 'up to date:'} {dest}")


if __name__ == "__main__":
    main()
