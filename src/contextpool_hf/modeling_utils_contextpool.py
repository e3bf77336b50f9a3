"""Pieces every ContextPool model family shares (text, seq2seq, vision).

Flat, Hub-shipped file: imports only torch, transformers and its sibling flat files
(`save_pretrained` copies it next to any modeling file that imports it); accelerate only inside `_parameter_value`,
reached only where accelerate's own hooks offload a layer.
"""

from __future__ import annotations

import contextlib
import inspect

import torch
import torch.nn.functional as F

from .checks_contextpool import _autocast_on, _values_unreadable

# `_is_compiling` is the op module's, re-exported here so every model file takes it from one place.
from .pooling_contextpool import ContextPool, _is_compiling  # noqa: F401
from .predictor_contextpool import _is_plain_layer


class ContextPoolHubMixin:
    """`push_to_hub` for the ContextPool `PreTrainedModel` bases; list it before `PreTrainedModel`."""

    def push_to_hub(self, repo_id, **kwargs):
        """Upload with the flat code files and the ContextPool model card.

        With `contextpool_hf` installed this goes through `contextpool_hf.hub.push_model`
        (returns a `PushResult`; `.oid`/`.commit_sha` is the revision to pin). Without it
        (the model was loaded from the Hub) it is transformers' own `push_to_hub`.
        """
        try:
            from contextpool_hf.hub import push_model
        except ImportError:
            return super().push_to_hub(repo_id, **kwargs)
        return push_model(self, repo_id, **kwargs)


def _mix_pooled(original: torch.Tensor, pooled: torch.Tensor, mix: torch.Tensor) -> torch.Tensor:
    """original + mix * (pooled - original): the learnable mix between features and their pooled context
    (exactly `original` at mix 0, the identity start). mix broadcasts against both (a scalar, or one value per
    group viewed as (1, G, 1, ...)).

    Eager, one lerp: its backward reads its inputs, which the layer keeps anyway, where `mix * (pooled -
    original)` saves the difference for mix's gradient, one more tensor the size of the features per layer.
    Compiled, the same sum as two products: traced, lerp decomposes into that difference, which the
    partitioner then saves (measured: one (B, n, d) tensor per pooled layer of the causal LM step), while
    each product saves only its inputs; inductor fuses the products into one kernel either way. In bf16/fp16
    the products would round three times where lerp computes in float32 and rounds once, so there it stays
    lerp (the difference it saves is then half the size).
    """
    if mix.dtype != original.dtype:  # a decoding step pays for every call, a no-op .to() included
        mix = mix.to(original.dtype)
    if _is_compiling() and original.dtype in (torch.float32, torch.float64):
        return original * (1 - mix) + pooled * mix
    return torch.lerp(original, pooled, mix)


class _MixedProjection(torch.autograd.Function):
    """F.linear(cat([head, lerp(original, pooled, mix)], dim=1), weight, bias) without keeping its input.

    `F.linear`'s backward keeps its input, the mixed features, for the weight's gradient: one more
    tensor of the layer's input size per pooled layer, while `original` and `pooled` (which rebuild it
    exactly) are kept anyway by the predictor and the pooling. This keeps those and rebuilds the input
    in the backward (one lerp and one cat, a small part of the matmuls). `head` (B, k, d): tokens
    before the pooled ones that are not pooled (the ViT's CLS token), or None.
    """

    @staticmethod
    def forward(ctx, head, original, pooled, mix, weight, bias):
        # head (B, k, d) or None; original, pooled (..., n, d); weight (out, d) -> (..., k + n, out)
        out = F.linear(_mixed_input(head, original, pooled, mix), weight, bias)
        # head is a copy: a few rows viewed out of a larger tensor would keep all of it
        ctx.save_for_backward(None if head is None else head.clone(), original, pooled, mix, weight)
        ctx.has_bias = bias is not None
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        head, original, pooled, mix, weight = ctx.saved_tensors
        need_head, need_original, need_pooled, need_mix, need_weight, need_bias = ctx.needs_input_grad
        grad_in = grad_out.matmul(weight)  # (B, N, d)
        grad_weight = grad_bias = None
        if need_weight:  # the forward's input, rebuilt by the same ops (the same values)
            mixed = _mixed_input(head, original, pooled, mix)
            grad_weight = grad_out.flatten(0, -2).transpose(0, 1).matmul(mixed.flatten(0, -2))  # (out, d)
            del mixed
        if need_bias and ctx.has_bias:
            grad_bias = grad_out.flatten(0, -2).sum(0)
        skip = 0 if head is None else head.shape[1]
        grad_head = grad_in[:, :skip] if need_head and head is not None else None
        grad_original, grad_pooled, grad_mix = _lerp_grads(grad_in[:, skip:], original, pooled, mix,
                                                           need_original, need_pooled, need_mix)  # fmt: skip
        return grad_head, grad_original, grad_pooled, grad_mix, grad_weight, grad_bias


