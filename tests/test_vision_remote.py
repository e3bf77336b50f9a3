"""Remote code: a saved ContextPool vision model (+ image processor) loads and runs in a fresh
process that cannot import contextpool_hf, with an empty module cache and the Hub offline."""

from __future__ import annotations

import json
import textwrap

import pytest
import torch
from remote_utils import run_without_package
from transformers import ViTImageProcessorPil

from contextpool_hf import (
    ContextPoolResNetConfig,
    ContextPoolResNetForImageClassification,
    ContextPoolViTConfig,
    ContextPoolViTForImageClassification,
)

CHILD = textwrap.dedent(
    """
    import json, sys

    try:
        import contextpool_hf  # noqa: F401
        raise SystemExit("contextpool_hf must not be importable here")
    except ImportError:
        pass

    import numpy as np
    import torch
    from PIL import Image
    from transformers import AutoModel, AutoModelForImageClassification, pipeline

    folder, pixels_path = sys.argv[1], sys.argv[2]
    torch.set_num_threads(int(sys.argv[3]))  # the parent's count: the logits must match bit for bit
    pixel_values = torch.load(pixels_path)
    model = AutoModelForImageClassification.from_pretrained(folder, trust_remote_code=True).eval()
    base = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
    assert "contextpool_hf" not in sys.modules
    with torch.no_grad():
        out = model(pixel_values=pixel_values, output_pooling_sizes=True)
        base_out = base(pixel_values=pixel_values)
    classifier = pipeline("image-classification", model=folder, trust_remote_code=True)
    gray = Image.fromarray((np.arange(400).reshape(20, 20) % 255).astype("uint8"), mode="L")
    preds = classifier(gray, top_k=2)
    print(json.dumps({
        "class": type(model).__name__,
        "module": type(model).__module__,
        "logits": out.logits.tolist(),
        "n_sizes": len(out.pooling_sizes),
        "base_hidden": base_out.last_hidden_state.flatten()[:32].tolist(),
        "preds": preds,
    }))
    """
)


def _save(model, folder, size):
    model.save_pretrained(folder)
    ViTImageProcessorPil(size={"height": size, "width": size}, image_mean=[0.5] * 3, image_std=[0.5] * 3,
                         do_convert_rgb=True).save_pretrained(folder)


def _run_child(folder, pixel_values, tmp_path):
    pixels = tmp_path / "pixels.pt"
    torch.save(pixel_values, pixels)
    stdout = run_without_package(CHILD, timeout=300, cwd=tmp_path, args=[folder, pixels, torch.get_num_threads()])
    return json.loads(stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("which", ["vit", "resnet"])
def test_remote_code_fresh_process(tmp_path, which):
    torch.manual_seed(0)
    labels = {"id2label": {0: "zero", 1: "one", 2: "two"}, "label2id": {"zero": 0, "one": 1, "two": 2}}
    if which == "vit":
        config = ContextPoolViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                      intermediate_size=64, image_size=16, patch_size=4, pool_groups=2, **labels)
        model = ContextPoolViTForImageClassification(config).eval()
    else:
        config = ContextPoolResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic",
                                         pool_downsampling=["stem_pool", "stages"], **labels)
        model = ContextPoolResNetForImageClassification(config).eval()
    folder = tmp_path / "model"
    _save(model, folder, 16)
    pixel_values = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        expected = model(pixel_values=pixel_values, output_pooling_sizes=True)
        base = model.base_model(pixel_values=pixel_values)
    result = _run_child(folder, pixel_values, tmp_path)
    assert result["class"] == type(model).__name__
    assert not result["module"].startswith("contextpool_hf")  # the dynamic module, not the package
    # the same weights at other addresses in the child: oneDNN's conv kernels may round 1 ulp apart (seen on an AMD
    # EPYC host), so equal to float32 rounding, not bitwise
    torch.testing.assert_close(torch.tensor(result["logits"]), expected.logits, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(torch.tensor(result["base_hidden"]), base.last_hidden_state.flatten()[:32], rtol=1e-6,
                               atol=1e-7)  # fmt: skip
    assert result["n_sizes"] == len(expected.pooling_sizes)
    assert len(result["preds"]) == 2 and {p["label"] for p in result["preds"]} <= {"zero", "one", "two"}
    assert all(0.0 <= p["score"] <= 1.0 for p in result["preds"])
