"""One function per panel of the report: compute what it shows, draw it, describe it.

Each returns a :class:`~training.report.html.Section`; figures go to ``OUT/figures/``. A
panel that cannot be drawn (no labels, no training history, too few images) is kept as a
section holding an :class:`~training.report.html.Omitted` note that says why.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from training import clustering, metrics
from training.charts import Panel, plot_history, plot_panels
from training.report import figures, maps, tiles
from training.report.gather import ReportData
from training.report.html import Figure, Heading, Omitted, Section, Table, Text

logger = logging.getLogger(__name__)

FIGURES_DIR = "figures"
HISTORY_FILE = "report/history.json"
K_SELECTION_FILE = "report/k_selection.json"

# Anchor ids of the panels, in page order; tests and links rely on them.
PANEL_IDS = ("overview", "training-curves", "reconstructions", "k-selection", "galleries",
             "embedding-map", "contingency", "codes", "manifold")


def _fig(out: Path, name: str) -> tuple[Path, Path]:
    """(absolute path to write, path relative to the report) of figure ``name``."""
    rel = Path(FIGURES_DIR) / name
    return out / rel, rel


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}" if math.isfinite(value) else "n/a"
    return str(value)


def no_labels_reason(data: ReportData) -> str:
    """The sentence shown where a label panel is left out."""
    return (f"Left out: the {data.split} images of {data.source} carry no labels, so there "
            "is nothing to colour by label or to compare the clusters with.")


def _thumbs(data: ReportData, index: np.ndarray | list[int]) -> np.ndarray:
    h, w = data.images.shape[1:3]
    return tiles.upscale(tiles.to_rgb8(data.images[np.asarray(index, dtype=np.int64)]),
                         tiles.upscale_factor(h, w))


def _decode(data: ReportData, z: np.ndarray) -> np.ndarray:
    return np.asarray(data.loaded.decode(tf.constant(z, dtype=tf.float32)))


def overview(data: ReportData) -> Section:
    """What was reported on: the bundle, the data, the sample and the training-time scores."""
    m = data.manifest
    rows = [
        ["model", f"{m.name} version {m.version} "
                  f"({m.training.model_kind}, loss {m.training.loss})"],
        ["latent dimension / clusters", f"{m.latent_dim} / {m.n_clusters}"],
        ["input", f"{m.input.height}x{m.input.width}x{m.input.channels} {m.input.color_mode}"],
        ["trained on", f"{m.training.data_source} ({m.training.n_train} images, "
                       f"{m.training.epochs} epochs, {m.training.seconds:.0f} s)"],
        ["this report", f"{data.source}, {data.split} split: {data.n} of {data.split_size} "
                        f"images (seeded sample, seed {data.seed})"],
        ["labels", "yes" if data.has_labels else "none in this data"],
        ["reconstruction MSE / PSNR (this sample)",
         f"{_fmt(data.reconstruction_mse, 5)} / {_fmt(data.reconstruction_psnr, 2)} dB"],
        ["outliers (beyond p99 training distance)",
         f"{int(data.outliers().sum())} of {data.n}"],
        ["bundle created", m.created_at],
    ]
    blocks: list[Any] = [Table(["", ""], rows)]
    if m.evaluation:
        blocks.append(Table(["score at training", "value"],
                            [[k, _fmt(v)] for k, v in m.evaluation.items()],
                            caption="Evaluation stored in the manifest at training time"))
    return Section("overview", "Overview", blocks)


def training_curves(data: ReportData, out: Path) -> Section:
    """Loss, validation loss and PSNR per epoch from the bundle's ``report/history.json``."""
    section = Section("training-curves", "Training curves")
    if HISTORY_FILE not in data.manifest.files:
        section.blocks.append(Omitted("training-curves",
                                      "Left out: this bundle stores no training history "
                                      f"({HISTORY_FILE}); it was exported before histories "
                                      "were kept, or trained for 0 epochs."))
        return section
    history = json.loads((data.loaded.path / HISTORY_FILE).read_text(encoding="utf-8"))
    if not any(history.values()):
        section.blocks.append(Omitted("training-curves", "Left out: the stored history is empty."))
        return section
    path, rel = _fig(out, "training_curves.png")
    plot_history(history, path)
    final = data.manifest.training.final_losses
    section.blocks += [
        Figure(rel, "training curves", "Per epoch, training and validation (val_) series; "
               "loss panels use a log scale."),
        Table(["final", "value"], [[k, _fmt(v, 5)] for k, v in final.items()]),
    ]
    return section


