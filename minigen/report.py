"""The benchmark's report: its rows (what each holds), the side-by-side speed-ups worked out from them, and the
report as text: a line per measured row with the ratios, a summary per sampler, and the Markdown table of README
and notebook 09. `python -m minigen.bench` measures; this module only shapes and formats what it measured."""

from __future__ import annotations


def _cell(value, fmt: str) -> str:
    return format(value, fmt) if isinstance(value, (int, float)) and value == value else ""


def summary(report: dict) -> list[dict]:
    """One entry per (paradigm, variant): passes, ms per image at batch 1, images/s at the largest batch,
    and the quality columns (None where not measured)."""
    out = {}
    for r in report["rows"]:
        key = (r["paradigm"], r["variant"])
        if key not in out:
            cost = dict(passes=r["passes"], head_passes=r.get("head_passes"), ms_batch1=None, batch=0)
            quality = {k: r.get(k) for k in ("fid", "class_accuracy", "nll", "nll_over", "acceptance")}
            out[key] = dict(paradigm=r["paradigm"], variant=r["variant"], **cost, images_per_second=None, **quality)
        entry = out[key]
        if r["batch"] == 1:
            entry["ms_batch1"] = 1e3 * r["seconds_per_batch"]
        if r["batch"] > entry["batch"]:
            entry.update(batch=r["batch"], images_per_second=r["images_per_second"])
    order = list(report["titles"])  # the course's order, whatever order the run had
    return sorted(out.values(), key=lambda e: order.index(e["paradigm"]))


def markdown_table(report: dict) -> str:
    """The summary as a Markdown table (README, notebook 09), device and preset named above it."""
    big = max(r["batch"] for r in report["rows"])
    lines = [
        f"Device: {report['device']}, torch {report['torch']}, preset `{report['preset']}`, "
        f"{report['samples']} samples per row.",
        "",
        f"| paradigm | sampler | sequential passes | ms / image (batch 1) | images / s (batch {big}) | "
        "classifier FID ↓ | class accuracy | test NLL (nats / image) |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for e in summary(report):
        passes = f"{e['passes']} + {e['head_passes']} head" if e["head_passes"] else f"{e['passes']}"
        nll = f"{e['nll']:.1f} ({e['nll_over']})" if e["nll"] is not None else "—"
        ms = _cell(e["ms_batch1"], ".1f") or "—"
        speed = _cell(e["images_per_second"], ".0f") if e["batch"] == big else "—"
        quality = f"{_cell(e['fid'], '.0f') or '—'} | {_cell(e['class_accuracy'], '.0%') or '—'} | {nll}"
        lines.append(f"| {report['titles'][e['paradigm']]} | {e['variant']} | {passes} | {ms} | {speed} | {quality} |")
    return "\n".join(lines)


def row(paradigm: str, variant: str, batch: int, passes, seconds: float, **extra) -> dict:
    """One measured row of the report (the keys the functions here read): what was timed, its sequential passes
    per image, its speed, then `extra` (trained, quality, NLL...)."""
    speed = dict(seconds_per_batch=seconds, images_per_second=batch / seconds)
    return dict(paradigm=paradigm, variant=variant, batch=batch, passes=passes, **speed, **extra)


def ratios(rows: list[dict], pairs, batches) -> list[dict]:
    """Side-by-side speed-ups: for each (name, slow paradigm, slow variant, fast paradigm, fast variant) in `pairs`
    and each batch size where both rows were measured, the slow row's seconds over the fast row's."""
    seconds = {(r["paradigm"], r["variant"], r["batch"]): r["seconds_per_batch"] for r in rows}
    out = []
    for name, slow_paradigm, slow_variant, fast_paradigm, fast_variant in pairs:
        for batch in batches:
            slow, fast = (slow_paradigm, slow_variant, batch), (fast_paradigm, fast_variant, batch)
            if slow in seconds and fast in seconds:
                out.append(dict(ratio=name, batch=batch, speedup=seconds[slow] / seconds[fast]))
    return out


def format_report(report: dict) -> str:
    """The report as text: one line per row, what the columns mean, then the side-by-side ratios."""
    vw = max([12] + [len(r["variant"]) for r in report["rows"]])  # variant column: as wide as its longest label
    rw = max([48] + [len(r["ratio"]) for r in report["ratios"]])
    lines = [
        f"device: {report['device']} | torch {report['torch']} | preset {report['preset']} | "
        f"repeats {report['repeats']} | models {report.get('models', 'fresh')}",
        "",
        f"{'paradigm':<12} {'variant':<{vw}} {'batch':>5} {'passes':>6} {'ms/batch':>10} {'images/s':>10} "
        f"{'accept':>7} {'FID':>7} {'acc':>6} {'NLL':>7}",
    ]
    for r in report["rows"]:
        lines.append(
            f"{r['paradigm']:<12} {r['variant']:<{vw}} {r['batch']:>5} {r['passes']:>6} "
            f"{1e3 * r['seconds_per_batch']:>10.1f} {r['images_per_second']:>10.1f} "
            f"{_cell(r.get('acceptance'), '.2f'):>7} {_cell(r.get('fid'), '.1f'):>7} "
            f"{_cell(r.get('class_accuracy'), '.1%'):>6} {_cell(r.get('nll'), '.1f'):>7}"
        )
    if any(r["paradigm"] == "mar" for r in report["rows"]):
        lines.append(
            "mar: passes are transformer passes; each is followed by S sequential denoising-head calls "
            "(K=16 S=50: 800 head calls per image)"
        )
    if any(r["paradigm"] == "speculative" and not r["trained"] for r in report["rows"]):
        lines.append(
            "speculative rows use untrained models, so acceptance means nothing: pass "
            "--checkpoint token=PATH --checkpoint draft=PATH"
        )
    overs = sorted({f"{r['paradigm']}: {r['nll_over']}" for r in report["rows"] if "nll_over" in r})
    if overs:
        lines.append("NLL: test nats per image over what the model generates (" + "; ".join(overs) + ")")
    if report.get("yardstick"):
        y = report["yardstick"]
        floors = ", ".join(f"{k} {v:.1f}" for k, v in y["floor_fid"].items())
        lines.append(
            f"FID / acc: classifier FID (digit-domain, not Inception) and class accuracy of "
            f"{report['samples']} class-balanced samples against the test digits of the model's kind | "
            f"classifier test accuracy {y['classifier_test_accuracy']:.1%} | "
            f"floor (500 training digits): {floors} | uniform noise {y['noise_fid']:.0f}"
        )
    lines += ["", f"{'side by side':<{rw}} {'batch':>5} {'speed-up':>9}"]
    for r in report["ratios"]:
        lines.append(f"{r['ratio']:<{rw}} {r['batch']:>5} {r['speedup']:>8.2f}x")
    return "\n".join(lines)
