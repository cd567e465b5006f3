"""Prediction figures of held-out tasks, drawn at evaluations (`eval.figures`).

A regression task with 1-D inputs is drawn as its support points, its true function
at the query points and the predictions after a few adaptation steps (the
tutorial's figure); an image classification task as a grid of its query images
with their true and predicted labels. Pure functions of arrays, returning
matplotlib Figures (no pyplot, no global backend).
"""

from collections.abc import Mapping

import numpy as np
from matplotlib.figure import Figure


def regression_fits(
    support: tuple[np.ndarray, np.ndarray],
    query: tuple[np.ndarray, np.ndarray],
    predictions: Mapping[int, np.ndarray],
    title: str = "",
) -> Figure:
    """Support points, the truth at the query inputs and the predictions there
    after each adaptation step in `predictions` (step -> `[Q, 1]`)."""
    order = np.argsort(query[0][:, 0])
    xs = query[0][order, 0]
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    ax.plot(xs, query[1][order, 0], "k", lw=2, label="ground truth")
    for step, predicted in sorted(predictions.items()):
        style = ":" if step == 0 else "-"
        ax.plot(xs, predicted[order, 0], style, label=f"after {step} step(s)")
    ax.plot(support[0][:, 0], support[1][:, 0], "^", color="purple", label="K points")
    ax.set(title=title, xlabel="x", ylabel="y")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def episode_grid(
    images: np.ndarray,
    labels: np.ndarray,
    predicted: np.ndarray,
    title: str = "",
    columns: int = 10,
) -> Figure:
    """Query images `[M, H, W, C]` with true and predicted labels; wrong ones red.
    One channel is drawn as ink on paper; colour images are stretched to their own
    range (they arrive normalised)."""
    count = len(images)
    rows = -(-count // columns)
    fig = Figure(figsize=(1.1 * columns, 1.25 * rows + 0.4))
    axes = fig.subplots(rows, columns, squeeze=False)
    for index, ax in enumerate(axes.flat):
        ax.axis("off")
        if index >= count:
            continue
        image = images[index]
        if image.shape[-1] == 1:
            ax.imshow(image[..., 0], cmap="gray_r")
        else:  # normalised colour: stretched to [0, 1] per image for display
            low, high = image.min(), image.max()
            ax.imshow((image - low) / max(high - low, 1e-6))
        right = labels[index] == predicted[index]
        ax.set_title(
            f"{labels[index]}→{predicted[index]}",
            fontsize=7,
            color="black" if right else "red",
        )
    fig.suptitle(title or "query images: true → predicted label", fontsize=9)
    fig.tight_layout()
    return fig
