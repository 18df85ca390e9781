"""The course website (docs/conf.py): built from the committed notebooks with warnings as errors, then every page
opened in headless Chromium: its figures loaded, its maths typeset by the site's own MathJax, no console error, no
request leaving the site, no internal link to a missing file, and each notebook's exercises linking its solutions.

Needs the `docs` extra (sphinx, myst-nb, selenium) and Debian's `chromium` and `chromium-driver` (.ci/run installs
them). Without them the test is skipped, except under CI=true, where it fails. Screenshots of the landing page and
of one notebook page go to a temporary folder; `MINIGEN_SCREENSHOTS=docs/screenshots` keeps them there instead.
"""

import functools
import http.server
import importlib
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Debian's packages (.ci/run installs them); another browser build with $MINIGEN_CHROMIUM / $MINIGEN_CHROMEDRIVER
# (the GitHub workflow points them at the runner's preinstalled Chrome and ChromeDriver)
CHROMIUM = os.environ.get("MINIGEN_CHROMIUM") or "/usr/bin/chromium"
CHROMEDRIVER = os.environ.get("MINIGEN_CHROMEDRIVER") or "/usr/bin/chromedriver"
# the pictures kept in docs/screenshots: (page, the section scrolled to)
SCREENSHOTS = {
    "landing.png": ("README.html", None),
    "notebook.png": ("notebooks/03_token_ar.html", "the-factorisation-over-tokens"),
}
# the flags keep headless Chromium from phoning home (updates, sync, QUIC probes): offline, those are console noise
FLAGS = "--headless --no-sandbox --disable-gpu --disable-quic --no-first-run --disable-background-networking"
FLAGS += " --disable-component-update --disable-sync --hide-scrollbars"
# Sphinx writes inline maths as \(...\) and display maths as \[...\]: whatever of it is left in the prose after
# MathJax ran (or a $...$ the parser missed) is maths that did not typeset
RAW_TEX = re.compile(r"\$\$|\\\(|\\\[|\\begin\{|\$[^$\n]*\\[A-Za-z]+")

# what one page reports once MathJax has typeset it and every image (lazy ones too) has loaded or failed
PAGE_REPORT = """
const done = arguments[arguments.length - 1];
(async () => {
  const images = [...document.images];
  images.forEach(i => { i.loading = "eager"; });
  await Promise.all(images.map(i => i.complete ? null : new Promise(r => { i.onload = i.onerror = r; })));
  if (window.MathJax && MathJax.startup) await MathJax.startup.promise;
  const article = document.querySelector("article") || document.body;
  const prose = article.cloneNode(true);
  prose.querySelectorAll("pre, code, script, style, .math, mjx-container").forEach(e => e.remove());
  const maths = [...document.querySelectorAll(".math")];
  done({
    images: images.length,
    broken: images.filter(i => !i.naturalWidth).map(i => i.src),
    maths: maths.length,
    untypeset: maths.filter(e => !e.querySelector("mjx-container")).length,
    prose: prose.innerText,
    resources: performance.getEntriesByType("resource").map(e => e.name),
    links: [...document.querySelectorAll("a[href]")].map(a => a.href),
    content_links: [...article.querySelectorAll("a[href]")].map(a => a.href),
  });
})();
"""


def require(ok, reason):
    """CI must run the check: there a missing browser or package fails; elsewhere it skips."""
    if not ok:
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)


def need(module):
    try:
        return importlib.import_module(module)
    except ImportError:
        require(False, f"{module} is missing: pip install -e '.[docs]'")


