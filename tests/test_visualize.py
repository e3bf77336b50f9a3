"""The pooling-size pictures: the colour scale spans the sizes the model used, and says so."""

import re

import numpy as np
import torch

from contextpool_hf import ContextPoolConfig, ContextPoolForCausalLM
from contextpool_hf.tokenization import train_bpe_tokenizer
from contextpool_hf.visualize import pooling_sizes, save_pooling_heatmap
from contextpool_hf.visualize_vision import render_pooling_heatmap

TEXT = "And the lord said unto them, Go ye into all the world"


def test_text_colour_scale_is_the_data_range(tmp_path, capsys, monkeypatch):
    torch.manual_seed(0)
    tokenizer = train_bpe_tokenizer([TEXT] * 30, vocab_size=300)
    config = ContextPoolConfig(vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                               intermediate_size=32, is_causal=True)  # fmt: skip
    model = ContextPoolForCausalLM(config)
    sigma, _ = pooling_sizes(model, tokenizer, TEXT)
    import matplotlib.axes

    seen = {}
    original = matplotlib.axes.Axes.imshow

    def spy(self, *args, **kwargs):
        seen.update(vmin=kwargs.get("vmin"), vmax=kwargs.get("vmax"))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "imshow", spy)
    save_pooling_heatmap(model, tokenizer, TEXT, tmp_path / "p.png")
    low, high = float(np.nanmin(sigma)), float(np.nanmax(sigma))
    assert (seen["vmin"], seen["vmax"]) == (low, high)
    assert high - low < config.pool_sigma_max - config.pool_sigma_min  # narrower than the config's range
    printed = re.search(r"span sigma ([\d.]+)-([\d.]+) of \[0.5, 8\]", capsys.readouterr().out)
    assert printed and (float(printed[1]), float(printed[2])) == (round(low, 2), round(high, 2))


def test_vision_maps_are_not_blended_and_outline_the_image(tmp_path, monkeypatch):
    image = np.zeros((8, 8), dtype=np.float32)
    image[2:6, 3:5] = 1.0  # a bright bar: its outline is a contour at 0.5
    maps = [np.linspace(1.0, 2.0, 16).reshape(4, 4)]
    import matplotlib.axes

    calls = {"imshow_alpha": [], "contour": 0}
    imshow, contour = matplotlib.axes.Axes.imshow, matplotlib.axes.Axes.contour

    def spy_imshow(self, *args, **kwargs):
        calls["imshow_alpha"].append(kwargs.get("alpha"))
        return imshow(self, *args, **kwargs)

    def spy_contour(self, *args, **kwargs):
        calls["contour"] += 1
        return contour(self, *args, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "imshow", spy_imshow)
    monkeypatch.setattr(matplotlib.axes.Axes, "contour", spy_contour)
    path = render_pooling_heatmap(image, maps, tmp_path / "v.png", titles=["site"])
    assert open(path, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    assert calls["imshow_alpha"] == [None, None]  # input panel + one opaque map panel
    assert calls["contour"] == 1
