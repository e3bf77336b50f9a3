"""Heatmap of learned pooling sizes: one row per layer, one column per token of a passage.

Works with the installed classes and with a model loaded through remote code (it only calls
``model(input_ids, output_pooling_sizes=True)``). matplotlib is imported on use (an optional extra).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np


def pooling_sizes(model: Any, tokenizer: Any, text: str, max_tokens: int = 64) -> tuple[np.ndarray, list[str]]:
    """Run `text` through `model` and return (sigma (layers, tokens), token labels).

    sigma is averaged over pooling groups (heads); rows of layers that do not pool are NaN.
    """
    import torch

    encoded = tokenizer(text, return_tensors="pt", truncation=True, max_length=max_tokens)
    input_ids = encoded["input_ids"][:, :max_tokens]
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    with torch.no_grad():
        outputs = model(input_ids=input_ids.to(device), output_pooling_sizes=True, use_cache=False)
    model.train(was_training)
    per_layer = outputs.pooling_sizes
    if per_layer is None:
        raise ValueError("the model returned no pooling sizes (is it a ContextPool model?)")
    n = input_ids.shape[1]
    rows = [np.full(n, np.nan) if s is None else s[0].float().mean(0).cpu().numpy() for s in per_layer]
    labels = [token_label(tokenizer, int(i)) for i in input_ids[0]]
    return np.stack(rows), labels


def token_label(tokenizer: Any, token_id: int) -> str:
    """A readable label for one token: decoded text, spaces shown as '_', specials as they are."""
    text = tokenizer.decode([token_id])
    text = text.replace("\n", "\\n").replace(" ", "_")
    return text or tokenizer.convert_ids_to_tokens(token_id)


def plot_pooling_sizes(sigma: np.ndarray, labels: list[str], path: str | os.PathLike[str], *,
                       title: str = "Learned pooling size sigma (tokens) per layer and token",
                       sigma_range: tuple[float, float] | None = None) -> str:  # fmt: skip
    """Write a PNG heatmap (rows = layers, columns = tokens with their labels on the x-axis)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers, n = sigma.shape
    fig, ax = plt.subplots(figsize=(max(6.0, 0.22 * n + 2), 1.0 + 0.45 * layers + 1.2))
    masked = np.ma.masked_invalid(sigma)
    vmin, vmax = sigma_range if sigma_range else (np.nanmin(sigma), np.nanmax(sigma))
    image = ax.imshow(masked, aspect="auto", cmap="viridis", vmin=vmin, vmax=vmax, interpolation="nearest")
    ax.set_xticks(range(n))
    ax.set_xticklabels(labels, rotation=90, fontsize=7, family="monospace")
    ax.set_yticks(range(layers))
    ax.set_yticklabels([f"layer {i}" + ("" if np.isfinite(sigma[i]).any() else " (no pooling)")
                        for i in range(layers)], fontsize=8)  # fmt: skip
    ax.set_title(title, fontsize=9)
    fig.colorbar(image, ax=ax, fraction=0.025, pad=0.01, label="sigma")
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return str(path)


def save_pooling_heatmap(model: Any, tokenizer: Any, text: str, path: str | os.PathLike[str],
                         max_tokens: int = 64) -> str:  # fmt: skip
    """`pooling_sizes` + `plot_pooling_sizes`, the colour scale spanning the sizes the model used.

    Learned sizes usually fill a small part of [pool_sigma_min, pool_sigma_max] (e.g. 0.5-1.9 of
    0.5-8), so the config's range would paint the picture one colour. The range used and the
    config's bounds are printed and put in the title.
    """
    sigma, labels = pooling_sizes(model, tokenizer, text, max_tokens)
    low, high = float(np.nanmin(sigma)), float(np.nanmax(sigma))
    config = model.config
    bounds = f" of [{config.pool_sigma_min:g}, {config.pool_sigma_max:g}]" if hasattr(config, "pool_sigma_max") else ""
    message = f"pooling sizes span sigma {low:.2f}-{high:.2f}{bounds}"
    print(f"[visualize] {message}; colour scale {low:.2f}-{high:.2f}")
    title = f"Learned pooling size sigma (tokens) per layer and token\n{message}"  # two lines fit a short passage
    return plot_pooling_sizes(sigma, labels, path, title=title, sigma_range=(low, high) if high > low else None)


__all__ = ["pooling_sizes", "plot_pooling_sizes", "save_pooling_heatmap", "token_label"]