def reconstructions(data: ReportData, out: Path, *, count: int = 20, columns: int = 10) -> Section:
    """Random images of the sample (seeded) above their reconstructions by the bundle."""
    rng = np.random.default_rng(data.seed)
    index = np.sort(rng.permutation(data.n)[:min(count, data.n)])
    columns = min(columns, len(index))
    originals = _thumbs(data, index)
    h, w = data.images.shape[1:3]
    decoded = tiles.upscale(tiles.to_rgb8(_decode(data, data.embeddings[index])),
                            tiles.upscale_factor(h, w))
    cells: list[np.ndarray | None] = []
    for start in range(0, len(index), columns):
        block = list(range(start, min(start + columns, len(index))))
        blank: list[np.ndarray | None] = [None] * (columns - len(block))
        cells += [originals[i] for i in block] + blank
        cells += [decoded[i] for i in block] + blank
    path, rel = _fig(out, "reconstructions.png")
    tiles.save_png(tiles.grid(cells, columns), path)
    errors = np.mean((data.images[index] - _decode(data, data.embeddings[index])) ** 2)
    return Section("reconstructions", "Reconstructions", [
        Figure(rel, "originals above their reconstructions",
               f"{len(index)} random {data.split} images (rows of originals, each above the row "
               f"of their reconstructions); mean squared error of these: {errors:.5f}."),
    ])


def _k_range(data: ReportData) -> list[int]:
    low, high = data.manifest.training.hyperparameters.get("k_range", [2, 20])
    k = data.manifest.n_clusters
    top = min(int(high), data.n - 1)
    ks = set(range(max(2, int(low)), top + 1))
    if 2 <= k <= data.n - 1:
        ks.add(k)
    return sorted(ks)


def _load_selection(path: Path) -> clustering.KSelection:
    raw = json.loads(path.read_text(encoding="utf-8"))
    raw["silhouette"] = [math.nan if s is None else float(s) for s in raw["silhouette"]]
    return clustering.KSelection(**raw)


def k_selection(data: ReportData, out: Path) -> Section:
    """Elbow and silhouette curves over K, with the bundle's K marked.

    Taken from the bundle when it chose K itself (``--clusters auto``); otherwise computed
    on the sampled embeddings over the bundle's ``k_range``.
    """
    section = Section("k-selection", "Choice of K")
    k = data.manifest.n_clusters
    if K_SELECTION_FILE in data.manifest.files:
        selection = _load_selection(data.loaded.path / K_SELECTION_FILE)
        where = ("Stored in the bundle: computed on the training embeddings when K was "
                 "chosen by the best silhouette (--clusters auto).")
    else:
        ks = _k_range(data)
        if len(ks) < 2:
            section.blocks.append(Omitted("k-selection",
                                          f"Left out: {data.n} sampled images are too few to "
                                          "compare values of K."))
            return section
        logger.info("report: k-means for K in %d..%d on %d embeddings", ks[0], ks[-1], data.n)
        selection = clustering.select_k(data.embeddings, ks, seed=data.seed, sample_size=2000,
                                        n_init=3)
        where = (f"The bundle was trained with a fixed K={k}; these curves are computed here on "
                 f"the {data.n} sampled {data.split} embeddings (k-means with 3 restarts per "
                 "K, silhouette on a seeded sample of at most 2,000).")
    chosen = {f"bundle K={k}": float(k)}
    panels = [
        Panel(title="Elbow", x=selection.k_values,
              series={"mean distance to centroid": selection.mean_distance},
              xlabel="K (clusters)", ylabel="mean Euclidean distance", integer_x=True,
              marks={**chosen, f"elbow K={selection.elbow_k}": float(selection.elbow_k)}),
        Panel(title="Silhouette", x=selection.k_values,
              series={"silhouette (sample)": selection.silhouette},
              xlabel="K (clusters)", ylabel="mean silhouette coefficient", integer_x=True,
              marks={**chosen, f"best silhouette K={selection.chosen_k}":
                     float(selection.chosen_k)}),
    ]
    path, rel = _fig(out, "k_selection.png")
    plot_panels(panels, path, title="Choice of K")
    section.blocks += [
        Text(where),
        Figure(rel, "elbow and silhouette curves over K",
               f"Bundle K={k}; elbow at K={selection.elbow_k}; best silhouette at "
               f"K={selection.chosen_k}."),
    ]
    return section


