"""Pooling-size heatmaps for the ContextPool vision models (matplotlib; not Hub-shipped)."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F


def _short_site_name(name: str) -> str:
    """'resnet.encoder.stages.1.layers.0.shortcut.downsample' -> 'stage1.0 shortcut'."""
    name = name.replace("resnet.", "").replace(".downsample", "").replace("embedder.embedder", "stem conv")
    name = name.replace("embedder.pooler", "stem pool").replace("encoder.stages.", "stage")
    return name.replace(".layers.", ".").replace(".layer.0", " main").replace(".layer.1", " main").replace(".shortcut", " shortcut")


def pooling_size_maps(model, pixel_values: torch.Tensor) -> tuple[list[str], list[np.ndarray]]:
    """Run `model` and return (site names, per-site (H, W) sigma maps of the first image,
    averaged over pooling groups). Sigma is in grid units of the pooled input."""
    model.eval()
    with torch.no_grad():
        out = model(pixel_values=pixel_values[:1], output_pooling_sizes=True, return_dict=True)
    sizes = out.pooling_sizes or ()
    if hasattr(model, "pooling_sites"):  # ResNet: down-sampling sites
        names = [_short_site_name(name) for name, _ in model.pooling_sites()]
    else:  # ViT: pooled layers
        names = [f"layer {i}" for i in model.config.pooled_layer_indices()]
    maps = [s[0].float().mean(0).cpu().numpy() for s in sizes]  # (H, W)
    return names[: len(maps)], maps


def render_pooling_heatmap(
    image,
    maps: Sequence[np.ndarray],
    output_path: str | os.PathLike,
    titles: Sequence[str] | None = None,
    suptitle: str | None = None,
    outline_level: float = 0.5,
) -> str:
    """Draw `image` (PIL image or (H, W[, C]) array), then each (h, w) pooling-size map, upsampled to
    the image, in its own panel with the image's outline (the `outline_level` contour of its
    brightness, 0-1) drawn on top. The map is not blended with the image, so every colour is one the
    colour bar shows. Writes one PNG and returns the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    array = np.asarray(image.convert("RGB") if hasattr(image, "convert") else image, dtype=np.float32)
    if array.max() > 1.0:
        array = array / 255.0
    height, width = array.shape[:2]
    brightness = array if array.ndim == 2 else array[..., :3].mean(-1)  # (H, W) in [0, 1], for the outline
    panels = len(maps) + 1
    fig, axes = plt.subplots(1, panels, figsize=(2.4 * panels, 2.6), squeeze=False)
    axes = axes[0]
    axes[0].imshow(array, cmap="gray" if array.ndim == 2 else None)
    axes[0].set_title("input (cyan outline on the maps)", fontsize=7)
    vmin = min(float(m.min()) for m in maps) if maps else 0.0
    vmax = max(float(m.max()) for m in maps) if maps else 1.0
    print(f"[visualize] pooling sizes span sigma {vmin:.2f}-{vmax:.2f} (colour scale)")
    image_artist = None
    for i, sigma in enumerate(maps):
        grid = torch.as_tensor(np.asarray(sigma, dtype=np.float32))[None, None]
        up = F.interpolate(grid, size=(height, width), mode="nearest")[0, 0].numpy()
        ax = axes[i + 1]
        image_artist = ax.imshow(up, cmap="magma", vmin=vmin, vmax=vmax, interpolation="nearest")
        if brightness.max() > outline_level > brightness.min():
            ax.contour(brightness, levels=[outline_level], colors="cyan", linewidths=0.8)
        ax.set_title(titles[i] if titles else f"site {i}", fontsize=7)
    for ax in axes:
        ax.axis("off")
    if image_artist is not None:
        fig.colorbar(image_artist, ax=list(axes), fraction=0.02, pad=0.01, label="pooling size sigma")
    if suptitle:
        fig.suptitle(suptitle, fontsize=9)
    os.makedirs(os.path.dirname(os.path.abspath(output_path)), exist_ok=True)
    fig.savefig(output_path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return str(output_path)


def save_pooling_heatmap(model, image_processor, image, output_path: str | os.PathLike, suptitle=None) -> str:
    """Process `image`, run `model` and render its per-site pooling sizes over the image."""
    pixel_values = image_processor(image, return_tensors="pt")["pixel_values"]
    names, maps = pooling_size_maps(model, pixel_values)
    return render_pooling_heatmap(image, maps, output_path, titles=names, suptitle=suptitle)


__all__ = ["pooling_size_maps", "render_pooling_heatmap", "save_pooling_heatmap"]
