"""``hvae report``: one self-contained HTML page about a run directory.

The page holds the resolved config, the data, learning curves, the evaluation numbers, and pictures of
what the model does: samples at several temperatures, reconstructions, and keep-top-k grids that show what
each level of latents holds. Every image is an embedded PNG data URI; there is no external CSS or JS.
"""

from __future__ import annotations

import html
import io
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml
from matplotlib.figure import Figure
from torch import Tensor

from hvae.configbase import load_yaml
from hvae.data import DataConfig, DataError, Dataset, load_dataset
from hvae.data.sources import modality
from hvae.files import atomic_write_text
from hvae.model import HierarchicalVAE
from hvae.report.images import images_to_uri, png_data_uri, to_images
from hvae.report.ood import ood_section
from hvae.rundir import RunDir

TEMPERATURES = (1.0, 0.8, 0.6, 0.0)
NUM_RECONSTRUCTIONS = 16
NUM_KEEP_TOP = 8

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: 0.2em; margin-top: 1.6em; }
pre { background: #f6f6f6; padding: 0.8em; overflow-x: auto; font-size: 0.85em; }
table { border-collapse: collapse; margin: 0.6em 0; } td, th { border: 1px solid #ddd; padding: 0.25em 0.6em; }
th { background: #f0f0f0; text-align: left; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
img.grid { image-rendering: pixelated; display: block; } figure { display: inline-block; margin: 0.5em 1em 0.5em 0; }
figcaption, .note { color: #555; font-size: 0.9em; } .warn { color: #a33; }
"""


# ---------------------------------------------------------------------------------------------------- inputs


@dataclass
class _Run:
    """Everything read from a run directory."""

    path: Path
    config: dict
    model: HierarchicalVAE
    dataset: Dataset | None
    data_note: str
    train: list[dict] = field(default_factory=list)
    val: list[dict] = field(default_factory=list)
    metrics_note: str = ""
    evaluation: dict | None = None
    model_note: str = ""  # why the model is a checkpoint's (training stopped early)


def _read_config(run: RunDir) -> dict:
    run.require()  # a missing run or config.yaml is named, with how to make one
    cfg = load_yaml(run.config_path.read_text()) or {}
    if not isinstance(cfg, dict):
        raise ValueError(f"{run.config_path} must hold a mapping with sections model, data, train, eval")
    return cfg


def _load_data(cfg: dict) -> tuple[Dataset | None, str]:
    """The run's dataset, or None and the reason (a report on a copied run dir need not have the data)."""
    if not isinstance(cfg.get("data"), dict):
        return None, "config.yaml has no data section: no test inputs, so no reconstructions."
    try:
        return load_dataset(DataConfig.from_dict(cfg["data"])), ""
    except (DataError, OSError) as e:
        return None, f"the data could not be loaded ({e}): no test inputs, so no reconstructions."


def _read_metrics(run: RunDir) -> tuple[list[dict], list[dict], str]:
    """Train and val records of ``metrics.jsonl``, sorted by step, and a note on what was missing or skipped
    (a damaged line is named in the words ``hvae train --resume`` uses)."""
    path = run.metrics_path
    if not path.is_file():
        return [], [], f"no {path.name} in the run directory: no learning curves."
    m = run.read_metrics()
    records = [r for r in m.records if isinstance(r.get("step"), (int, float))]
    notes = []
    if m.damaged:
        notes.append(f"{m.damage_message(path)}; the curves leave it out.")
    if m.cut_short is not None:
        notes.append(f"{path.name} line {m.cut_short} was cut short (the run stopped while writing it); left out.")
    by_split = {
        s: sorted((r for r in records if r.get("split") == s), key=lambda r: r["step"]) for s in ("train", "val")
    }
    return by_split["train"], by_split["val"], " ".join(notes)


def _read_run(run_dir: Path, device: str) -> _Run:
    run = RunDir(run_dir)
    cfg = _read_config(run)
    model, model_note = run.load_model(device)
    dataset, data_note = _load_data(cfg)
    train, val, metrics_note = _read_metrics(run)
    return _Run(
        run_dir, cfg, model.eval(), dataset, data_note, train, val, metrics_note, run.read_eval(), model_note or ""
    )


# ---------------------------------------------------------------------------------------------------- HTML bits


def _esc(x: object) -> str:
    return html.escape(str(x))


def _fmt(v: object) -> str:
    if isinstance(v, float):
        return f"{v:.5g}" if math.isfinite(v) else str(v)
    return str(v)


def _table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """An HTML table; numbers right-aligned."""
    head = "".join(f"<th>{_esc(h)}</th>" for h in header)
    body = []
    for row in rows:
        cells = []
        for v in row:
            num = isinstance(v, (int, float)) and not isinstance(v, bool)
            cells.append(f'<td class="num">{_esc(_fmt(v))}</td>' if num else f"<td>{_esc(_fmt(v))}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def _img(uri: str, alt: str, css: str = "grid") -> str:
    return f'<img class="{css}" src="{uri}" alt="{_esc(alt)}">'


def _figure(uri: str, caption: str, css: str = "grid") -> str:
    return f"<figure>{_img(uri, caption, css)}<figcaption>{_esc(caption)}</figcaption></figure>"


def _note(text: str, css: str = "note") -> str:
    return f'<p class="{css}">{_esc(text)}</p>' if text else ""


def _section(anchor: str, title: str, body: str) -> str:
    return f'<section id="{anchor}"><h2>{_esc(title)}</h2>\n{body}\n</section>'


def _plot_uri(fig: Figure) -> str:
    """A matplotlib figure as a PNG data URI (the Agg canvas; no pyplot, no global backend state)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return png_data_uri(buf.getvalue())


# ---------------------------------------------------------------------------------------------------- sections


def _overview(r: _Run) -> str:
    m = r.model
    cfg = m.config
    n_params = sum(p.numel() for p in m.parameters())
    shapes = ", ".join(f"z_{i + 1}: {tuple(layer.latent_shape)}" for i, layer in enumerate(m.layers))
    model_rows: list[list[object]] = [
        ["levels L", len(m.layers)],  # none in a decoder-only model
        ["inference / block / likelihood", f"{cfg.inference} / {cfg.block} / {cfg.likelihood}"],
        ["data shape", str(m.data_shape)],
        ["latent shapes (bottom to top)", shapes],
        ["parameters", n_params],
        ["training steps", int(m.step)],
    ]
    body = f"<h3>Model</h3>{_note(r.model_note, 'warn')}{_table(['', ''], model_rows)}<h3>Data</h3>{_data_summary(r)}"
    return _section("overview", "Run", body)


def _config(r: _Run) -> str:
    """The resolved config, folded: a long column that readers open when they need it, after the results."""
    text = _esc(yaml.safe_dump(r.config, sort_keys=False))
    return _section(
        "config", "Config", f"<details><summary>Resolved config (config.yaml)</summary><pre>{text}</pre></details>"
    )


def _data_summary(r: _Run) -> str:
    d = r.dataset
    if d is None:
        return _note(r.data_note, "warn")
    c = d.config
    prep = [f"binarize: {c.binarize}"] + [k for k in ("dequantize", "standardize", "flatten") if getattr(c, k)]
    rows: list[list[object]] = [
        ["source", c.source + (f" ({c.path})" if c.path else "")],
        ["example shape", str(d.shape)],
        ["examples (train / val / test)", f"{len(d.train)} / {len(d.val)} / {len(d.test)}"],
        ["intensity levels", "continuous" if d.levels is None else d.levels],
        ["preprocessing", ", ".join(prep)],
    ]
    return _table(["", ""], rows)


def _curve_plots(train: list[dict], val: list[dict]) -> list[str]:
    """Two figures: loss and ELBO vs step; per-level KL vs step (one line per level)."""
    fig = Figure(figsize=(11, 3.6))
    ax_loss, ax_elbo = fig.subplots(1, 2)
    for ax, key, recs in ((ax_loss, "loss", [("train", train)]), (ax_elbo, "elbo", [("train", train), ("val", val)])):
        for name, rs in recs:
            pts = [(r["step"], r[key]) for r in rs if isinstance(r.get(key), (int, float))]
            if pts:
                ax.plot(*zip(*pts), label=name, marker="o" if name == "val" else None, ms=3)
        ax.set_xlabel("step")
        ax.set_ylabel(f"{key} (nats per example)")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend()
    ax_loss.set_title("training loss (-ELBO with beta, free bits)")
    ax_elbo.set_title("ELBO")
    uris = [_figure(_plot_uri(fig), "loss and ELBO per step", css="plot")]
    kl_uri = _kl_plot(train, val)
    if kl_uri:
        uris.append(_figure(kl_uri, "KL per level over training (nats per example)", css="plot"))
    return uris


def _kl_plot(train: list[dict], val: list[dict]) -> str | None:
    fig = Figure(figsize=(11, 3.6))
    ax = fig.subplots()
    for name, rs, style in (("train", train, "-"), ("val", val, "--")):
        rs = [r for r in rs if isinstance(r.get("kl"), list)]
        if not rs:
            continue
        for l in range(max(len(r["kl"]) for r in rs)):
            pts = [(r["step"], r["kl"][l]) for r in rs if len(r["kl"]) > l]
            ax.plot(*zip(*pts), style, color=f"C{l}", label=f"{name} KL z_{l + 1}")
    if not ax.lines:
        return None
    ax.set_xlabel("step")
    ax.set_ylabel("KL (nats per example)")
    ax.grid(alpha=0.3)
    ax.legend(ncol=2, fontsize="small")
    return _plot_uri(fig)


def _curves(r: _Run) -> str:
    if not r.train and not r.val:
        return _section(
            "curves", "Learning curves", _note(r.metrics_note or "metrics.jsonl holds no train/val records.")
        )
    body = _note(r.metrics_note) + "".join(_curve_plots(r.train, r.val))
    return _section("curves", "Learning curves", body)


def _flatten(d: dict, prefix: str = "") -> dict:
    """Nested mapping -> one level with dotted keys."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _is_scalar(v: object) -> bool:
    return v is None or isinstance(v, (int, float, str, bool))


def _evaluation(r: _Run) -> str:
    if r.evaluation is None:
        hint = f"No eval.json yet: run `hvae eval {r.path}` to add test-set numbers."
        return _section("evaluation", "Evaluation", _note(hint))
    flat = _flatten(r.evaluation)
    per_layer = {k: v for k, v in flat.items() if isinstance(v, list) and v and all(map(_is_scalar, v))}
    lengths = {len(v) for v in per_layer.values()}
    if len(lengths) > 1:  # lists of different lengths are not per-level columns; show them whole
        per_layer = {k: v for k, v in per_layer.items() if len(v) == r.model.config.num_layers}
    scalars = [[k, v if _is_scalar(v) else json.dumps(v)] for k, v in flat.items() if k not in per_layer]
    body = _table(["quantity", "value"], scalars) if scalars else ""
    measured, now = r.evaluation.get("step"), int(r.model.step)
    if isinstance(measured, int) and measured != now:  # trained on (or resumed) after the evaluation
        body = (
            _note(
                f"These numbers are of the model at step {measured}; the model reported here is at step {now}. "
                f"Run `hvae eval {r.path}` again for its own."
            )
            + body
        )
    if per_layer:
        n = max(len(v) for v in per_layer.values())
        rows = [[f"z_{l + 1}"] + [v[l] if l < len(v) else "" for v in per_layer.values()] for l in range(n)]
        body += "<h3>Per level (z_1 nearest the data)</h3>" + _table(["level", *per_layer], rows)
        chart = _active_units_plot(per_layer)
        if chart:
            body += _figure(chart, "active units per level", css="plot")
    return _section("evaluation", "Evaluation", body)


def _active_units_plot(per_layer: dict) -> str | None:
    """Bar chart of active units per level, over the level's total units when eval.json gives them."""
    active = next((v for k, v in per_layer.items() if k.split(".")[-1] == "active_units"), None)
    if active is None or not all(isinstance(a, (int, float)) for a in active):
        return None
    units = next((v for k, v in per_layer.items() if k.split(".")[-1] == "units"), None)
    fig = Figure(figsize=(max(4, 1 + 0.8 * len(active)), 3.2))
    ax = fig.subplots()
    xs = list(range(1, len(active) + 1))
    if units and len(units) == len(active):
        ax.bar(xs, units, color="#ddd", edgecolor="#999", label="units")
    ax.bar(xs, active, color="C0", label="active units")
    ax.set_xticks(xs, [f"z_{x}" for x in xs])
    ax.set_ylabel("units")
    ax.legend(fontsize="small")
    return _plot_uri(fig)


# ---------------------------------------------------------------------------------------------------- pictures


def _test_inputs(r: _Run, n: int) -> Tensor | None:
    """Up to ``n`` evaluation inputs (n, *data_shape): test split (fixed binarisation), else val."""
    d = r.dataset
    if d is None or tuple(d.shape) != tuple(r.model.data_shape):
        return None
    for split in ("test", "val"):
        if len(d.split(split)):
            return next(d.eval_batches(split, n))
    return None


def _grid_images(x: Tensor, data_shape: Sequence[int]) -> Tensor:
    """:func:`to_images` of data that :func:`_pictures` found to be images: (N, C, H, W) in [0, 1]."""
    images = to_images(x, data_shape)
    if images is None:  # _pictures asks first
        raise ValueError(f"data of shape {tuple(data_shape)} are not images: no grids to draw")
    return images


def _samples(model: HierarchicalVAE, num_samples: int) -> str:
    nrow = max(1, math.ceil(math.sqrt(num_samples)))
    figs = []
    for t in TEMPERATURES:
        x = model.sample(num_samples, temperature=t)  # (n, *data_shape), mean of p(x | z_1)
        caption = f"T = {t:g}" + (" (every level at its prior mean)" if t == 0 else "")
        figs.append(_figure(images_to_uri(_grid_images(x, model.data_shape), nrow), caption))
    text = "Unconditional samples: the mean of p(x | z_1) for z ~ p(z), each prior's std scaled by T."
    return _section("samples", "Samples", _note(text) + "".join(figs))


def _reconstructions(model: HierarchicalVAE, x: Tensor) -> str:
    recon = model(x).px.mean  # (B, *data_shape), one z ~ q(z | x) per input
    grid = _grid_images(torch.cat([x, recon]), model.data_shape)
    text = "Top: test inputs; bottom: the mean of p(x | z_1) for one z ~ q(z | x)."
    return _section("reconstructions", "Reconstructions", _note(text) + _img(images_to_uri(grid, len(x)), text))


def _keep_top_label(k: int, L: int) -> str:
    if k == L:
        return f"k = {k}: all levels from q(z | x) (a reconstruction)"
    if k == 0:
        return "k = 0: nothing kept (unconditional samples)"
    kept = f"z_{L}" if k == 1 else f"z_{L - k + 1}…z_{L}"
    fresh = "z_1" if L - k == 1 else f"z_1…z_{L - k}"
    return f"k = {k}: keeps {kept} from q(z | x); {fresh} from the prior"


def _keep_top(model: HierarchicalVAE, x: Tensor) -> str:
    L = model.config.num_layers
    rows = [("inputs", _grid_images(x, model.data_shape))]
    for k in range(L, -1, -1):
        rows.append((_keep_top_label(k, L), _grid_images(model.sample_conditional(x, keep_top=k), model.data_shape)))
    cells = "".join(
        f"<tr><th>{_esc(label)}</th><td>{_img(images_to_uri(g, len(x)), label)}</td></tr>" for label, g in rows
    )
    text = (
        "Each column is one test input. Row k keeps the top k levels of latents inferred from it and resamples "
        "the levels below from the prior: what stays the same down a column is what the kept levels hold."
    )
    return _section("keep-top", "What each level holds (keep top k)", _note(text) + f"<table>{cells}</table>")


def _pictures(r: _Run, num_samples: int, seed: int, device: str) -> list[str]:
    """Samples, reconstructions and keep-top-k grids, drawn under a fixed torch seed."""
    model = r.model
    media = _media(r, seed, device)
    if media is not None:
        return media
    if to_images(torch.zeros(1, *model.data_shape), model.data_shape) is None:
        note = _note(f"The data (shape {tuple(model.data_shape)}) are not images: no sample or reconstruction grids.")
        return [_section("samples", "Samples", note)]
    devices = [torch.device(device).index or 0] if torch.device(device).type == "cuda" else []
    with torch.random.fork_rng(devices=devices), torch.no_grad():  # leave the caller's RNG state alone
        torch.manual_seed(seed)
        out = [_samples(model, num_samples)]
        x = _test_inputs(r, max(NUM_RECONSTRUCTIONS, NUM_KEEP_TOP))
        if x is None:
            out.append(_section("reconstructions", "Reconstructions", _note(r.data_note or "no test inputs.", "warn")))
            return out
        if model.config.decoder_only:
            out.append(_section("reconstructions", "Reconstructions", _note(NO_LATENTS)))
            return out
        x = x.to(device)
        out.append(_reconstructions(model, x[:NUM_RECONSTRUCTIONS]))
        out.append(_keep_top(model, x[:NUM_KEEP_TOP]))
    return out


NO_LATENTS = "A decoder-only model (model.decoder_only) has no latents: nothing reconstructs its inputs."


# ---------------------------------------------------------------------------------------------------- text, audio

NUM_MEDIA = 8


def _media(r: _Run, seed: int, device: str) -> list[str] | None:
    """Sections for text (samples and reconstructions as text) and audio (players and spectrograms) runs;
    None for other data."""
    kind = modality((r.config.get("data") or {}).get("source") or DataConfig().source)
    if kind in ("image", "table"):
        return None
    dc = DataConfig.from_dict(r.config["data"])
    devices = [torch.device(device).index or 0] if torch.device(device).type == "cuda" else []
    with torch.random.fork_rng(devices=devices), torch.no_grad():
        torch.manual_seed(seed)
        model = r.model
        L = model.config.num_layers
        # text from an autoregressive decoder is sampled from p(x | z), as text generation libraries do (the
        # greedy pass loops); the reconstructions are shown both ways: the most probable text given one z ~ q(z | x)
        # and a draw from p(x | z) (what hvae eval's sampled reconstruction similarity measures)
        decode = "sample" if getattr(model.likelihood, "tokens", False) and hasattr(model.likelihood, "net") else None
        how = ", x ~ p(x | z)" if decode else ""
        rows = [
            (f"samples, T = {t:g}{how}", model.sample(NUM_MEDIA, temperature=t, decode=decode)) for t in TEMPERATURES
        ]
        x = _test_inputs(r, NUM_MEDIA)
        recon = []
        if x is not None and not model.config.decoder_only:
            x = x.to(device)
            recon = [("test inputs", x), ("reconstructions (one z ~ q(z | x))", model(x).px.mean)]
            if decode:
                recon.append((_keep_top_label(L, L) + how, model.sample_conditional(x, keep_top=L, decode=decode)))
            recon += [
                (_keep_top_label(k, L) + how, model.sample_conditional(x, keep_top=k, decode=decode))
                for k in range(L - 1, 0, -1)
            ]
    if kind == "audio":
        return [
            _audio_section("samples", "Samples", rows, dc),
            _audio_section("reconstructions", "Reconstructions", recon, dc),
        ]
    from hvae.data.text import run_tokenizer

    try:
        tok = run_tokenizer(r.path, dc)
    except DataError as e:
        return [_section("samples", "Samples", _note(str(e), "warn"))]
    if model.config.decoder_only:
        return [
            _text_section("samples", "Samples", rows, tok),
            _section("reconstructions", "Reconstructions", _note(NO_LATENTS)),
        ]
    return [
        _text_section("samples", "Samples", rows, tok),
        _text_section("reconstructions", "Reconstructions", recon, tok),
    ]


def _text_section(anchor: str, title: str, rows: list, tok) -> str:
    if not rows:
        return _section(anchor, title, _note("no test inputs.", "warn"))
    note = (
        f"Token ids decoded by the run's {tok.kind} tokenizer (up to the end-of-sequence token); the decoder's "
        "output is its greedy sequence given the latents."
    )
    body = "".join(
        f"<h3>{_esc(label)}</h3><pre>" + "\n".join(_esc(repr(t)[1:-1]) for t in tok.decode_batch(x.cpu())) + "</pre>"
        for label, x in rows
    )
    return _section(anchor, title, _note(note) + body)


def _audio_section(anchor: str, title: str, rows: list, dc) -> str:
    import base64

    from hvae.data import audio

    if not rows:
        return _section(anchor, title, _note("no test inputs.", "warn"))
    how = "Griffin-Lim from the log-mel frames" if dc.audio_features == "logmel" else "µ-law expansion"
    body = _note(f"Players hold {dc.sample_rate} Hz WAV audio ({how}); below each row its spectrograms.")
    for label, x in rows:
        x = x.cpu()
        players = "".join(
            f'<audio controls preload="none" src="data:audio/wav;base64,'
            f'{base64.b64encode(audio.wav_bytes(w.numpy(), dc.sample_rate)).decode()}"></audio>'
            for w in audio.to_waveform(x, dc)
        )
        png = audio.spectrogram_png(audio.spectrogram_frames(x, dc))
        body += f"<h3>{_esc(label)}</h3><div>{players}</div>" + _img(png_data_uri(png), label, "plot")
    return _section(anchor, title, body)


# ---------------------------------------------------------------------------------------------------- page


def _page(r: _Run, sections: list[str]) -> str:
    title = f"hvae report: {r.path.name}"
    nav = " · ".join(
        f'<a href="#{a}">{t}</a>'
        for a, t in (
            ("overview", "run"),
            ("evaluation", "evaluation"),
            ("curves", "curves"),
            ("samples", "samples"),
            ("config", "config"),
        )
    )
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{_esc(title)}</title>'
        f"<style>{_CSS}</style></head><body>\n<h1>{_esc(title)}</h1>\n"
        f'<p class="note">{_esc(r.path.resolve())}</p><p>{nav}</p>\n' + "\n".join(sections) + "\n</body></html>\n"
    )


def write_report(run_dir: str | os.PathLike, *, device: str = "cpu", num_samples: int = 64, seed: int = 0) -> Path:
    """Write ``run_dir/report.html`` (atomically) and return its path.

    Reads ``config.yaml``, ``model/``, ``metrics.jsonl`` and ``eval.json`` (the last two optional) from the
    run directory. ``num_samples`` images per temperature; ``seed`` fixes every random draw in the pictures.
    Raises FileNotFoundError when the run directory, its config or its model is missing.
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    r = _read_run(Path(run_dir), device)
    # results first: the numbers, then the pictures; the config folded at the end
    sections = [_overview(r), _evaluation(r), _curves(r), *_pictures(r, num_samples, seed, device)]
    sections += [s for s in [ood_section(r.path)] if s is not None]  # after hvae ood
    sections.append(_config(r))
    out = RunDir(r.path).report_path
    atomic_write_text(out, _page(r, sections))
    return out