def label_mix(data: ReportData, members: np.ndarray, top: int = 3) -> str:
    """'Sneaker 82%, Sandal 10%, ...' for the labelled members of one cluster."""
    labels = data.labels[members]
    labels = labels[labels >= 0]
    if not labels.size:
        return "no labelled member in the sample"
    values, counts = np.unique(labels, return_counts=True)
    order = np.argsort(-counts, kind="stable")[:top]
    parts = [f"{data.label_name(int(values[i]))} {_percent(counts[i] / labels.size)}"
             for i in order]
    rest = labels.size - int(counts[order].sum())
    if rest:
        parts.append(f"other {_percent(rest / labels.size)}")
    return ", ".join(parts)


def _percent(share: float) -> str:
    # A member or two of a big cluster must not read as "0%".
    return "<1%" if 0.0 < share < 0.005 else f"{100.0 * share:.0f}%"


def galleries(data: ReportData, out: Path, *, nearest: int = 8, farthest: int = 4) -> Section:
    """Per cluster: its sampled images nearest to the centroid, then its farthest members."""
    m = data.manifest
    section = Section("galleries", "Clusters: nearest and farthest members")
    section.blocks.append(Text(
        f"For each cluster: up to {nearest} sampled images nearest to its centroid, closest "
        f"first, then after a gap its {farthest} farthest members (likely outliers), farthest "
        "last. Size is the number of training images assigned to the cluster."))
    if not data.has_labels:
        section.blocks.append(Omitted("label-mix", no_labels_reason(data)))
    outliers = data.outliers()
    for c in range(m.n_clusters):
        members = np.flatnonzero(data.cluster_ids == c)
        members = members[np.argsort(data.distances[members], kind="stable")]
        title = f"Cluster {c}: {m.cluster_stats[c].count} training images"
        mapped = m.cluster_label(c)
        if mapped is not None:
            title += f", mapped label {mapped!r}"
        section.blocks.append(Heading(title, element_id=f"cluster-{c}"))
        if not members.size:
            section.blocks.append(Text("No sampled image falls in this cluster.", "note"))
            continue
        near = members[:nearest]
        far = members[nearest:][-farthest:] if members.size > nearest else members[:0]
        cells: list[np.ndarray | None] = [None] * (nearest + 1 + farthest)
        for i, t in enumerate(_thumbs(data, near) if near.size else []):
            cells[i] = t
        for i, t in enumerate(_thumbs(data, far) if far.size else []):
            cells[nearest + 1 + farthest - len(far) + i] = t
        path, rel = _fig(out, f"cluster_{c:03d}.png")
        tiles.save_png(tiles.grid(cells, nearest + 1 + farthest), path)
        dist = data.distances
        caption = (f"{members.size} of the {data.n} sampled images "
                   f"({int(outliers[members].sum())} beyond the p99 training distance "
                   f"{m.cluster_stats[c].p99:.3f}); nearest {dist[near[0]]:.3f}"
                   f"-{dist[near[-1]]:.3f}")
        if far.size:
            caption += f"; farthest {dist[far[0]]:.3f}-{dist[far[-1]]:.3f}"
        if data.has_labels:
            caption += f". Labels: {label_mix(data, members)}"
        section.blocks.append(Figure(rel, f"cluster {c}", caption + ".",
                                     element_id=f"gallery-{c}"))
    return section


