"""The tables of hvae's benchmarks: the rows of :mod:`benchmarks.suites` as the Markdown of RESULTS.md.

:func:`tables` gives the tables of a run, :func:`write_results` puts them between the markers of
``benchmarks/RESULTS.md`` (the text around them is kept), :func:`extensions_table` the extensions' quality
table; :func:`quality_over_seeds` summarises the quality rows over seeds.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path

from benchmarks.harness import QUIET_STOLEN, TURN_S

HERE = Path(__file__).parent
START, END = "<!-- bench:start -->", "<!-- bench:end -->"


def _paired_iw_lines(pr: dict) -> list[str]:
    rates = pr["samples_per_s"]
    base = rates["32,768 rows per chunk (before)"]
    return [
        f"The same bound three ways, interleaved in one process ({pr['batch']} inputs, K = {pr['K']}, "
        f"{pr['rounds']} rounds, medians; compile: {pr['compile']}):",
        "",
        "| chunks | importance samples/s | against the chunks before |",
        "|---|---:|---:|",
        *(f"| {name} | {r:,.0f} | {r / base:.2f}x |" for name, r in rates.items()),
        "",
    ]


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{x:.0%}"


def _ms(x: float | None) -> str:
    return "—" if x is None else f"{x:.2f}"


def _written(r: dict, rate: str) -> str:
    """The two cells of the floor as written: its rate, and the fraction of it the row reaches."""
    w = r.get(f"written_floor_{rate}")
    return "— | —" if w is None else f"{w:,.0f} | {r['fraction_of_written_floor']:.0%}"


def tables(res: dict) -> str:
    m = res["machine"]
    where = m.get("gpu") or f"{m['cpu']}, {m['threads']} threads"
    peak = res["roofline_gflops"]
    lines = [
        f"Measured {m['date']} at commit {m['commit']} on {where}, torch {m['torch']}, float32. Large-matrix "
        f"roofline: {peak:.0f} GFLOP/s"
        + (f" (bf16: {res['roofline_bf16_gflops']:.0f} GFLOP/s)." if "roofline_bf16_gflops" in res else "."),
        "Rows marked bf16 train under bf16 autocast (`train.precision: bf16`): their floor is their own products"
        " in bf16, their fraction of roofline is of the bf16 roofline.",
        "CPU stolen: the share of the machine's CPU time its hypervisor gave to other work while a row was timed"
        " (`steal` in /proc/stat; — where the machine does not say); a row with much of it reads slow. A row"
        f" timed while it took over {QUIET_STOLEN:.0%} was timed once more, and the timing with the smaller share"
        " kept" + (f". Over the whole run: {_pct(m['cpu_stolen'])}." if m.get("cpu_stolen") is not None else "."),
        "",
        "### Training (forward + backward + Adam step, public API)",
        "",
        "| model | batch | images/s | GFLOP/s | MFLOP/image | fraction of roofline | floor images/s "
        "| fraction of floor | ceiling | optimizer ms | reachable | floor as written, images/s | fraction of it "
        "| CPU stolen |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in res["train"]:
        top = res["roofline_bf16_gflops"] if r.get("precision") == "bf16" else peak
        lines.append(
            f"| {r['name']} | {r['batch']} | {r['images_per_s']:,.0f} | {r['gflops_per_s']:.1f} | "
            f"{r['mflop_per_image']:.2f} | {r['gflops_per_s'] / top:.0%} | {r['floor_images_per_s']:,.0f} | "
            f"{r['fraction_of_floor']:.0%} | {_pct(r.get('ceiling'))} | {_ms(r.get('optimizer_ms'))} | "
            f"{_pct(r.get('reachable'))} | {_written(r, 'images_per_s')} | "
            f"{_pct(r.get('cpu_stolen'))} |"
        )
    if "paired" in res:
        pr = res["paired"]
        lines += [
            "",
            f"hvae against the yardstick, interleaved in one process (batch {pr['batch']}, {pr['rounds']} rounds of "
            f"{pr['block']} steps each, medians):",
            "",
            "| model | ms/step | images/s | speed-up over the yardstick |",
            "|---|---:|---:|---:|",
        ]
        for name, t in pr["step_ms"].items():
            lines.append(
                f"| {name} | {t:.1f} | {1e3 * pr['batch'] / t:,.0f} | {pr['speedup_vs_yardstick'][name]:.2f}x |"
            )
    iw = res["iw"]
    lines += [
        "",
        "### Importance-weighted evaluation (lvae_mnist)",
        "",
        "| chunks | inputs | K | importance samples/s | fraction of floor | ceiling "
        "| floor as written, samples/s | fraction of it | CPU stolen |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        *(
            f"| {'compiled' if r.get('compile') == 'compiled' else 'eager'} | {r['batch']} | {r['K']} | "
            f"{r['samples_per_s']:,.0f} | {r['fraction_of_floor']:.0%} | {_pct(r.get('ceiling'))} | "
            f"{_written(r, 'samples_per_s')} | {_pct(r.get('cpu_stolen'))} |"
            for r in (iw, res.get("iw_compiled"))
            if r is not None
        ),
        "",
        *(_paired_iw_lines(res["paired_iw"]) if "paired_iw" in res else []),
        f"Memory the bound takes above the model's own, against K ({res['memory_vs_k'][0]['batch']} inputs, "
        "automatic chunks): "
        + ", ".join(f"K={r['K']}: {r['extra_memory_mb']:.0f} MB" for r in res["memory_vs_k"])
        + (
            f"; with 32,768 rows per chunk (before) K={res['memory_before']['K']}: "
            f"{res['memory_before']['extra_memory_mb']:.0f} MB."
            if "memory_before" in res
            else "."
        ),
        "",
        "### Time per training step against depth (latent 32, hidden 256 per level)",
        "",
        "| levels | " + " | ".join(str(r["layers"]) for r in res["depth"]) + " |",
        "|---|" + "---:|" * len(res["depth"]),
        "| ms/step | " + " | ".join(f"{r['step_ms']:.1f}" for r in res["depth"]) + " |",
    ]
    if "quality" in res:
        lines += quality_lines(res)
    return "\n".join(lines)


def quality_lines(res: dict) -> list[str]:
    """The quality-per-budget tables: one row per model and seed, then the means over seeds."""
    q = res["quality"]
    lines = [
        "",
        f"### Quality per budget ({res['quality_budget_s'] / 60:.1f} min of training each"
        + (f", the models taking turns of {TURN_S:.0f} s" if "train_s" in res["quality"][0] else "")
        + ", dynamically binarised, test set binarised once with a fixed seed)",
        "",
        *(
            [f"Measured {res['quality_from']} (this run did not repeat it: `--quality`).", ""]
            if "quality_from" in res
            else []
        ),
        "| model | seed | steps | epochs | IW bound (nats) | against the yardstick (paired) | K | test images "
        "| active units per level | compile |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for r in q:
        paired = f"{r['vs_yardstick']:+.2f} ± {r['vs_yardstick_stderr']:.2f}" if "vs_yardstick" in r else "—"
        lines.append(
            f"| {r['model']} | {r.get('seed', 0)} | {r['steps']} | {r['epochs']} | {r['iw_bound']:.2f} ± "
            f"{r['iw_stderr']:.2f} | {paired} | {r['K']} | {r['test_examples']} | {r.get('active_units', '—')} | "
            f"{r.get('compile', 'eager')} |"
        )
    if any("vs_yardstick" in r for r in q):
        lines += [
            "",
            "± after a bound: the standard error over test images; against the yardstick: the mean per-image "
            "difference and its standard error (the same images for every model and the same seed: the "
            "seed sets the initialisation and the training noise; one training run per row, so run-to-run "
            "variation is not in it).",
        ]
    summary = quality_over_seeds(q)
    if any(len(r["seeds"]) > 1 for r in summary):
        lines += [
            "",
            "Over seeds (means; ± the standard error over seeds):",
            "",
            "| model | seeds | steps | IW bound (nats) | against the yardstick | per seed |",
            "|---|---|---:|---:|---:|---|",
        ]
        for r in summary:
            vs, per = "—", "—"
            if "vs_yardstick" in r:
                vs = f"{r['vs_yardstick']:+.2f}"
                if "vs_yardstick_stderr_seeds" in r:  # a model trained from one seed has no error over seeds
                    vs += f" ± {r['vs_yardstick_stderr_seeds']:.2f}"
                per = ", ".join(f"{d:+.2f}" for d in r["vs_yardstick_per_seed"])
            seeds = ", ".join(map(str, r["seeds"]))
            lines.append(f"| {r['model']} | {seeds} | {r['steps']:,.0f} | {r['iw_bound']:.2f} | {vs} | {per} |")
    return lines


def quality_over_seeds(rows: list[dict]) -> list[dict]:
    """Per model, the mean over seeds of its steps, bound and difference from the yardstick, with the standard
    error over seeds of that difference (what a single run's paired error leaves out: how much training
    from another initialisation and noise moves the result)."""
    out = []
    for name in dict.fromkeys(r["model"] for r in rows):
        runs = [r for r in rows if r["model"] == name]
        row = {
            "model": name,
            "seeds": [r.get("seed", 0) for r in runs],
            "steps": statistics.mean(r["steps"] for r in runs),
            "iw_bound": statistics.mean(r["iw_bound"] for r in runs),
        }
        diffs = [r["vs_yardstick"] for r in runs if "vs_yardstick" in r]
        if diffs:
            row["vs_yardstick"] = statistics.mean(diffs)
            row["vs_yardstick_per_seed"] = diffs
            if len(diffs) > 1:
                row["vs_yardstick_stderr_seeds"] = statistics.stdev(diffs) / math.sqrt(len(diffs))
        out.append(row)
    return out


EXT_START, EXT_END = "<!-- extensions:start -->", "<!-- extensions:end -->"


def extensions_table(rows: list[dict], budget_s: float) -> str:
    """The extensions' quality table: each trained for the same wall-clock budget as the Ladder VAE."""
    r0 = rows[0]
    lines = [
        f"{budget_s / 60:.1f} min of training each (batch 32) on dynamically binarised Fashion-MNIST, then the IW "
        f"bound with K = {r0['K']} on {_test_images(r0['test_examples'])} (binarised once with a fixed "
        "seed); the same images for every model.",
        "",
        "| model | steps | epochs | IW bound (nats) | active units per level |",
        "|---|---:|---:|---:|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['steps']} | {r['epochs']} | {r['iw_bound']:.2f} ± {r['iw_stderr']:.2f} | "
            f"{r.get('active_units', '—')} |"
        )
    return "\n".join(lines)


def _test_images(n: int) -> str:
    return f"all {n:,} test images" if n == 10_000 else f"the first {n:,} test images"


def replace_between(text: str, start: str, end: str, body: str) -> str:
    if start not in text:
        text += f"\n{start}\n{end}\n"
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{start}\n{body}\n{end}{tail}"


def write_results(res: dict, path: Path = HERE / "RESULTS.md") -> None:
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    path.write_text(replace_between(text, START, END, tables(res)))
