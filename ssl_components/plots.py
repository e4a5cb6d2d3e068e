"""Evaluation plots (matplotlib, Agg backend). Each function writes one PNG atomically and returns its path."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ssl_components import metrics as names  # noqa: E402
from ssl_components.io import atomic_path  # noqa: E402


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    try:
        with atomic_path(path, suffix=".png") as tmp:
            fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    finally:
        plt.close(fig)
    return path


def _numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


MONITOR_LABEL = "kNN monitor"  # the monitor curve's legend label


def loss_curve_figure(history: list[dict]):
    """The loss-curve figure: training loss per epoch (the learning rate on a second axis when the history has
    `lr`) and, when some epochs were monitored, a second panel with the kNN monitor accuracy at those epochs."""
    rows = [h for h in history if "loss" in h]
    epochs = [h.get("epoch", i + 1) for i, h in enumerate(rows)]
    checked = [(e, h[names.MONITOR_KNN]) for e, h in zip(epochs, rows) if h.get(names.MONITOR_KNN) is not None]
    if checked:
        fig, (ax, mon) = plt.subplots(2, 1, figsize=(6, 6), sharex=True, height_ratios=(3, 2))
    else:
        fig, ax = plt.subplots(figsize=(6, 4))
    if rows:
        ax.plot(epochs, [h["loss"] for h in rows], "o-", color="tab:blue", label="loss")
        ax.set_xlabel("epoch")
        ax.set_ylabel("training loss", color="tab:blue")
        if any("lr" in h for h in rows):
            ax2 = ax.twinx()
            ax2.plot(epochs, [h.get("lr", np.nan) for h in rows], "--", color="tab:orange", label="lr")
            ax2.set_ylabel("learning rate", color="tab:orange")
            ax2.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
        ax.grid(alpha=0.3)
    else:
        ax.text(0.5, 0.5, "no training history", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
    ax.set_title("Pretraining loss")
    if checked:
        xs, ys = zip(*checked)
        mon.plot(xs, ys, "s-", color="tab:green", label=MONITOR_LABEL)
        best = max(range(len(ys)), key=lambda i: (ys[i], -i))  # the earliest best, as early stopping keeps it
        mon.plot([xs[best]], [ys[best]], "*", color="tab:red", markersize=12, label="best")
        mon.set_xlabel("epoch")
        mon.set_ylabel("kNN accuracy")
        mon.set_title("kNN monitor (labelled train subset)")
        mon.grid(alpha=0.3)
        mon.legend(fontsize=8, loc="lower right", frameon=False)
        ax.set_xlabel("")
    return fig


def loss_curve(history: list[dict], path: str | Path) -> Path:
    """`loss_curve_figure` as a PNG."""
    return _save(loss_curve_figure(history), path)


def confusion_matrix(y_true, y_pred, class_names: Sequence[str], path: str | Path) -> Path:
    """Row-normalised confusion matrix (each true class sums to 1), annotated, class names on both axes."""
    y_true, y_pred = _numpy(y_true).astype(np.int64), _numpy(y_pred).astype(np.int64)
    n = max(len(class_names), int(y_true.max(initial=-1)) + 1, int(y_pred.max(initial=-1)) + 1, 1)
    names = list(class_names) + [str(i) for i in range(len(class_names), n)]
    counts = np.zeros((n, n), dtype=np.int64)
    ok = (y_true >= 0) & (y_pred >= 0)
    np.add.at(counts, (y_true[ok], y_pred[ok]), 1)
    rows = counts.sum(1, keepdims=True)
    norm = np.divide(counts, rows, out=np.zeros((n, n)), where=rows > 0)

    size = max(4.0, 0.6 * n + 2)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    ax.set_xticks(range(n), names, rotation=45, ha="right")
    ax.set_yticks(range(n), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    acc = counts.trace() / max(1, counts.sum())
    ax.set_title(f"Linear probe confusion (accuracy {acc:.1%})")
    if n <= 30:
        for i in range(n):
            for j in range(n):
                ax.text(j, i, f"{norm[i, j]:.2f}", ha="center", va="center", fontsize=7, color="white" if norm[i, j] > 0.5 else "black")
    return _save(fig, path)


def embedding_map(features, labels, class_names: Sequence[str], path: str | Path, seed: int = 0, max_points: int = 3000) -> Path:
    """2-D t-SNE map (after PCA to 50 dimensions) of up to `max_points` features, coloured by class."""
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    x, y = _numpy(features).astype(np.float32), _numpy(labels).astype(np.int64)
    if len(x) > max_points:
        keep = np.sort(np.random.default_rng(seed).choice(len(x), max_points, replace=False))
        x, y = x[keep], y[keep]
    fig, ax = plt.subplots(figsize=(7, 6))
    if len(x) >= 3:
        dims = min(50, x.shape[1], len(x))
        z = PCA(n_components=dims, random_state=seed).fit_transform(x) if dims < x.shape[1] else x
        if len(x) > 5:
            perplexity = min(30.0, (len(x) - 1) / 3)
            z = TSNE(n_components=2, init="pca", perplexity=perplexity, random_state=seed).fit_transform(z)
            method = "t-SNE"
        else:
            z = np.pad(z[:, :2], ((0, 0), (0, max(0, 2 - z.shape[1]))))
            method = "PCA"
        cmap = plt.get_cmap("tab10" if max(len(class_names), 1) <= 10 else "tab20")
        for c in np.unique(y):
            m = y == c
            name = class_names[c] if 0 <= c < len(class_names) else ("unlabelled" if c < 0 else str(c))
            color = "lightgrey" if c < 0 else cmap(int(c) % cmap.N)
            ax.scatter(z[m, 0], z[m, 1], s=6, color=color, label=name, alpha=0.8, linewidths=0)
        ax.legend(markerscale=3, fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
        ax.set_title(f"Encoder features, {method} of {len(x)} test images")
    else:
        ax.text(0.5, 0.5, "too few points for a map", ha="center", va="center", transform=ax.transAxes)
    ax.set_xticks([])
    ax.set_yticks([])
    return _save(fig, path)


_SERIES = (("SSL encoder", "tab:blue"), ("raw pixels", "tab:grey"), ("random init", "tab:orange"), ("supervised from scratch", "tab:green"))


def _groups(metrics: dict) -> list[tuple[str, dict[str, float]]]:
    groups = [
        (names.label(metric), {"SSL encoder": metric, **{label: b for label, b in baselines}})
        for metric, baselines in names.comparisons(metrics)
    ]
    out = []
    for title, keys in groups:
        values = {series: float(metrics[key]) for series, key in keys.items() if metrics.get(key) is not None}
        if values:
            out.append((title, values))
    return out


def accuracy_bars(metrics: dict, path: str | Path) -> Path:
    """Grouped bars: each SSL accuracy beside the baselines measured the same way in the same run."""
    groups = _groups(metrics)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.8 * len(groups) + 2), 4.5))
    width = 0.8 / len(_SERIES)
    used = set()
    for gi, (_, values) in enumerate(groups):
        present = [s for s, _ in _SERIES if s in values]
        for si, series in enumerate(present):
            color = dict(_SERIES)[series]
            x = gi + (si - (len(present) - 1) / 2) * width
            ax.bar(x, values[series], width * 0.95, color=color, label=None if series in used else series)
            ax.text(x, values[series] + 0.01, f"{values[series]:.1%}", ha="center", va="bottom", fontsize=7, rotation=90)
            used.add(series)
    ax.set_xticks(range(len(groups)), [g for g, _ in groups])
    ax.set_ylim(0, 1.12)
    ax.set_ylabel("test accuracy")
    ax.set_title("SSL encoder vs baselines (same run, same protocol)")
    ax.grid(axis="y", alpha=0.3)
    if used:
        ax.legend(fontsize=8, loc="upper left", ncols=2, frameon=False)
    else:
        ax.text(0.5, 0.5, "no metrics", ha="center", va="center", transform=ax.transAxes)
    return _save(fig, path)