def embedding_map(data: ReportData, out: Path, *, max_points: int = 3000) -> Section:
    """t-SNE of at most ``max_points`` sampled embeddings."""
    section = Section("embedding-map", "2-D map of the embeddings")
    index = maps.subsample(data.n, max_points, data.seed)
    if len(index) < maps.MIN_POINTS:
        section.blocks.append(Omitted("embedding-map", f"Left out: {len(index)} images are "
                                      f"too few for a map (at least {maps.MIN_POINTS})."))
        return section
    emb, ids = data.embeddings[index], data.cluster_ids[index]
    labels = data.labels[index] if data.has_labels else None
    names: list[str] = []
    if labels is not None:
        names = [data.label_name(j) for j in range(int(labels.max()) + 1)]
    xy = maps.tsne(emb, data.seed)
    path, rel = _fig(out, "map_tsne.png")
    figures.plot_map(xy, ids, data.manifest.n_clusters, path, method="t-SNE", labels=labels,
                     label_names=names)
    section.blocks.append(Figure(
        rel, "t-SNE map", f"t-SNE of {len(index)} sampled embeddings, coloured by "
        "cluster (ids at each cluster's median point)"
        + (" and by label." if labels is not None else ".")))
    if labels is None:
        section.blocks.append(Omitted("map-by-label", no_labels_reason(data)))
    return section


def contingency(data: ReportData, out: Path) -> Section:
    """Cluster x label heat map and the evaluation scores of the sample."""
    section = Section("contingency", "Clusters and labels")
    m = data.manifest
    labels = data.labels if data.has_labels else None
    scores = metrics.clustering_scores(labels, data.cluster_ids, data.embeddings,
                                          seed=data.seed)
    if labels is None:
        section.blocks.append(Omitted("contingency", no_labels_reason(data)))
        section.blocks.append(Table(["score on this sample", "value"], [
            ["images", _fmt(scores["n"])], ["clusters used", _fmt(scores["n_clusters_used"])],
            ["silhouette (seeded sample)", _fmt(scores["silhouette"])]]))
        return section
    table = metrics.contingency(labels, data.cluster_ids)
    full = np.zeros((m.n_clusters, table.shape[1]), dtype=np.int64)
    full[:table.shape[0]] = table
    rows = [f"{c} ({m.cluster_label(c)})" if m.cluster_label(c) else str(c)
            for c in range(m.n_clusters)]
    cols = [data.label_name(j) for j in range(table.shape[1])]
    path, rel = _fig(out, "contingency.png")
    figures.plot_contingency(full, rows, cols, path)
    stored = m.evaluation
    names = [("Hungarian accuracy", "hungarian_accuracy"),
             ("majority-label accuracy", "majority_accuracy"), ("NMI", "nmi"), ("ARI", "ari"),
             ("silhouette", "silhouette"), ("labelled images", "n_labelled"),
             ("clusters used", "n_clusters_used")]
    section.blocks += [
        Figure(rel, "cluster by label contingency heat map",
               "Rows: clusters (with the label the bundle maps them to); columns: labels. "
               "Numbers are counts in the sample, colour the share of the row."),
        Table(["score", f"this sample ({data.n} {data.split})",
               f"at training ({stored.get('split', 'held-out')})"],
              [[title, _fmt(scores.get(key)), _fmt(stored.get(key))] for title, key in names],
              caption="Scores from training.metrics: Hungarian matching is one-to-one, "
                      "majority maps each cluster to its most frequent label."),
    ]
    return section


