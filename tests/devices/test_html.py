"""report.html (self-contained, plots embedded) rendered in headless Chromium, and the fleet comparison."""

from __future__ import annotations

import base64
import io
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from edgeslim.devices.html import render_html
from edgeslim.devices.profiler import ProfileConfig, profile_artifact
from edgeslim.devices.report import compare_reports, load_report, make_report, write_report
from edgeslim.errors import ConfigError

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
_no_chromium = pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium is not installed (apt-get install -y chromium)")


def needs_chromium(fn):
    """A browser test: skipped without Chromium, and run in .ci/run's second step (-m live)."""
    return pytest.mark.live(_no_chromium(fn))


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory, tiny_artifact, digits):
    _, _, xte, yte = digits
    entries = profile_artifact(
        tiny_artifact, backends=("onnxruntime", "openvino"), threads=1, progress=False, data=(xte, yte),
        cfg=ProfileConfig(warmup=2, iterations=30, seconds=0.05, batch_sizes=(1, 4), throughput=False),
    )
    out = tmp_path_factory.mktemp("rep") / "report"
    write_report(out, make_report(entries, artifact_dir=tiny_artifact, target={"name": "x86-cpu"}))
    return out


def _pngs(page: str) -> list[bytes]:
    return [base64.b64decode(b) for b in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)]


def test_html_is_self_contained_with_three_plots(report_dir):
    from PIL import Image

    page = (report_dir / "report.html").read_text()
    assert sorted(p.name for p in report_dir.iterdir()) == ["report.html", "report.json", "report.md"]
    assert not re.search(r'(src|href)="(https?:)?//', page)  # no external assets
    pngs = _pngs(page)
    assert len(pngs) == 3  # latency distribution, accuracy vs latency, per-class FN
    for png in pngs:
        im = Image.open(io.BytesIO(png))
        assert im.size[0] > 200 and im.size[1] > 150
    # the critical classes are marked in the per-class table
    assert page.count('<tr class="critical">') == 2


def _chromium(args: list[str], timeout: int = 90) -> subprocess.CompletedProcess:
    return subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
         "--enable-logging=stderr", "--v=0", *args],
        capture_output=True, text=True, timeout=timeout,
    )


def _console_errors(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if "CONSOLE" in ln and ("Uncaught" in ln or "rror" in ln)]


@needs_chromium
def test_report_renders_in_headless_chromium(report_dir, tmp_path):
    from PIL import Image

    shot = tmp_path / "shot.png"
    r = _chromium([f"--screenshot={shot}", "--window-size=1400,2400", (report_dir / "report.html").as_uri()])
    assert shot.is_file(), r.stderr[-2000:]
    im = Image.open(shot).convert("L")
    lo, hi = im.getextrema()
    assert im.size == (1400, 2400) and hi - lo > 100  # not a blank page
    assert _console_errors(r.stderr) == []
    # every embedded image decodes in the browser: a probe script sets the title from the images' state
    probe = tmp_path / "probe.html"
    probe.write_text((report_dir / "report.html").read_text().replace(
        "</body>", "<script>document.title='IMAGES:'+[...document.images].filter(i=>i.complete&&i.naturalWidth>0)"
        ".length+'/'+document.images.length</script></body>"))
    dom = _chromium(["--dump-dom", "--virtual-time-budget=5000", probe.as_uri()])
    assert "<title>IMAGES:3/3</title>" in dom.stdout


@needs_chromium
def test_console_error_detection_catches_a_broken_page(tmp_path):
    bad = tmp_path / "bad.html"
    bad.write_text("<html><body><script>console.error('boom'); undefinedFn();</script></body></html>")
    r = _chromium(["--dump-dom", "--virtual-time-budget=2000", bad.as_uri()])
    assert _console_errors(r.stderr), "the console check would not notice errors"


def test_compare_reports_merges_targets_into_one_table_and_page(report_dir, tmp_path):
    a = load_report(report_dir)
    b = {**a, "target": {"name": "jetson-orin-nx"}, "host": {**a["host"], "hostname": "orin"}}
    (tmp_path / "b").mkdir()
    write_report(tmp_path / "b", b, html=False)
    merged = compare_reports([report_dir, tmp_path / "b"], out_dir=tmp_path / "fleet", title="fleet")
    assert merged["fleet"] and len(merged["sources"]) == 2
    assert len(merged["entries"]) == 2 * len(a["entries"])
    labels = {e["_target"] for e in merged["entries"]}
    assert len(labels) == 2 and any(lbl.startswith("jetson-orin-nx @ orin") for lbl in labels)
    md = (tmp_path / "fleet" / "report.md").read_text()
    # its rows + its line in the list of reports
    assert md.startswith("# fleet") and md.count("| jetson-orin-nx @ orin |") == len(a["entries"]) + 1
    page = (tmp_path / "fleet" / "report.html").read_text()
    assert len(_pngs(page)) == 3
    assert load_report(tmp_path / "fleet")["fleet"] is True
    with pytest.raises(ConfigError, match="at least two"):
        compare_reports([report_dir])


def test_render_html_of_an_empty_report_says_so():
    page = render_html({"schema": "edgeslim.report/1", "entries": []})
    assert "No measurements to plot." in page and page.startswith("<!DOCTYPE html>")
