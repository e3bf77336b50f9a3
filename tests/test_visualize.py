"""The pictures a person reads, checked on their pixels (matplotlib Agg, synthetic inputs).

Each test would fail on the drawing it replaced (issue 13 item 9): the text pooling-size map on the
config's 0.5-8 colour scale (one colour), vision maps blended into the digit (colours the colour
bar does not show), empty MiniLM/MLM plots, translation lines that run back in time.
"""

import re
import sys
from pathlib import Path
from types import SimpleNamespace

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

import contextpool_hf.visualize as visualize  # noqa: E402
from contextpool_hf import ContextPoolConfig  # noqa: E402
from contextpool_hf.visualize_vision import render_pooling_heatmap  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))

import study_lm  # noqa: E402
import study_translation  # noqa: E402

# RGB distance (0-1) to the nearest of a colormap's 256 entries below which a pixel is on it (neighbours ~0.01 apart)
ON_COLORMAP = 0.02


@pytest.fixture
def figures(monkeypatch):
    """The figures the code under test closes, kept open so their pixels can be read."""
    kept, close = [], plt.close
    monkeypatch.setattr(plt, "close", lambda fig=None: kept.append(fig))
    yield kept
    for fig in kept:
        close(fig)


def pixels_of(fig, artist, inset=2):
    """(h, w, 3) RGB in [0, 1] of the area `artist` covers on `fig`'s canvas, `inset` pixels in from its edge."""
    fig.canvas.draw()
    rgb = np.asarray(fig.canvas.buffer_rgba())[..., :3].astype(np.float64) / 255.0
    box = artist.get_window_extent(fig.canvas.get_renderer())
    height = rgb.shape[0]  # display y runs up, array rows run down
    top, bottom = int(np.ceil(height - box.y1)) + inset, int(np.floor(height - box.y0)) - inset
    left, right = int(np.ceil(box.x0)) + inset, int(np.floor(box.x1)) - inset
    return rgb[top:bottom, left:right]


def nearest_on_colormap(rgb, cmap_name):
    """For each pixel: (distance to the nearest colormap entry, that entry's position 0-1)."""
    table = matplotlib.colormaps[cmap_name](np.linspace(0.0, 1.0, 256))[:, :3]
    colours, which = np.unique(rgb.reshape(-1, 3), axis=0, return_inverse=True)  # few colours, many pixels
    distance = np.linalg.norm(colours[:, None, :] - table[None, :, :], axis=-1)  # (colours, 256)
    index = distance.argmin(1)
    which = which.reshape(-1)
    return distance[np.arange(len(colours)), index][which], index[which] / 255.0


def has_data(ax):
    """Whether `ax` draws something from data: a line with points, or bars."""
    return any(len(line.get_xdata()) for line in ax.lines) or any(bar.get_width() for bar in ax.patches)


def test_text_map_spans_the_colour_scale_of_the_learned_sizes(tmp_path, capsys, monkeypatch, figures):
    # Sizes as a trained model leaves them: 0.5-1.9 of the config's [0.5, 8], one layer not pooling.
    sigma = np.stack([np.linspace(0.5, 1.9, 12), np.linspace(1.9, 0.7, 12), np.full(12, np.nan)])
    labels = [f"t{i}" for i in range(12)]
    monkeypatch.setattr(visualize, "pooling_sizes", lambda *args, **kwargs: (sigma, labels))
    model = SimpleNamespace(config=ContextPoolConfig(pool_sigma_min=0.5, pool_sigma_max=8.0))
    visualize.save_pooling_heatmap(model, None, "unused", tmp_path / "p.png")
    (fig,) = figures
    ax, colorbar_ax = fig.axes
    (image,) = ax.images
    distance, value = nearest_on_colormap(pixels_of(fig, image), "viridis")
    on_map = distance < ON_COLORMAP
    assert on_map.mean() > 0.6  # two of three rows pool (the third is blank)
    assert value[on_map].min() < 0.05 and value[on_map].max() > 0.95  # the whole colour scale is used
    assert len(np.unique(np.round(value[on_map], 2))) >= 12
    assert image.get_clim() == (0.5, 1.9)
    assert colorbar_ax.get_ylim() == pytest.approx((0.5, 1.9))
    text = "span sigma 0.50-1.90 of [0.5, 8]"
    assert text in capsys.readouterr().out and text in ax.get_title()
    title = ax.title.get_window_extent(fig.canvas.get_renderer())
    assert (
        title.x0 >= 0 and title.x1 <= fig.bbox.width
    )  # a short passage's narrow figure still shows all of it


