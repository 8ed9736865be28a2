"""The report in a real browser: headless Debian Chromium (installed by scripts/test.sh).

Console messages are read from Chromium's own log (`--enable-logging=stderr`), where
every console call, uncaught error, blocked load and CSP violation appears as a
`CONSOLE` line. The report has no script, so any such line is a fault.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from ckl.report import write_report
from tests.report.fakerun import SCRIPT, make_run

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium not found (scripts/test.sh installs Debian's chromium package)")

FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--enable-logging=stderr", "--v=0", "--hide-scrollbars",
]


def chromium(tmp_path: Path, page: Path, *args: str) -> tuple[str, list[str]]:
    """Open `page` in a fresh profile; returns (stdout, console lines)."""
    profile = tmp_path / f"profile-{len(list(tmp_path.glob('profile-*')))}"
    done = subprocess.run(
        [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *args, page.as_uri()],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    console = [line for line in done.stderr.splitlines() if ":CONSOLE" in line]
    return done.stdout, console


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("browser")
    return write_report([make_run(tmp / "run")], tmp / "report.html")


def test_the_console_check_sees_errors_and_executed_scripts(tmp_path):
    bad = tmp_path / "bad.html"
    bad.write_text("<!DOCTYPE html><html><head><title>clean</title></head><body>"
                   "<script>document.title = 'pwned'; console.error('boom')</script></body></html>")
    dom, console = chromium(tmp_path, bad, "--dump-dom")
    assert "<title>pwned</title>" in dom and any("boom" in line for line in console)


def test_hostile_fact_text_shows_as_text_and_never_runs(report, tmp_path):
    # Without the CSP safety net, so the escaping alone is what is tested.
    html = report.read_text(encoding="utf-8")
    unguarded = tmp_path / "unguarded.html"
    unguarded.write_text(re.sub(r'<meta http-equiv="Content-Security-Policy"[^>]*>', "", html), encoding="utf-8")
    assert "Content-Security-Policy" not in unguarded.read_text()
    dom, console = chromium(tmp_path, unguarded, "--dump-dom")
    assert console == []
    assert "<script" not in dom.lower()  # no script element, not even an inert one
    assert "pwned" not in re.search(r"<title>(.*?)</title>", dom).group(1)
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in dom  # shown as text
    assert SCRIPT.replace("<", "&lt;").replace(">", "&gt;") + " lives in" in dom


def test_report_renders_its_plots_without_console_errors(report, tmp_path):
    from PIL import Image

    shot = tmp_path / "report.png"
    _, console = chromium(tmp_path, report, f"--screenshot={shot}", "--window-size=1280,2200")
    assert console == []
    image = Image.open(shot).convert("RGB")
    assert image.size == (1280, 2200)
    colors = image.getcolors(maxcolors=1 << 20)
    assert len(colors) > 200  # text, plots, antialiasing: not a blank page
    # the heatmap's viridis extremes (accuracy 0 and 1) are on screen, so the SVG plots drew
    pixels = {rgb for _, rgb in colors}
    near = lambda target: any(sum(abs(a - b) for a, b in zip(rgb, target)) < 30 for rgb in pixels)  # noqa: E731
    assert near((68, 1, 84)) and near((253, 231, 37))
