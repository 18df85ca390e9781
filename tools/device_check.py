"""The device check: what to run first whenever a GPU is lent, in about eight minutes, and the report to commit.

On one CUDA GPU it runs, each step with its own time limit:
  1. the device-dependent tests (tests/test_device.py, tests/test_precision.py) on that device;
  2. every notebook in the smoke preset under nbval, as CI runs them, on that device;
  3. `python -m minigen.bench --compile` for the token GPT (eager, KV cache, compiled: CUDA graphs);
  4. one gpu-preset training run of the token GPT, timed (on the shipped VQ tokenizer, so it times the GPT alone);
and writes a short Markdown report (GPU, torch, each step's result and time, the bench table, the training time)
to docs/devices/, for the next commit to keep. `--quick` runs the same steps on the CPU, smaller (a few tests, one
notebook, the smoke preset): CI runs it so that the check cannot rot.

It needs only Python with torch, numpy, matplotlib and tqdm: what else the steps need (pytest, nbval, ipykernel,
ipywidgets and what they import) comes as wheels. Prepare them here, where pip reaches a registry, then on the GPU
machine (Python 3.12 there; see README, "A GPU check"):

    python tools/device_check.py wheels --python-version 3.12      # here: .whl/ (git-ignored), about 15 MB
    python3 tools/device_check.py --wheels .whl                     # there, from the repository root
    python tools/device_check.py --quick --report /tmp/report       # anywhere: the CPU rehearsal
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import importlib.util
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "notebooks").glob("[01][0-9]_*.ipynb"))
# what the steps import beyond torch, numpy, matplotlib and tqdm, which the GPU image lacks (its package list:
# the device tool's KINDS.md); binary wheels are fetched for the GPU machine's platform, the rest are pure Python
WHEELS = [
    "nbval", "nbformat", "fastjsonschema", "jsonschema", "jsonschema-specifications", "referencing", "rpds-py",
    "jupyter-client", "jupyter-core", "platformdirs", "traitlets", "pyzmq", "tornado", "ipykernel", "comm", "debugpy",
    "ipython", "ipython-pygments-lexers", "jedi", "parso", "matplotlib-inline", "pexpect", "ptyprocess",
    "prompt-toolkit", "wcwidth", "stack-data", "asttokens", "executing", "pure-eval", "nest-asyncio2", "tzdata",
    "ipywidgets", "widgetsnbextension", "jupyterlab-widgets",
]  # fmt: skip
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64"]


def steps(quick: bool, device: str, work: Path) -> list[dict]:
    """The steps of the check: name, command, extra environment, time limit in seconds."""
    py = sys.executable
    parallel = ["-n", "4", "--dist", "loadfile"] if importlib.util.find_spec("xdist") and not quick else []
    tests = ["tests/test_device.py", "tests/test_precision.py"]
    select = ["-k", "checkpoint or samplers or classifier"] if quick else []
    tokenizer = work / "vq.pt"
    return [
        dict(
            name="device tests",
            command=[py, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests, *select],
            env={"MINIGEN_TEST_DEVICE": device},
            limit=300 if quick else 150,
        ),
        dict(
            name="notebooks (smoke)",
            command=[py, "-m", "pytest", "-q", "-p", "no:cacheprovider", *parallel]
            + (NOTEBOOKS[:1] if quick else NOTEBOOKS),
            env={"MINIGEN_SMOKE": "1", "MINIGEN_DEVICE": device, "TQDM_DISABLE": "1"},
            limit=300 if quick else 200,
        ),
        dict(
            name="bench (token GPT)",
            command=[py, "-m", "minigen.bench", "--paradigms", "token", "--batches", "1", "64", "--samples", "0"]
            + ["--preset", "smoke" if quick else "gpu", "--device", device]
            + ([] if quick else ["--compile"]),
            env={"MINIGEN_DATA": str(work / "data")},
            limit=240 if quick else 120,
            keep="table",
        ),
        dict(
            name="train token GPT (%s preset)" % ("smoke" if quick else "gpu"),
            prepare=lambda: export_tokenizer(tokenizer),
            command=[py, "-m", "minigen", "train", "token", "--preset", "smoke" if quick else "gpu"]
            + ["--device", device, "--tokenizer", str(tokenizer), "--out", str(work / "token"), "--n", "16"],
            env={"MINIGEN_DATA": str(work / "data"), "TQDM_DISABLE": "1"},
            limit=240 if quick else 150,
            keep="training",
        ),
    ]


def export_tokenizer(path: Path):
    """The shipped cpu-preset VQ tokenizer as a checkpoint the CLI's --tokenizer takes."""
    from minigen.registry import load_model_shipped
    from minigen.train import save_checkpoint

    model = load_model_shipped("02_vq_cpu", device="cpu")
    if model is None:
        raise RuntimeError("the shipped tokenizer 02_vq_cpu did not load")
    save_checkpoint(path, model, step=1)


