"""The three widgets working in JupyterLab, screenshotted (issue 35): a run's files, a live kernel,
a real browser, and each control moved once.

    python tools/lab_screenshot.py runs/RUN [--out docs/widgets] [--port 8899]

Writes ``RUN/lab/widgets.ipynb``: the three widget cells of notebooks 02, 03 and 05
(:mod:`wildlib.widgets`: the sparsity slider over global L1 and LAMP, the bits slider over one
layer's weights, the detections viewer over the stored `test` detections), each on the finished
run's own files (stage 01's baseline, stage 02's pruned model, stage 05's detections), with no
stage written.  Starts JupyterLab on it (a token of its own, localhost only), opens it in headless
Chromium (Debian's ``/usr/bin/chromium``, driven by Playwright: ``pip install playwright``, no
browser download), runs every cell with the kernel ``python3``, then moves each widget's control
one step (the sparsity to 85%, the bits to 4, the viewer to the baseline) and waits for the figure
each redraws.  Saves one PNG per widget (its cell after the move: the redrawn figure above the
static one of its default; before the move, in ``RUN/lab``) and the page in ``--out``, checks
that each redrawn figure is another image than the default's (a control that redraws nothing new
fails here: exit 1), and stops the server.

Playwright is a tool of this script only (not in environment.yml): papermill runs and the tests
never need a browser for the widgets, whose static figures are what a run keeps.
"""

from __future__ import annotations

import argparse
import os
import secrets
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nbformat

from wildlib import io

SETUP = """\
from pathlib import Path
import wildlib as wl
import wildlib.data, wildlib.prune, wildlib.stages, wildlib.widgets
run = Path({run!r}).resolve()
classes, aliases = wl.stages.classes_for(run)
baseline = wl.stages.load_stage(run / wl.stages.BASELINE, wl.stages.MODEL_FILE).model
pruned = wl.stages.load_stage(run / wl.stages.PRUNE, wl.stages.PRUNED_FILE).model"""

WIDGETS = {  # name -> (the cell, as its notebook calls it, what the control is moved to)
    "sparsity_slider": ("""\
ranked = wl.prune.ranked_scores(baseline, "all")  # notebook 02, section 2
fig, slider = wl.widgets.sparsity_slider(ranked, 0.8, frontier_csv=run.parent / "sweeps" / "frontier" / "summary.csv")
slider""", "sparsity 85%"),
    "bits_slider": ("""\
name, layer = max(wl.prune.prunable(pruned, "all"), key=lambda nm: int(nm[1].weight.count_nonzero()))  # notebook 03
fig, slider = wl.widgets.bits_slider(layer.weight.detach().numpy(), name, bits=5)
slider""", "bits 4"),
    "detections_viewer": ("""\
split = wl.stages.metrics_of(run, wl.stages.EVALUATE).evaluation_split  # notebook 05
records = wl.data.load_split(wl.stages.data_dir_for(run), split, classes, aliases=aliases)
stored = {p.stem: p for p in sorted((run / wl.stages.EVALUATE / wl.stages.DETECTIONS_DIR).glob("*.json"))
          if not p.name.endswith(".source.json")}
fig, viewer = wl.widgets.detections_viewer(records, stored, classes, variant="channel-pruned-int8-test-time-04", score=0.5)
viewer""", "variant baseline"),
}


def widget_notebook(run: Path) -> nbformat.NotebookNode:
    """The notebook the browser runs: the set-up, then one markdown title and one cell per widget."""
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_markdown_cell(f"# The widgets of run `{run.name}` (tools/lab_screenshot.py)"),
                nbformat.v4.new_code_cell(SETUP.format(run=str(run)))]
    for name, (code, _) in WIDGETS.items():
        nb.cells += [nbformat.v4.new_markdown_cell(f"## {name}"), nbformat.v4.new_code_cell(code)]
    return nb


