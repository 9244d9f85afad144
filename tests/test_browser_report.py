"""The report in a real browser: headless Chromium loads the page, every image decodes,
the tables are there, and a screenshot is taken. Skips only where Chromium is absent."""

from __future__ import annotations

import pathlib
import re
import shutil
import subprocess

import pytest
from PIL import Image

from rpa_bench.reports.report import write_report
from synthetic_run import write_synthetic_run

SAMPLE_RUN = pathlib.Path(__file__).resolve().parent.parent / "results" / "sample"
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
BROWSER = next((shutil.which(b) for b in BROWSERS if shutil.which(b)), None)

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(BROWSER is None, reason=f"headless Chromium not installed (looked for {', '.join(BROWSERS)}; "
                                               "apt-get install chromium)"),
]


def _chromium(profile: pathlib.Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--hide-scrollbars", f"--user-data-dir={profile}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)


@pytest.fixture(params=["synthetic", "sample"])
def report_page(request, tmp_path) -> pathlib.Path:
    if request.param == "sample":
        if not (SAMPLE_RUN / "manifest.json").exists():
            pytest.skip(f"no committed sample run at {SAMPLE_RUN.name}/ in results/")
        run = SAMPLE_RUN
    else:
        run = write_synthetic_run(tmp_path / "run")
    return write_report(run, tmp_path / "report").index_html


def test_report_loads_in_chromium_with_every_image_and_table(report_page, tmp_path):
    url = report_page.as_uri()
    dom = _chromium(tmp_path / "profile-dom", "--virtual-time-budget=5000", "--dump-dom", url)
    assert dom.returncode == 0, dom.stderr[-2000:]
    body = re.search(r"<body([^>]*)>", dom.stdout)
    assert body, "no <body> in the dumped DOM"
    attrs = dict(re.findall(r'([\w-]+)="([^"]*)"', body.group(1)))
    img_tags = re.findall(r"<img [^>]*>", dom.stdout)
    assert attrs.get("data-images-ok") == "true", f"images that did not load: {attrs.get('data-images-broken')}"
    assert int(attrs["data-images-count"]) == len(img_tags) >= 1
    for tag in img_tags:  # the files behind the links exist
        src = re.search(r'src="([^"]+)"', tag).group(1)
        assert (report_page.parent / src).is_file(), src
    tables = re.findall(r"<table class=\"sortable\">.*?</table>", dom.stdout, flags=re.S)
    assert len(tables) >= 4
    assert all("<td" in t for t in tables), "a table without rows"
    assert 'id="provenance"' in dom.stdout and 'id="correctness"' in dom.stdout

    shot = tmp_path / "report.png"
    res = _chromium(tmp_path / "profile-shot", "--window-size=1280,4000", f"--screenshot={shot}", url)
    assert res.returncode == 0 and shot.is_file(), res.stderr[-2000:]
    with Image.open(shot) as im:
        assert im.size == (1280, 4000)
        histogram = im.convert("L").histogram()
        inked = sum(histogram[:200]) / sum(histogram)
        assert inked > 0.01, f"screenshot is nearly blank ({inked:.2%} non-white pixels)"


def test_the_summary_fits_the_first_screen_and_the_page_stays_short(report_page, tmp_path):
    dom = _chromium(tmp_path / "profile-layout", "--window-size=1400,900", "--virtual-time-budget=5000",
                    "--dump-dom", report_page.as_uri())
    assert dom.returncode == 0, dom.stderr[-2000:]
    attrs = dict(re.findall(r'([\w-]+)="([^"]*)"', re.search(r"<body([^>]*)>", dom.stdout).group(1)))
    # the summary (what ran, headline numbers, what failed) ends within a 1400 x 900 first screen
    assert int(attrs["data-summary-bottom"]) <= 900, attrs
    # the sample run's page was ~21,000 px before its caveats, repeated warnings and paper rows were folded
    assert int(attrs["data-page-height"]) < 20000, attrs
