"""The report page in headless Chromium: the screenshot is not blank and no image is broken.

Needs Debian's `chromium` (`apt-get install -y chromium`); skipped with that reason when it is missing.
"""
import json
import re
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

from fewshot_da.reports.report import write_report
from tests.reports.test_collect import write_synthetic

CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser") if shutil.which(n)), None)
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (apt-get install -y chromium)")

# appended to a copy of the page: after load, record each image's src and whether it decoded (naturalWidth > 0)
_CHECK = """<script>window.addEventListener('load', function () {
  var out = document.createElement('pre'); out.id = 'img-check';
  out.textContent = JSON.stringify(Array.prototype.map.call(document.images, function (i) {
    return [i.getAttribute('src'), i.complete && i.naturalWidth > 0]; }));
  document.body.appendChild(out); });</script>"""


def _chromium(tmp_path, *args):
    command = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--force-device-scale-factor=1",
               f"--user-data-dir={tmp_path / 'chromium-profile'}", *args]
    return subprocess.run(command, check=False, capture_output=True, text=True, timeout=120)


def _image_states(tmp_path, page):
    """[(src, decoded)] of every <img> of `page` as Chromium loaded it (the page's folder resolves the links)."""
    probe = page.with_name("_img_check.html")
    probe.write_text(page.read_text().replace("</body>", _CHECK + "</body>"))
    dom = _chromium(tmp_path, "--virtual-time-budget=10000", "--dump-dom", probe.as_uri()).stdout
    probe.unlink()
    found = re.search(r'<pre id="img-check">(.*?)</pre>', dom, re.DOTALL)
    assert found, f"the image probe did not run; DOM starts {dom[:300]!r}"
    return [tuple(x) for x in json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&"))]


@pytest.fixture(scope="module")
def report_page(tmp_path_factory):
    root = tmp_path_factory.mktemp("browser")
    write_synthetic(root / "grid", spottune=True)
    run = root / "grid" / "runs" / "spottune-ge15-philips3-1_4-s0"
    run.mkdir(parents=True)
    (run / "policy_test.csv").write_text("unit,fraction_finetuned\n" + "".join(f"{u},{(u % 7) / 6:.3f}\n"
                                                                                for u in range(1, 33)))
    written = write_report([root / "grid"], root / "report")
    return written["index"]


def test_every_image_exists_and_decodes(report_page):
    sources = re.findall(r'<img src="([^"]+)"', report_page.read_text())
    assert len(sources) == 5  # + the per-scan scores (issue 23 §4)
    for src in sources:
        assert "/" not in src and not src.startswith(("http", "file"))  # relative links beside index.html
        with Image.open(report_page.parent / src) as im:
            im.load()
            assert np.asarray(im.convert("L")).std() > 10, f"{src} is blank"


def test_chromium_renders_the_page(tmp_path, report_page):
    shot = tmp_path / "shot.png"
    result = _chromium(tmp_path, f"--screenshot={shot}", "--window-size=1200,2400", report_page.as_uri())
    assert shot.is_file(), result.stderr[-2000:]
    with Image.open(shot) as im:
        gray = np.asarray(im.convert("L"), dtype=float)
    assert gray.shape == (2400, 1200)
    assert gray.std() > 20 and (gray < 200).mean() > 0.02, "the screenshot is blank"
    states = _image_states(tmp_path, report_page)
    assert len(states) == 5 and all(ok for _, ok in states), states


def test_the_probe_sees_a_broken_image(tmp_path, report_page):
    page = report_page.parent / "broken.html"
    page.write_text('<html><body><img src="transfer_heatmap.png"><img src="missing.png"></body></html>')
    assert _image_states(tmp_path, page) == [("transfer_heatmap.png", True), ("missing.png", False)]