def test_vision_maps_are_colours_of_the_colour_bar_with_the_digit_outlined(tmp_path, figures):
    image = np.zeros((28, 28), dtype=np.float32)
    image[6:22, 11:17] = 1.0  # a bright bar: the map must not show it except as the outline
    maps = [np.linspace(1.0, 2.0, 49).reshape(7, 7), np.linspace(0.5, 3.0, 16).reshape(4, 4)]
    render_pooling_heatmap(image, maps, tmp_path / "v.png", titles=["a", "b"])
    (fig,) = figures
    colorbar_ax = fig.axes[-1]
    assert colorbar_ax.get_ylim() == pytest.approx((0.5, 3.0))
    panels = fig.axes[1:-1]
    for ax in panels:
        artist = ax.images[-1]  # the map, drawn last
        distance, _ = nearest_on_colormap(pixels_of(fig, artist), "magma")
        assert (distance > 0.3).sum() > 20  # the cyan outline is drawn on the map
        for contour in ax.collections:
            contour.set_visible(False)
        distance, value = nearest_on_colormap(pixels_of(fig, artist), "magma")
        assert distance.max() < ON_COLORMAP  # every map pixel is a colour the colour bar shows
    assert value.min() < 0.05 and value.max() > 0.95  # the last map spans the colour bar


def test_finetune_section_plots_have_data_and_no_empty_lm_plots(tmp_path, figures):
    runs = [{"section": "classification", "variant": "minilm-original", "eval_accuracy": 0.47, "curve": None},
            {"section": "mlm", "variant": "mlm-cp-qkv", "eval_accuracy": 0.04, "curve": None}]  # fmt: skip
    study_lm.plot([], runs, tmp_path)  # as benchmarks/minilm_finetune: --only none, no LM variant
    assert all(has_data(ax) for fig in figures for ax in fig.axes)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lm_study_finetune.png"]
    assert re.findall(r"`([^`]+)`", study_lm.plot_names([], runs)) == [
        "lm_study_finetune.png"
    ]  # lm_study.md's list
    (fig,) = figures
    (ax,) = fig.axes
    assert [bar.get_width() for bar in ax.patches] == [0.47, 0.04]


def test_lm_plots_have_data(tmp_path, figures):
    curve = [[10, 5.0], [20, 4.0], [30, 3.5]]
    runs = [
        {"section": "lm", "variant": name, "seed": 0, "curve": curve} for name in ("vanilla-off", "cp-qkv")
    ]
    table = [{"variant": name, "flops_total": 1e12, "eval_bpc": 2.0, "eval_bpc_std": float("nan")}
             for name in ("vanilla-off", "cp-qkv")]  # fmt: skip
    study_lm.plot(table, runs, tmp_path)
    assert len(figures) == 2 and all(has_data(ax) for fig in figures for ax in fig.axes)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lm_study_curves.png", "lm_study_loss.png"]
    assert all(len(line.get_xdata()) == len(curve) for line in figures[1].axes[0].lines)


def test_translation_lines_run_forward_in_time_one_style_per_seed(tmp_path, figures):
    def run(model, seed, times):
        return {"model": model, "seed": seed,
                "curve": [{"train_seconds": t, "val_bleu": 0.03 + 0.001 * t} for t in times]}  # fmt: skip

    rows = [run("vanilla (Marian)", 0, [17, 33, 50]), run("vanilla (Marian)", 1, [34, 18, 53]),  # out of order
            run("ContextPool", 0, [22, 46, 67]), run("ContextPool", 1, [21, 43, 63])]  # fmt: skip
    study_translation.plot_curves(rows, {"seeds": [0, 1], "val_pairs": 60}, tmp_path)
    assert (tmp_path / "translation_bleu_vs_time.png").exists()
    (fig,) = figures
    (ax,) = fig.axes
    assert len(ax.lines) == len(rows)
    for line in ax.lines:
        assert np.all(np.diff(line.get_xdata()) >= 0), line.get_label()
    # Seeds of one model share a colour: a reader tells their lines apart by style and label only.
    looks = {(line.get_color(), line.get_linestyle()) for line in ax.lines}
    assert len(looks) == len(rows)
    assert len({line.get_label() for line in ax.lines}) == len(rows)
    assert re.search(r"seed 1", " ".join(t.get_text() for t in ax.get_legend().get_texts()))