def run_step(step: dict, env: dict) -> dict:
    """Run one step with its time limit; its result, seconds and the tail of its output."""
    t0 = time.perf_counter()
    try:
        if "prepare" in step:
            step["prepare"]()
        run_env, limit = {**env, **step["env"]}, step["limit"]
        proc = subprocess.run(step["command"], cwd=ROOT, env=run_env, capture_output=True, text=True, timeout=limit)
        output = proc.stdout + proc.stderr
        result = "passed" if proc.returncode == 0 else f"FAILED (exit {proc.returncode})"
    except subprocess.TimeoutExpired as err:
        output = (err.stdout or b"").decode() if isinstance(err.stdout, bytes) else (err.stdout or "")
        result = f"TIMED OUT after {step['limit']} s"
    except Exception as err:  # the preparation: one line in the report, the check goes on
        output, result = f"{type(err).__name__}: {err}", "FAILED (preparation)"
    return {"name": step["name"], "result": result, "seconds": time.perf_counter() - t0, "output": output}


def summary_line(step: dict, output: str) -> str:
    """A training run's steps and seconds; else pytest's last line ("12 passed in 3.1s") or the last line."""
    found = dict(re.findall(r'"(steps|train_seconds|samples_per_second)": ([0-9.]+)', output))
    if step.get("keep") == "training" and len(found) == 3:
        seconds, rate = float(found["train_seconds"]), float(found["samples_per_second"])
        return f"{found['steps']} steps in {seconds:.1f} s of training; sampling {rate:.0f} images/s"
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    return lines[-1][:160] if lines else ""


def kept(step: dict, output: str) -> str:
    """What the report keeps of a step's output: the bench's table, the training's last metrics."""
    lines = output.splitlines()
    if step.get("keep") == "table":
        start = next((i for i, line in enumerate(lines) if line.lstrip().startswith("paradigm")), None)
        return "\n".join(lines[start:] if start is not None else lines[-25:])
    if step.get("keep") == "training":
        return "\n".join(line for line in lines if '"' in line and ":" in line)[-2000:]
    return ""


def environment(device: str) -> dict:
    import torch

    gpu = torch.cuda.get_device_name(0) if device.startswith("cuda") and torch.cuda.is_available() else None
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    return {
        "device": gpu or f"CPU ({os.cpu_count()} cores)",
        "torch": torch.__version__,
        "cuda": torch.version.cuda or "none",
        "python": platform.python_version(),
        "commit": commit.stdout.strip() or "unknown",
        "date": datetime.date.today().isoformat(),
    }


