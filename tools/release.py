"""Stamping a release: "Open in Colab" and "Open in Kaggle" badges and an install cell pinned to the release's tag,
in every notebook of notebooks/ and solutions/, and the badges in README.md. A maintainer runs it when publishing
(README, "Publishing"); until then the repository stays unstamped.

    python tools/release.py stamp --url https://github.com/OWNER/REPO --tag v0.2.0   # write the stamp
    python tools/release.py stamp --url ... --tag ... --check   # exit 1, naming every file stamping would change
    python tools/release.py check       # exit 1 on an unstamped or damaged file, or on files stamped differently
    python tools/release.py unstamp     # every file back as it was, byte for byte

Colab and Kaggle open a notebook straight from GitHub at the tag, with no minigen installed: the install cell then
installs it from the same tag (`git+URL@TAG`; the digits and the pretrained weights are package data, so they come
with it). Where minigen is installed (a clone, CI) the cell does nothing, so nbval runs stamped notebooks as before.

Why the stamp comes off exactly: each stamped cell carries the metadata {"minigen": "stamp"} (unstamp removes
those cells and nothing else), README's badges stand between two HTML comments, and a notebook is rewritten the
way Jupyter writes it (JSON indented by one space, non-ASCII kept, a final newline). A notebook written any other
way is refused, not reformatted; every file is read and checked before any is written.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from minigen.files import write_atomically

MARK = {"minigen": "stamp"}  # the metadata of every stamped cell
# ... plus myst-nb's tag that leaves a cell off the website: the badges' images live off-site (the site is checked
# offline) and the site needs no install cell
ON_SITE = {"tags": ["remove-cell"]}
COLAB_BADGE = "https://colab.research.google.com/assets/colab-badge.svg"
KAGGLE_BADGE = "https://kaggle.com/static/images/open-in-kaggle.svg"
README_BEGIN = "<!-- minigen-stamp: badges written by tools/release.py; `unstamp` removes them -->"
README_END = "<!-- minigen-stamp: end -->"
README_FIRST = "notebooks/00_overview.ipynb"  # where README's badges open the course
# GitHub's rules: an owner is 1-39 letters, digits or inner single hyphens; a repository name letters, digits, . _ -
GITHUB_URL = re.compile(r"https://github\.com/([A-Za-z0-9](?:-?[A-Za-z0-9]){0,38})/([A-Za-z0-9._-]+?)(?:\.git)?/?")
# a release tag, so that the pin never moves: v1.2.3, optionally with a pre-release or build suffix (v0.2.0-rc.1)
TAG = re.compile(r"v?\d+\.\d+\.\d+(?:[-.+]?[0-9A-Za-z]+(?:\.[0-9A-Za-z]+)*)?")
# a stamp read back: OWNER/REPO and the tag, from a notebook's install cell or README's Colab badge
PIN = re.compile(r'%pip install -q "minigen @ git\+https://github\.com/([^@\s]+)@([^"\s]+)"')
COLAB_LINK = re.compile(r"\(https://colab\.research\.google\.com/github/([^/\s]+/[^/\s]+)/blob/([^/\s]+)/")


def repo_url(url: str) -> str:
    """The repository's https://github.com/OWNER/REPO, checked (a trailing slash or .git is dropped)."""
    m = GITHUB_URL.fullmatch(url)
    if not m or m.group(2) in (".", ".."):
        raise ValueError(f"--url must be a GitHub repository as https://github.com/OWNER/REPO, got {url!r}")
    return f"https://github.com/{m.group(1)}/{m.group(2)}"


def release_tag(tag: str) -> str:
    if not TAG.fullmatch(tag) or ".." in tag:
        raise ValueError(f"--tag must be a release tag such as v0.2.0 (a branch would not pin anything), got {tag!r}")
    return tag


def matches_version(root: Path, tag: str) -> None:
    """The tag must name the version the package at `root` declares (X.Y.Z alike): a pin to v0.3.0 of a package that
    says 0.2.0 is a release that was not bumped. A folder without minigen/__init__.py is not checked."""
    source = root / "minigen" / "__init__.py"
    found = re.search(r'^__version__ = "(\d+\.\d+\.\d+)', source.read_text(), re.M) if source.is_file() else None
    if found and re.match(r"v?(\d+\.\d+\.\d+)", tag).group(1) != found.group(1):
        raise ValueError(
            f"--tag {tag} is not the version minigen/__init__.py declares ({found.group(1)}): bump it first"
        )