def wait_for_server(url: str, timeout: float = 120.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            with urllib.request.urlopen(url, timeout=5):
                return
        except OSError:
            time.sleep(1)
    raise TimeoutError(f"JupyterLab did not answer at {url} within {timeout:.0f} s")


def move(page, cell, how: str) -> None:
    """Move the widget control of ``cell`` as ``how`` says (``WIDGETS``' third entry)."""
    what, value = how.split(" ", 1)
    if what == "variant":
        cell.locator("select").select_option(label=value)
        return
    handle = cell.locator(".noUi-handle, .ui-slider-handle, [role=slider]").first
    handle.focus()
    readout = cell.locator(".widget-readout").first
    for _ in range(12):  # arrow keys step the slider; stop at the value asked for
        text = readout.inner_text().strip() if readout.count() else ""
        if text == value:
            return
        start = float(text.rstrip("%")) if text else 0.0
        handle.press("ArrowRight" if float(value.rstrip("%")) > start else "ArrowLeft")
        page.wait_for_timeout(300)
    raise RuntimeError(f"{what}: could not set the slider to {value} (reads {readout.inner_text()!r})")


def screenshots(url: str, out: Path, before_dir: Path, timeout_ms: int = 180_000) -> dict:
    """Run the notebook at ``url`` in headless Chromium; per widget a PNG of its cell before its
    control moved (``before_dir/<name>_before.png``) and after (``out/<name>_after.png``: the figure
    the control redrew above the static figure of its default), and the page (``out/lab_page.png``)."""
    from playwright.sync_api import sync_playwright  # a heavy optional dependency, only this tool needs it

    shots = {}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=os.environ.get("CHROMIUM", "/usr/bin/chromium"),
                                    args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000}, device_scale_factor=1)
        page.set_default_timeout(timeout_ms)
        page.goto(url)
        page.wait_for_selector(".jp-Notebook .jp-Cell")
        page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle'], "
                               ".jp-Toolbar-kernelStatus, .jp-KernelStatus", state="attached")
        select = page.get_by_role("button", name="Select", exact=True)  # "Select Kernel", where it asks
        try:
            select.wait_for(timeout=30_000)
            select.click()
        except Exception:  # playwright's TimeoutError: the kernel started without asking
            pass
        page.get_by_role("menuitem", name="Run", exact=True).click()
        page.get_by_text("Run All Cells", exact=True).click()
        cells = page.locator(".jp-CodeCell")
        try:
            _each_widget(page, cells, out, shots, before_dir)
        except Exception:
            page.screenshot(path=str(before_dir / "failed_page.png"))  # what the browser showed when it gave up
            raise
        page.screenshot(path=str(out / "lab_page.png"), full_page=False)
        browser.close()
    return shots


def _each_widget(page, cells, out: Path, shots: dict, before_dir: Path) -> None:
    """Per widget: its cell screenshotted, its control moved, the figure it redraws awaited and
    compared with the static figure of its default (the same image: the control redrew nothing)."""
    for i, (name, (_, how)) in enumerate(WIDGETS.items(), start=1):
        cell = cells.nth(i)
        cell.locator(".widget-vbox").first.wait_for()
        cell.scroll_into_view_if_needed()
        before = before_dir / f"{name}_before.png"
        cell.screenshot(path=str(before))
        images = cell.locator("img")
        static = images.first.get_attribute("src")  # the default's figure, above the widget
        move(page, cell, how)
        redrawn = cell.locator(".widget-output img").first
        redrawn.wait_for()
        page.wait_for_timeout(500)
        after = out / f"{name}_after.png"
        cell.screenshot(path=str(after))
        shots[name] = {"moved": how, "before": before.name, "after": after.name,
                       "redrew": redrawn.get_attribute("src") != static}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run_dir")
    ap.add_argument("--out", default="docs/widgets")
    ap.add_argument("--port", type=int, default=8899)
    a = ap.parse_args(argv)
    root = Path.cwd().resolve()
    run = Path(a.run_dir).resolve()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    lab = Path(a.run_dir) / "lab"
    io.write_text(lab / "widgets.ipynb", nbformat.writes(widget_notebook(run)))
    token = secrets.token_hex(16)
    settings = lab / "lab-settings"  # every cell drawn (no windowing, for the screenshots), no news pop-up
    for plugin, values in {"notebook-extension/tracker": '{"windowingMode": "none"}',
                           "apputils-extension/notification": '{"fetchNews": "false"}'}.items():
        io.write_text(settings / "@jupyterlab" / f"{plugin}.jupyterlab-settings", values)
    server = subprocess.Popen([sys.executable, "-m", "jupyterlab", "--no-browser", f"--port={a.port}",
                               "--ServerApp.ip=127.0.0.1", "--allow-root", f"--IdentityProvider.token={token}",
                               f"--ServerApp.root_dir={root}",
                               f"--LabApp.user_settings_dir={settings.resolve()}"], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        wait_for_server(f"http://127.0.0.1:{a.port}/api/status?token={token}")
        rel = Path(os.path.relpath(os.path.abspath(lab / "widgets.ipynb"), root))  # a run folder may be a link
        shots = screenshots(f"http://127.0.0.1:{a.port}/lab/tree/{rel}?token={token}", out, lab)
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
    failed = [name for name, s in shots.items() if not s["redrew"]]
    for name, s in shots.items():
        print(f"{name}: {s['moved']}: before {lab / s['before']}, after {out / s['after']}"
              + ("" if s["redrew"] else "  REDREW THE DEFAULT'S FIGURE"))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