def report(env: dict, plan: list, results: list, quick: bool) -> str:
    total = sum(r["seconds"] for r in results)
    mode = "quick (CPU rehearsal)" if quick else "full"
    lines = [
        f"# Device check: {env['device']}, {env['date']}",
        "",
        f"`python tools/device_check.py{' --quick' if quick else ''}` ({mode}) at commit {env['commit']}: "
        f"torch {env['torch']}, CUDA {env['cuda']}, Python {env['python']}; {total:.0f} s in all.",
        "",
        "| step | result | seconds | summary |",
        "|---|---|---:|---|",
    ]
    lines += [
        f"| {r['name']} | {r['result']} | {r['seconds']:.0f} | {summary_line(step, r['output']).replace('|', '/')} |"
        for r, step in zip(results, plan)
    ]
    for r, step in zip(results, plan):
        extract = kept(step, r["output"]) if r["result"] == "passed" else "\n".join(r["output"].splitlines()[-30:])
        if extract:
            lines += ["", f"## {r['name']}", "", "```", extract, "```"]
    return "\n".join(lines) + "\n"


def install_wheels(folder: Path) -> dict:
    """Install the wheels in `folder` into a private site folder; the environment the steps then run in."""
    target = Path(tempfile.gettempdir()) / "minigen-device-site"
    wheels = sorted(str(p) for p in folder.glob("*.whl"))
    if not wheels:
        raise SystemExit(f"no wheels in {folder}: run `python tools/device_check.py wheels` where pip has a registry")
    pip = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile", "--upgrade"]
    subprocess.run([*pip, "--target", str(target), *wheels], check=True)
    return {"PYTHONPATH": os.pathsep.join([str(target), str(ROOT), os.environ.get("PYTHONPATH", "")])}


def download_wheels(folder: Path, python_version: str) -> int:
    """pip download the WHEELS, at the versions installed here, for the GPU machine's Python and platform."""
    folder.mkdir(parents=True, exist_ok=True)
    pinned = [f"{name}=={importlib.metadata.version(name)}" for name in WHEELS]
    platforms = [arg for p in PLATFORMS for arg in ("--platform", p)]
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d", str(folder)]
    command += ["--python-version", python_version, "--implementation", "cp", *platforms, *pinned]
    return subprocess.run(command).returncode


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", nargs="?", choices=["check", "wheels"], default="check")
    parser.add_argument("--quick", action="store_true", help="the CPU rehearsal: smaller steps, on the CPU")
    parser.add_argument("--device", default=None, help="default: cuda (full), cpu (--quick)")
    parser.add_argument("--wheels", type=Path, default=None, help="install the wheels in this folder first")
    parser.add_argument("--into", type=Path, default=ROOT / ".whl", help="with `wheels`: the folder (default .whl)")
    parser.add_argument("--report", type=Path, default=ROOT / "docs" / "devices", help="folder for the report")
    parser.add_argument("--copy-to", type=Path, default=None, help="also copy the report into this folder")
    parser.add_argument("--python-version", default="3.12", help="with `wheels`: the GPU machine's Python")
    args = parser.parse_args(argv)
    if args.action == "wheels":
        return download_wheels(args.into, args.python_version)
    device = args.device or ("cpu" if args.quick else "cuda")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    if args.wheels is not None:
        env.update(install_wheels(args.wheels))
    sys.path[:0] = [p for p in env["PYTHONPATH"].split(os.pathsep) if p]
    setup = environment(device)
    if device.startswith("cuda") and setup["device"].startswith("CPU"):
        print("no CUDA GPU here: run with --quick for the CPU rehearsal", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="minigen-device-check-"))
    plan, results = steps(args.quick, device, work), []
    try:
        for step in plan:
            print(f"[device check] {step['name']} (limit {step['limit']} s) ...", flush=True)
            results.append(run_step(step, env))
            print(f"[device check] {results[-1]['result']} in {results[-1]['seconds']:.0f} s", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    text = report(setup, plan, results, args.quick)
    slug = re.sub(r"[^a-z0-9]+", "-", setup["device"].lower()).strip("-")
    args.report.mkdir(parents=True, exist_ok=True)
    path = args.report / f"{setup['date']}-{slug}{'-quick' if args.quick else ''}.md"
    path.write_text(text)
    if args.copy_to is not None:
        args.copy_to.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, args.copy_to / path.name)
    print(text)
    print(f"wrote {path}")
    return 0 if all(r["result"] == "passed" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