def lines(text: str) -> list[str]:
    return text.splitlines(keepends=True)  # a cell's source as Jupyter stores it: one string per line


def badges(url: str, tag: str, path: str) -> str:
    """The two badges as Markdown, opening `path` (relative to the repository) at `tag`."""
    colab = f"https://colab.research.google.com/github/{url.removeprefix('https://github.com/')}/blob/{tag}/{path}"
    kaggle = f"https://kaggle.com/kernels/welcome?src={url}/blob/{tag}/{path}"
    return f"[![Open In Colab]({COLAB_BADGE})]({colab}) [![Open in Kaggle]({KAGGLE_BADGE})]({kaggle})"


def stamp_cells(url: str, tag: str, path: str) -> list[dict]:
    """The badge cell and the install cell (keys in the order Jupyter writes them, fixed ids: stamping twice gives
    the same bytes)."""
    install = (
        f"# Colab, Kaggle: install minigen {tag}, the release of these notebooks (skipped where minigen is installed)\n"
        "import importlib.util\n"
        "\n"
        'if importlib.util.find_spec("minigen") is None:\n'
        f'    %pip install -q "minigen @ git+{url}@{tag}"'
    )
    return [
        {
            "cell_type": "markdown",
            "id": "minigen-badges",
            "metadata": {**MARK, **ON_SITE},
            "source": lines(badges(url, tag, path)),
        },
        {
            "cell_type": "code",
            "execution_count": None,
            "id": "minigen-install",
            "metadata": {**MARK, **ON_SITE},
            "outputs": [],
            "source": lines(install),
        },
    ]


def load(text: str, name: str) -> dict:
    try:
        nb = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{name} is not a notebook (not JSON: {err})") from err
    if dump(nb) != text:
        raise ValueError(
            f"{name} is not written as Jupyter writes it (JSON indented by one space, a final newline), so stamping "
            "it could not be undone byte for byte: open and save it in JupyterLab first"
        )
    return nb


def dump(nb: dict) -> str:
    return json.dumps(nb, indent=1, ensure_ascii=False) + "\n"


def is_stamp(cell: dict) -> bool:
    return cell.get("metadata", {}).get("minigen") == MARK["minigen"]


def unstamp_notebook(text: str, name: str) -> str:
    nb = load(text, name)
    nb["cells"] = [c for c in nb["cells"] if not is_stamp(c)]
    return dump(nb)


def stamp_notebook(text: str, name: str, url: str, tag: str) -> str:
    """The notebook with its stamp (any earlier stamp replaced): the badges and the install cell right after the
    title cell, so before any code."""
    nb = json.loads(unstamp_notebook(text, name))
    cells = nb["cells"]
    at = 1 if cells and cells[0]["cell_type"] == "markdown" else 0
    cells[at:at] = stamp_cells(url, tag, name)
    return dump(nb)


def unstamp_readme(text: str) -> str:
    return re.sub(rf"{re.escape(README_BEGIN)}\n.*?{re.escape(README_END)}\n\n", "", text, count=1, flags=re.S)


def stamp_readme(text: str, url: str, tag: str) -> str:
    """README with the badges (opening notebook 00) right under its title."""
    text = unstamp_readme(text)
    title = re.match(r"# [^\n]*\n\n", text)
    at = title.end() if title else 0
    return text[:at] + f"{README_BEGIN}\n{badges(url, tag, README_FIRST)}\n{README_END}\n\n" + text[at:]