def codes(data: ReportData, out: Path, *, rows: int = 12) -> Section:
    """A few images beside their embedding vectors: the nearest of each cluster in turn."""
    order = np.lexsort((data.distances, data.cluster_ids))
    ranked: dict[int, list[int]] = {}
    for i in order:
        ranked.setdefault(int(data.cluster_ids[i]), []).append(int(i))
    picked: list[int] = []
    depth = 0
    while len(picked) < rows and any(depth < len(v) for v in ranked.values()):
        picked += [v[depth] for _, v in sorted(ranked.items()) if depth < len(v)]
        depth += 1
    picked = sorted(picked[:rows], key=lambda i: (int(data.cluster_ids[i]), data.distances[i]))
    names = [f"cluster {data.cluster_ids[i]}" + (
        f" / {data.label_name(int(data.labels[i]))}" if data.labels[i] >= 0 else "")
        for i in picked]
    path, rel = _fig(out, "codes.png")
    figures.plot_codes(tiles.to_rgb8(data.images[picked]), data.embeddings[picked], names, path)
    return Section("codes", "The codes", [Figure(
        rel, "embedding vectors next to their images",
        f"{len(picked)} images, taken nearest-to-centroid from each cluster in turn, with "
        f"their {data.manifest.latent_dim}-dimensional embeddings (one colour scale, red "
        "positive, blue negative).")])


def manifold_axes(embeddings: np.ndarray) -> tuple[np.ndarray, np.ndarray, str]:
    """(centre [D], directions [k, D] with k <= 2, description) of the decoded grid.

    A 2-D latent space is its own plane; otherwise the first two principal directions of
    the embeddings around their mean, scaled so a unit step is one standard deviation.
    """
    emb = np.asarray(embeddings, dtype=np.float64)
    dim = emb.shape[1]
    if dim <= 2:
        return np.zeros(dim), np.eye(dim), "the latent plane itself"
    mean = emb.mean(axis=0)
    _, s, vt = np.linalg.svd(emb - mean, full_matrices=False)
    std = s[:2] / math.sqrt(max(len(emb) - 1, 1))
    return mean, vt[:2] * std[:, None], ("the first two principal directions of the "
                                         "embeddings around their mean")


def manifold(data: ReportData, out: Path, *, steps: int = 12) -> Section:
    """Decoded images over a regular grid of the latent plane (or its main PCA plane)."""
    section = Section("manifold", "Decoded manifold")
    centre, dirs, what = manifold_axes(data.embeddings)
    # Coordinates of the sample in the grid's own axes; the grid spans their 2nd-98th pct.
    coords = (data.embeddings - centre) @ np.linalg.pinv(dirs)
    lo, hi = np.percentile(coords, [2.0, 98.0], axis=0)
    hi = np.where(hi > lo, hi, lo + 1.0)
    xs = np.linspace(lo[0], hi[0], steps)
    ys = np.linspace(hi[1], lo[1], steps) if dirs.shape[0] > 1 else np.zeros(1)
    z = np.array([centre + x * dirs[0] + (y * dirs[1] if dirs.shape[0] > 1 else 0.0)
                  for y in ys for x in xs], dtype=np.float32)
    decoded = _decode(data, z)
    h, w = decoded.shape[1:3]
    cells: list[np.ndarray | None] = list(
        tiles.upscale(tiles.to_rgb8(decoded), tiles.upscale_factor(h, w)))
    path, rel = _fig(out, "manifold.png")
    tiles.save_png(tiles.grid(cells, steps), path)
    kind = "a VAE" if data.manifest.training.model_kind == "vae" else "this model"
    section.blocks.append(Figure(
        rel, "decoded manifold grid",
        f"The decoder of {kind} over a {len(ys)}x{steps} grid on {what} (latent dimension "
        f"{data.manifest.latent_dim}); left to right along the first axis, top to bottom "
        "along the second, each spanning the 2nd to 98th percentile of the sample."))
    return section
