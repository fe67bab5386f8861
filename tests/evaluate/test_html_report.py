"""``report.html``: the markdown report as one self-contained page (the same tables and verdicts, every image
embedded), from the packaged Jinja2 template; and, in headless Chromium, each kind of report from a ``smoke`` study
(the study's, and each run's ensemble report, which is the pipeline's) loads with no console error, no missing
image and a screenshot that is not blank."""

from __future__ import annotations

import base64
import io
import re
import shutil
import subprocess
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medens.evaluate.html import TEMPLATE_NAME, render_html_report, write_html_report

CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="headless Chromium is not installed (Debian: apt-get install chromium; .ci/run tries)")


def _png(path: Path) -> None:
    Image.fromarray(np.arange(48 * 64 * 3, dtype=np.uint8).reshape(48, 64, 3)).save(path)


MARKDOWN = """# Ensemble evaluation

- Dataset: synthetic; classes: a, b.

## Members and ensemble on the test split

| Model | Acc [95% CI] |
| --- | --- |
| MAE-init | 0.700 [0.600, 0.800] |
| Ensemble (mean) | 0.750 [0.650, 0.850] |

## Comparisons

- ensemble - MAE member, accuracy: within noise; 3 of 5 runs favour a.

![Confusion matrices](plot.png)

![error: `x<1>.png`](gallery/000-error.png)
"""


def test_template_ships_with_the_installed_package() -> None:
    assert (resources.files("medens") / "templates" / TEMPLATE_NAME).is_file()


def test_page_has_the_markdown_tables_and_verdicts_and_embeds_every_image(tmp_path: Path) -> None:
    _png(tmp_path / "plot.png")
    (tmp_path / "gallery").mkdir()
    _png(tmp_path / "gallery" / "000-error.png")
    page = render_html_report(MARKDOWN, tmp_path, "ensemble")
    assert "<title>Ensemble evaluation</title>" in page and page.count("<h1") == 1
    assert "<table>" in page and "<td>0.750 [0.650, 0.850]</td>" in page
    assert "within noise; 3 of 5 runs favour a." in page
    assert 'href="#members-and-ensemble-on-the-test-split"' in page  # the contents
    sources = re.findall(r'<img[^>]*src="([^"]+)"', page)
    assert len(sources) == 2 and all(s.startswith("data:image/png;base64,") for s in sources)
    Image.open(io.BytesIO(base64.b64decode(sources[0].split(",", 1)[1]))).verify()
    assert "<script" not in page and "http" not in page.split("</head>")[0].replace('content="width', "")


def test_written_beside_the_markdown(tmp_path: Path) -> None:
    path = write_html_report("# Study: x\n\nno images\n", tmp_path, "study")
    assert path == tmp_path / "report.html" and "Study: x" in path.read_text(encoding="utf-8")


# ----------------------------------------------------------------------------------------------- in a browser
def _check_in_chromium(page: Path, tmp_path: Path) -> None:
    """Load ``page`` in headless Chromium: no console error, every image decoded, a screenshot that is not blank."""
    # A copy beside the page with a probe that writes what the page loaded into the DOM that --dump-dom prints.
    probe = page.with_name(f".probe-{page.name}")
    probe.write_text(page.read_text(encoding="utf-8").replace("</body>", """<script>
window.addEventListener('load', () => {
  const imgs = Array.from(document.images);
  const broken = imgs.filter(i => !i.complete || i.naturalWidth === 0).length;
  document.body.setAttribute('data-probe', imgs.length + ' images, ' + broken + ' broken');
});
</script></body>"""), encoding="utf-8")
    flags = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-extensions",
             "--allow-file-access-from-files", f"--user-data-dir={tmp_path / 'chromium-profile'}",
             "--enable-logging=stderr", "--v=0", "--virtual-time-budget=5000"]
    try:
        dom = subprocess.run([*flags, "--dump-dom", probe.as_uri()], capture_output=True, text=True, timeout=120)
        shot = tmp_path / f"{page.parent.name}-{page.stem}.png"
        snap = subprocess.run([*flags, f"--screenshot={shot}", "--window-size=1280,1600", page.as_uri()],
                              capture_output=True, text=True, timeout=120)
    finally:
        probe.unlink()
    found = re.search(r'data-probe="(\d+) images, (\d+) broken"', dom.stdout)
    assert found, f"the page did not finish loading in Chromium: {dom.stderr[-2000:]}"
    assert int(found.group(2)) == 0, f"{page}: {found.group(0)}"
    console = [line for line in (dom.stderr + snap.stderr).splitlines() if "CONSOLE" in line or "Failed to load" in line]
    assert not console, f"{page}: console messages {console}"
    assert shot.is_file(), snap.stderr[-2000:]
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=np.float64)
    assert pixels.std() > 5 and (pixels < 128).mean() > 0.001, f"{shot} looks blank"


@pytest.fixture(scope="module")
def smoke_study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ``smoke`` study of two folds on the synthetic images (with lesion masks): study, pipeline and ensemble
    reports."""
    from medens.train.__main__ import main as train_main

    out = tmp_path_factory.mktemp("smoke") / "study"
    argv = ["study", "--preset", "smoke", "--folds", "2", "--seeds", "1", "--dataset-option", "num_images=24",
            "--bootstrap", "20", "--out", str(out)]
    assert train_main(argv) == 0
    return out


@pytest.mark.slow
def test_smoke_reports_have_html_galleries_and_links(smoke_study: Path) -> None:
    study = (smoke_study / "report.md").read_text(encoding="utf-8")
    assert "## Galleries of each run" in study
    for fold in range(2):
        ens = smoke_study / f"fold-{fold}" / "seed-0" / "ensemble"
        assert f"(fold-{fold}/seed-0/ensemble/report.html#gallery)" in study or "no maps" in study
        assert (ens / "report.html").is_file()
        md = (ens / "report.md").read_text(encoding="utf-8")
        page = (ens / "report.html").read_text(encoding="utf-8")
        for row in re.findall(r"^\| (Ensemble \(mean\)[^|]*)\|", md, flags=re.MULTILINE):
            assert row.strip() in page  # the same tables
        assert "## Does it look at the lesion?" in md
    assert (smoke_study / "report.html").is_file()


@pytest.mark.slow
@needs_chromium
def test_every_kind_of_report_loads_in_chromium(smoke_study: Path, tmp_path: Path) -> None:
    pages = [smoke_study / "report.html", smoke_study / "fold-0" / "seed-0" / "ensemble" / "report.html"]
    for page in pages:
        _check_in_chromium(page, tmp_path)