def stamp_of(name: str, text: str) -> tuple[str, str] | None:
    """(url, tag) of the stamp file `name` carries, read from its stamped cells or README's badge block: None where
    it carries none, ("?", "?") where it cannot be read."""
    if name.endswith(".ipynb"):
        cells = [c for c in load(text, name)["cells"] if is_stamp(c)]
        stamp = "".join("".join(c["source"]) for c in cells) if cells else None
    else:
        block = re.search(rf"{re.escape(README_BEGIN)}\n(.*?){re.escape(README_END)}", text, re.S)
        stamp = block.group(1) if block else ("" if README_BEGIN in text or README_END in text else None)
    if stamp is None:
        return None
    m = PIN.search(stamp) or COLAB_LINK.search(stamp)
    return (f"https://github.com/{m.group(1)}", m.group(2)) if m else ("?", "?")


def files(root: Path) -> list[Path]:
    """Every notebook of notebooks/ and solutions/, then README.md."""
    found = sorted((root / "notebooks").glob("*.ipynb")) + sorted((root / "solutions").glob("*.ipynb"))
    if not found or not (root / "README.md").is_file():
        raise ValueError(f"--root {root} holds no notebooks/*.ipynb or no README.md: is it the repository?")
    return found + [root / "README.md"]


def stamped(root: Path, path: Path, text: str, url: str | None, tag: str | None) -> str:
    """`text` of `path` stamped with (url, tag), or unstamped where url is None."""
    name = path.relative_to(root).as_posix()
    if path.suffix == ".ipynb":
        return stamp_notebook(text, name, url, tag) if url else unstamp_notebook(text, name)
    return stamp_readme(text, url, tag) if url else unstamp_readme(text)


def changes(root: Path, url: str | None, tag: str | None) -> dict[Path, str]:
    """The files stamping (or, with url None, unstamping) would change, with their new text; every file is read
    and checked before any is written."""
    out = {}
    for path in files(root):
        text = path.read_bytes().decode("utf-8")
        new = stamped(root, path, text, url, tag)
        if new != text:
            out[path] = new
    return out


def problems(root: Path) -> list[str]:
    """What keeps the files from being one release's stamp: unstamped or damaged files, or several stamps."""
    out, stamps = [], {}
    for path in files(root):
        text, name = path.read_bytes().decode("utf-8"), path.relative_to(root).as_posix()
        stamp = stamp_of(name, text)
        if stamp is None:
            out.append(f"{name}: not stamped")
        elif "?" in stamp or stamped(root, path, text, *stamp) != text:
            out.append(f"{name}: its stamp was edited or damaged (stamp again)")
        else:
            stamps.setdefault(stamp, []).append(name)
    if len(stamps) > 1:
        for (url, tag), names in sorted(stamps.items()):
            out.append(f"stamped {url} {tag}: {len(names)} files, e.g. {names[0]}")
    return out


def write(found: dict[Path, str]) -> None:
    for path, text in found.items():
        write_atomically(path, lambda tmp, text=text: tmp.write_bytes(text.encode("utf-8")))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python tools/release.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parent.parent, help="the repository")
    commands = parser.add_subparsers(dest="command", required=True)
    stamp = commands.add_parser("stamp", help="badges and a pinned install cell in every notebook; badges in README")
    stamp.add_argument("--url", required=True, help="https://github.com/OWNER/REPO")
    stamp.add_argument("--tag", required=True, help="the release tag the notebooks install from, e.g. v0.2.0")
    stamp.add_argument("--check", action="store_true", help="write nothing; exit 1 if stamping would change a file")
    commands.add_parser("check", help="exit 1 on an unstamped or damaged file, or on files stamped differently")
    commands.add_parser("unstamp", help="remove every stamp, giving back the files as they were")
    args = parser.parse_args(argv)
    try:
        if args.command == "check":
            found = problems(args.root)
            print("\n".join(found) or "every notebook and README.md carry the same stamp")
            return 1 if found else 0
        url, tag = (repo_url(args.url), release_tag(args.tag)) if args.command == "stamp" else (None, None)
        if tag:
            matches_version(args.root, tag)
        found = changes(args.root, url, tag)
        names = [p.relative_to(args.root).as_posix() for p in found]
        if args.command == "stamp" and args.check:
            print("\n".join(f"{name}: not yet stamped {url} {tag}" for name in names) or f"all stamped {url} {tag}")
            return 1 if found else 0
        write(found)
        print(f"{args.command}: {len(found)} files changed" + "".join(f"\n  {name}" for name in names))
        return 0
    except (ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
