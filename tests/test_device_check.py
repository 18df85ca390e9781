"""tools/device_check.py, the check to run first on a lent GPU: its CPU rehearsal (--quick) runs here end to end, so
that the GPU mode, which is the same code with larger steps, cannot rot; a failing or slow step is reported, never
hidden."""

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("device_check", ROOT / "tools" / "device_check.py")
device_check = importlib.util.module_from_spec(spec)
spec.loader.exec_module(device_check)


def test_the_quick_check_runs_every_step_on_the_cpu_and_writes_its_report(tmp_path):
    copy = tmp_path / "copy"
    proc = subprocess.run(
        [sys.executable, "tools/device_check.py", "--quick", "--report", str(tmp_path), "--copy-to", str(copy)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1200,  # about 20 s on 2 idle cores; the quick steps' limits are generous for a busy CI machine
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    [report] = tmp_path.glob("*-quick.md")
    text = report.read_text()
    assert (copy / report.name).read_text() == text
    assert text.startswith("# Device check: CPU") and "torch" in text
    for name in ("device tests", "notebooks (smoke)", "bench (token GPT)", "train token GPT (smoke preset)"):
        assert f"| {name} | passed |" in text
    assert re.search(r"token +KV cache +1 +49 ", text)  # the bench table is kept: 49 passes at batch 1
    assert '"steps": 30' in text and "30 steps in" in text  # and the training's metrics


def test_a_failing_or_slow_step_is_reported_and_fails_the_check(tmp_path, monkeypatch):
    fake = [
        dict(name="fails", command=[sys.executable, "-c", "import sys; print('boom'); sys.exit(3)"], env={}, limit=30),
        dict(name="hangs", command=[sys.executable, "-c", "import time; time.sleep(30)"], env={}, limit=1),
        dict(name="works", command=[sys.executable, "-c", "print('1 passed in 0.1s')"], env={}, limit=30),
    ]
    monkeypatch.setattr(device_check, "steps", lambda quick, device, work: fake)
    assert device_check.main(["--quick", "--report", str(tmp_path)]) == 1
    text = next(tmp_path.glob("*.md")).read_text()
    assert "| fails | FAILED (exit 3) |" in text and "boom" in text
    assert "| hangs | TIMED OUT after 1 s |" in text
    assert "| works | passed |" in text and "1 passed in 0.1s" in text


def test_without_a_gpu_the_full_check_says_to_use_quick(capsys):
    import torch

    if torch.cuda.is_available():
        return
    assert device_check.main([]) == 2
    assert "--quick" in capsys.readouterr().err
