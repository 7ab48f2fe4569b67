"""The report's OOD section: when ``RUN/ood.json`` exists (written by ``hvae ood``), a table per OOD set, the
score histograms in vs out and the ROC curves (OOD positive), from ``RUN/ood_scores.npz``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from hvae import ood


def ood_section(run_dir: str | Path) -> str | None:
    """The section's HTML, or None when the run has no ``ood.json``."""
    from hvae.report.html import _esc, _figure, _note, _plot_uri, _section, _table

    run = Path(run_dir)
    path = run / ood.RESULT_NAME
    if not path.is_file():
        return None
    result = json.loads(path.read_text())
    names = result["scores"]
    parts = [
        _note(
            f"In-distribution: the {result['split']} split ({result['in']['n']} examples); K = "
            f"{result['num_samples']} draws; skipped levels from {result['skipped']}; step {result['step']}. "
            f"OOD is the positive class; higher score = more OOD ({result['higher_is_ood']}). LLR>k = ELBO - L>k "
            "(Havtorn et al. 2021)."
        )
    ]
    for name, res in result["ood"].items():
        rows = [
            [s, result["in"]["mean"][s], res["mean"][s], *(res["metrics"][s][m] for m in ("auroc", "auprc", "fpr80"))]
            for s in names
        ]
        parts.append(f"<h3>{_esc(name)} ({res['n']} examples)</h3>")
        parts.append(_table(["score", "mean in (nats)", "mean out (nats)", "AUROC", "AUPRC", "FPR at 80% TPR"], rows))
    if (run / ood.SCORES_NAME).is_file():
        scores = ood.load_scores(run)
        parts.append(_figure(_plot_uri(_histograms(scores, names)), "scores, in vs out", css="plot"))
        parts.append(_figure(_plot_uri(_roc_curves(scores, names)), "ROC curves (OOD positive)", css="plot"))
    else:
        parts.append(_note(f"{ood.SCORES_NAME} is missing: run hvae ood again for the histograms and ROC curves"))
    return _section("ood", "OOD detection", "\n".join(parts))


def _histograms(scores: dict[str, dict[str, np.ndarray]], names: list[str]) -> Figure:
    sets = [s for s in scores if s != "in"]
    fig = Figure(figsize=(3.2 * len(names), 2.4 * len(sets)))
    axes = fig.subplots(len(sets), len(names), squeeze=False)
    for i, name in enumerate(sets):
        for j, s in enumerate(names):
            ax = axes[i][j]
            both = np.r_[scores["in"][s], scores[name][s]]
            bins = np.linspace(both.min(), both.max() + 1e-9, 40)
            ax.hist(scores["in"][s], bins=bins, alpha=0.6, density=True, label="in")
            ax.hist(scores[name][s], bins=bins, alpha=0.6, density=True, label=name)
            ax.set_title(f"{s} ({name})", fontsize=8)
            ax.tick_params(labelsize=7)
            if i == 0 and j == 0:
                ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def _roc_curves(scores: dict[str, dict[str, np.ndarray]], names: list[str]) -> Figure:
    sets = [s for s in scores if s != "in"]
    fig = Figure(figsize=(3.2 * len(sets), 3.0))
    axes = fig.subplots(1, len(sets), squeeze=False)[0]
    for ax, name in zip(axes, sets):
        for s in names:
            d = ood.ood_direction(s)
            fpr, tpr, _ = ood.roc_curve(d * scores["in"][s], d * scores[name][s])
            ax.plot(fpr, tpr, label=f"{s} ({ood.auroc(d * scores['in'][s], d * scores[name][s]):.3f})")
        ax.plot([0, 1], [0, 1], color="grey", lw=0.5)
        ax.set_title(name, fontsize=8)
        ax.set_xlabel("false-positive rate", fontsize=7)
        ax.set_ylabel("true-positive rate", fontsize=7)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=6)
    fig.tight_layout()
    return fig
