"""Sphinx configuration of the course website, built from the committed notebooks (never re-executed).

Build it from the repository root (the source folder is the repository itself, this folder only holds the config):

    sphinx-build -W --keep-going -c docs . build/site

then open build/site/index.html. `tests/test_website.py` runs the same build and opens every page in headless Chromium.

Why Sphinx + myst-nb + sphinx-book-theme rather than Jupyter Book 2: Jupyter Book 2 is built on the MyST
JavaScript toolchain and needs Node.js; this stack is pure Python, installs from PyPI with the `docs` extra in
seconds, and builds the same kind of book (notebook pages with their stored outputs, figures and maths).
"""

import re
from pathlib import Path

project = "minigen"
author = "the minigen authors"
copyright = "the minigen authors; code MIT, notebook text and figures CC BY 4.0"

extensions = [
    "myst_nb",  # .ipynb and .md pages (it brings myst_parser along)
    "sphinx-mathjax-offline",  # MathJax 3 served from the site itself: pages typeset maths with no internet
]

# --- sources: the repository root is the source folder, so say exactly which files are pages --------------------
root_doc = "README"  # the landing page is the README, as on GitHub
include_patterns = ["README.md", "notebooks/*.ipynb", "notebooks/glossary.md", "solutions/*.ipynb"]
# include_patterns alone would still walk every folder (the virtual environment is tens of thousands of files):
# excluded folders are not even entered
exclude_patterns = [".*", "build", "dist", "data", "docs", "minigen", "runs", "tests", "tools", "venv", "*.egg-info"]

# The notebooks' stored outputs are the content: never execute (the committed outputs come from real runs).
nb_execution_mode = "off"
myst_enable_extensions = ["dollarmath", "amsmath"]  # the notebooks write maths as $...$ and $$...$$, as Jupyter does
# ... and, as Jupyter allows, a $$...$$ line inside a paragraph (without it, a "$$" there reads as two "$")
myst_dmath_double_inline = True
myst_heading_anchors = 3  # links such as glossary.md#kv-cache resolve to headings up to ###

# Sliders (ipywidgets) need a running kernel to do anything. myst-nb would fetch require.js and the widget manager
# from a CDN (no internet here, and a console error offline); instead each slider shows its stored one-line
# text fallback under the static figure it varies, as any viewer without a kernel shows the notebook.
nb_ipywidgets_js = {}
nb_mime_priority_overrides = [("*", "application/vnd.jupyter.widget-view+json", None)]

# --- the look ----------------------------------------------------------------------------------------------------
html_theme = "sphinx_book_theme"
html_title = "minigen"
html_favicon = "favicon.svg"  # a browser asks for one anyway: without it every page logs a 404
# the figures are matplotlib's, on white: light mode (without a default the theme logs an error on every page)
html_context = {"default_mode": "light"}
html_theme_options = {
    "home_page_in_toc": True,  # the README heads the navigation
    "show_toc_level": 2,
}


# --- the navigation: a toctree the README does not carry ------------------------------------------------------------
def _toctree(caption: str, docs: list[str]) -> str:
    return "\n```{toctree}\n:hidden:\n:caption: " + caption + "\n\n" + "\n".join(docs) + "\n```\n"


def _folder_links(src: Path, text: str) -> str:
    """A link to a folder of pages (GitHub shows the folder's listing) leads to the folder's first page on the site,
    whose sidebar lists the rest: `[solutions/](solutions/)` goes to solutions/00_overview."""

    def first_page(match):
        pages = sorted((src / match[1]).glob("[0-9]*.ipynb"))
        return f"]({match[1]}/{pages[0].name})" if pages else match[0]  # no pages: left alone, Sphinx warns

    return re.sub(r"\]\(([\w.-]+)/\)", first_page, text)


def add_navigation(app, docname, source):
    """Append hidden toctrees (notebooks, solutions, glossary) to the README while Sphinx reads it, so GitHub's
    rendering of README.md stays as it is while every page of the site is in the sidebar."""
    if docname != root_doc:
        return
    src = Path(app.srcdir)
    # a stamped README's Colab and Kaggle badges are images on other hosts: the site leaves them off (as it leaves off
    # the notebooks' stamped cells, tagged remove-cell), so it stays whole offline
    source[0] = re.sub(r"<!-- minigen-stamp: badges.*?<!-- minigen-stamp: end -->\n?", "", source[0], flags=re.S)
    source[0] = _folder_links(src, source[0])
    notebooks = sorted(f"notebooks/{p.stem}" for p in src.glob("notebooks/[0-9]*.ipynb"))
    solutions = sorted(f"solutions/{p.stem}" for p in src.glob("solutions/[0-9]*.ipynb"))
    source[0] += _toctree("Notebooks", notebooks) + _toctree("Reference", ["notebooks/glossary"])
    source[0] += _toctree("Worked solutions", solutions)


def write_index(app, exc):
    """The landing page is README.html; index.html sends a visitor (or a static host) there."""
    if exc is None and app.builder.format == "html":
        page = '<!DOCTYPE html><meta charset="utf-8"><meta http-equiv="refresh" content="0; url=README.html">'
        page += f'<link rel="icon" href="_static/{html_favicon}">'  # else the browser asks for /favicon.ico
        page += '<title>minigen</title><a href="README.html">minigen</a>\n'
        (Path(app.outdir) / "index.html").write_text(page)


def setup(app):
    app.connect("source-read", add_navigation)
    app.connect("build-finished", write_index)