def _lerp_grads(grad, start, end, weight, need_start, need_end, need_weight):
    """The gradients of lerp(start, end, weight) = start + weight * (end - start) for the hand-written backwards
    that rebuild or recompute lerp's inputs (None where not needed; start and end are read only for the weight's)."""
    grad_start = grad * (1 - weight) if need_start else None
    grad_end = grad * weight if need_end else None
    grad_weight = (end - start).mul_(grad).sum_to_size(weight.shape) if need_weight else None
    return grad_start, grad_end, grad_weight


def _mixed_input(head, original, pooled, mix):
    mixed = torch.lerp(original, pooled, mix)
    return mixed if head is None else torch.cat([head, mixed], dim=1)


def _mixed_projection(head, original, pooled, mix, layers) -> torch.Tensor | None:
    """`layers` (nn.Linear) side by side as one matmul of cat([head, the mix of original and pooled]), through
    `_MixedProjection`, which keeps no copy of the mixed input; None where that does not apply (the caller mixes
    and projects as usual).

    head (B, k, d) or None, original and pooled (..., n, d), mix broadcasting against them -> (..., k + n, sum of
    the layers' out_features). Applies while autograd records, eager, outside autocast, with plain nn.Linear
    layers (a PEFT adapter's own forward must run).
    """
    if not torch.is_grad_enabled() or _is_compiling() or _autocast_on(original.device.type):
        return None
    if not all(_is_plain_layer(layer) for layer in layers):
        return None
    mix = mix if mix.dtype == original.dtype else mix.to(original.dtype)
    return _MixedProjection.apply(head, original, pooled, mix, *_stacked_linear(layers))


def _stacked_linear(layers) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(weight, bias) of plain nn.Linear `layers` side by side: one matmul computes all their outputs,
    concatenated along the last dim. One layer's own tensors need no copy; bias None when they have none."""
    if len(layers) == 1:
        return layers[0].weight, layers[0].bias
    bias = torch.cat([layer.bias for layer in layers]) if layers[0].bias is not None else None
    return torch.cat([layer.weight for layer in layers]), bias


def _pool_from_config(config, channels: int, causal: bool, **kwargs) -> ContextPool:
    """A ContextPool from a config's `pool_*` fields (the same names in every family).

    `kwargs` are the remaining `ContextPool` arguments (vision: `spatial_dims=2`, `stride`).
    """
    return ContextPool(
        channels,
        groups=config.pool_groups,
        sigma_min=config.pool_sigma_min,
        sigma_max=config.pool_sigma_max,
        truncation=config.pool_truncation,
        normalize=config.pool_normalize,
        causal=causal,
        kernel_size=config.pool_kernel_size,
        predictor_width=config.pool_predictor_width,
        implementation=config.pool_implementation,
        **kwargs,
    )


def _classification_loss(config, logits: torch.Tensor, labels: torch.Tensor, *, float32: bool) -> torch.Tensor:
    """Loss by `config.problem_type`; when unset it is chosen (and stored) as transformers' heads do.

    float32=True computes the loss on float32 logits (the text heads); float32=False in the
    logits' own dtype (the vision heads, as transformers' ViT/ResNet). Under bf16/fp16 the two
    give different dtypes and roundings, so each family keeps its own choice.
    """
    labels = labels.to(logits.device)
    num_labels = config.num_labels
    problem_type = config.problem_type
    if problem_type is None:
        if num_labels == 1:
            problem_type = "regression"
        elif num_labels > 1 and labels.dtype in (torch.long, torch.int):
            problem_type = "single_label_classification"
        else:
            problem_type = "multi_label_classification"
    if float32:
        logits = logits.float()
    _check_classification_labels(problem_type, logits, labels)
    # stored only once the labels fit: a refused batch (float class ids, say) must not fix the problem type of
    # every later one, as it did when the choice was stored before the check
    if config.problem_type is None:
        config.problem_type = problem_type
    if problem_type == "regression":
        if num_labels == 1:  # logits (B, 1), labels (B,) or (B, 1)
            return F.mse_loss(logits.squeeze(-1), labels.reshape(-1).to(logits.dtype))
        return F.mse_loss(logits, labels.to(logits.dtype))
    if problem_type == "single_label_classification":
        # int32 class ids (a datasets int32 column) as int64: cross_entropy takes no other integer targets
        return F.cross_entropy(logits.reshape(-1, num_labels), labels.reshape(-1).long())
    return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))