def sources():
    """The site's pages (as the HTML path each becomes) and what each source holds: its stored figures, and
    whether its prose has maths."""
    pages = {}
    for path in [ROOT / "README.md", ROOT / "notebooks/glossary.md"]:
        text = re.sub(r"```.*?```|`[^`\n]*`", "", path.read_text(), flags=re.S)
        pages[path.relative_to(ROOT).with_suffix(".html").as_posix()] = (text.count("!["), "$" in text)
    for path in sorted(ROOT.glob("notebooks/[0-9]*.ipynb")) + sorted(ROOT.glob("solutions/[0-9]*.ipynb")):
        cells = json.loads(path.read_text())["cells"]
        outputs = [o for c in cells for o in c.get("outputs", [])]
        figures = sum("image/png" in o.get("data", {}) for o in outputs)
        prose = "".join(re.sub(r"`[^`\n]*`", "", "".join(c["source"])) for c in cells if c["cell_type"] == "markdown")
        pages[path.relative_to(ROOT).with_suffix(".html").as_posix()] = (figures, "$" in prose)
    return pages


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The site, built as README's command builds it (warnings are errors), into a temporary folder."""
    for module in ("sphinx", "myst_nb", "sphinx_book_theme"):
        need(module)
    out = tmp_path_factory.mktemp("site") / "html"
    start = time.perf_counter()
    cmd = [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-c", "docs", ".", str(out)]
    run = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0, f"sphinx-build failed or warned:\n{run.stderr[-6000:]}"
    return out, time.perf_counter() - start


@pytest.fixture(scope="module")
def browser(site):
    """Headless Chromium on a local server of the built site: (driver, base URL)."""
    require(Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists(), "no chromium/chromium-driver (apt-get install)")
    webdriver = need("selenium.webdriver")

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    class Server(http.server.ThreadingHTTPServer):
        def handle_error(self, request, client_address):
            pass  # a page left before its last request drops the connection; what failed to load, the browser logs

    server = Server(("127.0.0.1", 0), functools.partial(Quiet, directory=site[0]))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS.split() + [f"--user-data-dir={site[0].parent / 'chromium-profile'}"]:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(CHROMEDRIVER))
    driver.set_script_timeout(60)
    # the page area itself 1280x900 at one pixel per pixel (a window size would include the browser's frame)
    size = {"width": 1280, "height": 900, "deviceScaleFactor": 1, "mobile": False}
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", size)
    try:
        yield driver, f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        driver.quit()
        server.shutdown()


def test_every_page_renders_in_chromium(site, browser, capsys, tmp_path):
    out, build_seconds = site
    driver, base = browser
    pages = sources()
    assert len(pages) >= 30, "README, the glossary, 14 notebooks and 14 solutions"
    start = time.perf_counter()

    driver.get(base + "index.html")  # the site's front door leads to the README
    time.sleep(0.1)
    assert driver.current_url == base + "README.html"

    totals = {"figures": 0, "maths": 0}
    links = set()
    for page, (stored_figures, has_maths) in pages.items():
        assert (out / page).exists(), f"{page}: not built"
        driver.get(base + page)
        report = driver.execute_async_script(PAGE_REPORT)
        errors = [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert not errors, f"{page}: console errors {errors}"
        assert not report["broken"], f"{page}: images that did not load {report['broken']}"
        assert report["images"] >= stored_figures, f"{page}: {report['images']} images for {stored_figures} stored"
        assert report["untypeset"] == 0, f"{page}: {report['untypeset']} of {report['maths']} maths not typeset"
        assert (report["maths"] > 0) == has_maths, f"{page}: {report['maths']} maths, source has: {has_maths}"
        leftover = RAW_TEX.findall(report["prose"])
        assert not leftover, f"{page}: TeX left untypeset in the text: {leftover[:5]}"
        outside = [url for url in report["resources"] if not url.startswith(base)]
        assert not outside, f"{page}: requests that leave the site {outside}"
        solutions = f"solutions/{Path(page).name}"
        if page.startswith("notebooks/") and solutions in pages:  # the exercises link their worked solutions
            assert base + solutions in report["content_links"], f"{page}: no link to {solutions} in its text"
        links.update(url for url in report["links"] if url.startswith(base))
        totals["figures"] += report["images"]
        totals["maths"] += report["maths"]

    # every page is in the navigation, and no internal link points at a missing file
    assert {base + page for page in pages} <= {url.split("#")[0] for url in links}, "pages missing from the sidebar"
    missing = sorted({urlsplit(url).path for url in links if not (out / urlsplit(url).path.lstrip("/")).exists()})
    assert not missing, f"internal links to missing files: {missing}"

    keep = os.environ.get("MINIGEN_SCREENSHOTS")
    shots = Path(keep) if keep else tmp_path
    shots.mkdir(parents=True, exist_ok=True)
    for name, (page, section) in SCREENSHOTS.items():
        driver.get(base + page)
        driver.execute_async_script(PAGE_REPORT)  # wait for figures and maths before the picture
        if section:  # scrolled to, not opened as page#section: the theme would highlight the heading
            driver.execute_script(f"document.getElementById('{section}').scrollIntoView()")
        assert driver.save_screenshot(str(shots / name)), f"no screenshot of {page}"
        assert (shots / name).stat().st_size > 20_000, f"{name}: a near-empty picture"

    with capsys.disabled():
        print(
            f"\nwebsite: {len(pages)} pages, {totals['figures']} figures loaded, {totals['maths']} maths blocks"
            f" typeset, 0 console errors; build {build_seconds:.0f} s, browser {time.perf_counter() - start:.0f} s"
        )
