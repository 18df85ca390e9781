"""The GitHub workflow (.github/workflows/): actionlint finds nothing in it, with ShellCheck reading its `run:`
scripts, and it runs the README's test command verbatim, as .ci/run does. Planted mistakes show that actionlint
really reads the file: a clean run could otherwise mean it checked nothing.

actionlint and shellcheck come from the dev extra (PyPI packages that carry the binaries), so the check runs the
same offline, in .ci/run and on GitHub. A second or so.
"""

import re
import subprocess
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yml"))
SCRIPTS = Path(sysconfig.get_path("scripts"))  # where pip put this environment's actionlint and shellcheck


def actionlint(*files: Path, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    # shellcheck named explicitly: actionlint would otherwise use whichever one is on PATH, or silently none
    tool, shellcheck = SCRIPTS / "actionlint", SCRIPTS / "shellcheck"
    if not (tool.exists() and shellcheck.exists()):
        pytest.fail(f"actionlint or shellcheck is missing from {SCRIPTS}: pip install -e '.[dev]'")
    cmd = [tool, "-no-color", "-shellcheck", shellcheck, *files]
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, cwd=cwd)


def test_workflows_pass_actionlint():
    assert WORKFLOWS, "no workflow in .github/workflows/"
    result = actionlint(*WORKFLOWS)
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


# (what the mistake replaces, with what, a piece of actionlint's finding)
PLANTED = {
    "unknown key": ("timeout-minutes:", "timeout-minute:", 'unexpected key "timeout-minute"'),
    "undefined context": ("${{ github.workflow }}", "${{ github.wrokflow }}", 'property "wrokflow" is not defined'),
    # for ShellCheck: a URL whose '?' is a glob, assigned unquoted
    "shell script": ('api="http://127.0.0.1:8888/api/contents"', "api=http://a/b?c=0", "SC2125"),
}


@pytest.mark.parametrize("mistake", PLANTED)
def test_actionlint_catches_a_planted_mistake(mistake, tmp_path):
    old, new, finding = PLANTED[mistake]
    text = (ROOT / ".github" / "workflows" / "ci.yml").read_text()
    assert text.count(old) == 1, f"the workflow no longer has {old!r}: plant the mistake elsewhere"
    planted = tmp_path / ".github" / "workflows" / "ci.yml"
    planted.parent.mkdir(parents=True)
    planted.write_text(text.replace(old, new))
    result = actionlint(planted, cwd=tmp_path)
    assert result.returncode == 1 and finding in result.stdout, result.stdout + result.stderr


def test_workflow_runs_the_readme_test_command_as_ci_does():
    # the README's test command: the one line of its shell blocks that runs pytest
    blocks = re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    commands = [line.strip() for block in blocks for line in block.splitlines() if "python -m pytest" in line]
    assert len(commands) == 1, commands
    for runner in (ROOT / ".ci" / "run", *WORKFLOWS):
        assert commands[0] in [line.strip() for line in runner.read_text().splitlines()], runner.name