def _check_classification_labels(problem_type: str, logits: torch.Tensor, labels: torch.Tensor) -> None:
    """labels that fit logits (B, num_labels) for `problem_type`, else a ValueError naming labels. Before, torch's
    own errors from inside the loss ("Expected input batch_size (2) to match target batch_size (4)", "Target 5 is
    out of bounds", a broadcast error) or, for regression targets of another count, a broadcast."""
    batch, num_labels = logits.shape[0], logits.shape[-1]
    if problem_type == "multi_label_classification":
        if labels.shape != logits.shape:
            raise ValueError(
                f"labels must be (batch, num_labels) = {tuple(logits.shape)} multi-hot targets for problem_type="
                f"'multi_label_classification', got shape {tuple(labels.shape)} ({labels.dtype}). Class ids for "
                "single-label classification are torch.int64 or torch.int32 (as in transformers, the dtype picks "
                "the problem type when config.problem_type is unset)"
            )
        return
    # one target per example ((B,) or (B, 1)), or for regression over several outputs one per logit
    expected = batch * (num_labels if problem_type == "regression" and num_labels > 1 else 1)
    if labels.numel() != expected:
        shape = f"({batch},)" if expected == batch else f"{tuple(logits.shape)}"
        raise ValueError(f"labels must hold {expected} targets, {shape}, for problem_type={problem_type!r} and "
                         f"logits of shape {tuple(logits.shape)}, got shape {tuple(labels.shape)}")  # fmt: skip
    if problem_type == "single_label_classification" and labels.numel() and not _values_unreadable(labels):
        bad = (labels != -100) & ((labels < 0) | (labels >= num_labels))
        if bool(bad.any()):
            raise ValueError(f"labels must be class ids in [0, num_labels) = [0, {num_labels}) or -100 (ignore), "
                             f"got {int(labels[bad][0])}")  # fmt: skip


def _linear_without_bias(layer, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(layer(x) less its bias, the bias or None), for the paths that pool projections and add the bias after
    pooling (`_add_bias`).

    A plain nn.Linear is read directly (one matmul); any other layer (a PEFT LoRA adapter, a quantised
    linear, an offloaded layer) runs its own forward and its bias is taken off, so the adapter is never skipped.
    The bias is read once, here (through `_parameter_value`: an offloaded layer's is loaded for the read).
    """
    if _is_plain_layer(layer):
        return F.linear(x, layer.weight), layer.bias
    out = layer(x)
    bias = _parameter_value(layer, "bias")
    return (out if bias is None else out - bias), bias


def _add_bias(x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """x + bias, or x where the layer has none (`_linear_without_bias`)."""
    return x if bias is None else x + bias


def _parameter_value(module, name: str) -> torch.Tensor | None:
    """`module.<name>` (a parameter; None where absent) as a tensor to compute with, also where accelerate
    offloads it, or where the layer gives it by a method (torch.ao's quantized layers: `bias()`).

    An offloaded module's parameters wait on the meta device between its forwards (see `_offloaded`). The paths
    that read one outside that module's forward (a bias added after pooling, the mix of a pooled block output)
    read it here, where accelerate's `align_module_device` loads it for the read. The tensor read stays valid
    when the hook puts the module's parameters back on meta (it replaces them, it does not empty them).
    """
    value = getattr(module, name, None)
    if callable(value) and not isinstance(value, torch.Tensor):  # quantize_dynamic's Linear: weight(), bias()
        value = value()
    if value is None or not value.is_meta:
        return value
    try:  # only an accelerate hook puts a module's parameters on meta while its inputs are real
        from accelerate.utils import align_module_device, has_offloaded_params
    except ImportError:
        return value
    with contextlib.ExitStack() as loaded:
        # the module that holds a parameter of that name: this one, or a wrapper's base layer (a PEFT adapter)
        for part in module.modules():
            if part._parameters.get(name) is not None and has_offloaded_params(part):
                loaded.enter_context(align_module_device(part))
        return getattr(module, name)


def _keep_forward_signature(model_class) -> None:
    """Keep `model_class.forward`'s signature on the function, where `inspect.signature` finds it at once.

    `generate` asks on every decoding step of a model registered for the Hub (`_auto_class`, as ours are)
    whether its forward takes `cache_position` (transformers' `prepare_inputs_for_generation`); working the
    signature out costs about 90 us there, against about 20 us for a kept one: a percent or two of a
    decoding step at batch 1. The answer is the same (the signature is the function's own).
    """
    forward = model_class.forward
    forward.__signature__ = inspect.signature(forward)


__all__ = ["ContextPoolHubMixin"]
