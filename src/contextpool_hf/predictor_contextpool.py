"""The ContextPool predictor m(X) -> (a, b) (spec item 1) and its fused 1-D function.

Flat, Hub-shipped file (imports only torch and its sibling checks file). pooling_contextpool.py
re-exports these names.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .checks_contextpool import (
    _autocast_off,
    _autocast_on,
    _check_module_options,
    _define_op,
    _dims_by_stride,
    _is_compiling,
    _is_exporting,
    _op_namespace,
)

# --------------------------------------------------------------------------------------
# Fused 1-D predictor: depthwise conv -> GELU -> projection -> sigmoid
# --------------------------------------------------------------------------------------


def _depthwise_conv_1d(h_pad: torch.Tensor, weight: torch.Tensor, bias, n: int) -> torch.Tensor:
    """out[:, t] = bias + sum_j weight[:, j] * h_pad[:, t + j]: nn.Conv1d's cross-correlation,
    computed in the (B, n, C) layout as kernel_size multiply-adds. h_pad (B, n + k - 1, C)."""
    out = h_pad[:, :n] * weight[:, 0]
    for j in range(1, weight.shape[1]):
        out.addcmul_(h_pad[:, j : j + n], weight[:, j])
    if bias is not None:
        out += bias
    return out


def _tap_shifts(kernel: int, pad_left: int, n: int):
    """(tap j, shift s = j - pad_left) for the taps that reach the sequence (|s| < n): tap j reads
    h[t + s] for output t, zero outside (the padding)."""
    return [(j, j - pad_left) for j in range(kernel) if abs(j - pad_left) < n]


def _depthwise_conv_1d_unpadded(h, weight, bias, pad_left):
    """`_depthwise_conv_1d` of the zero-padded h without building the padded copy: the centre
    tap writes every output (bias included), the others add into the outputs they reach."""
    n = h.shape[1]
    centre = weight[:, pad_left]
    out = torch.addcmul(bias, h, centre) if bias is not None else h * centre  # (B, n, C)
    for j, shift in _tap_shifts(weight.shape[1], pad_left, n):
        if shift < 0:
            out[:, -shift:].addcmul_(h[:, : n + shift], weight[:, j])
        elif shift > 0:
            out[:, : n - shift].addcmul_(h[:, shift:], weight[:, j])
    return out


def _gelu_projection_backward(grad_gates, conv, proj_weight, gates, has_proj_bias):
    """The backward of gates = sigmoid(proj(gelu(conv))), the GELU recomputed from the saved conv output.

    grad_gates and gates (B, 2G, *spatial); conv (B, *spatial, C), row-major -> (grad_conv (B, *spatial, C),
    grad_proj_weight (2G, C), grad_proj_bias (2G,) or None)."""
    grad_logits = torch.ops.aten.sigmoid_backward(grad_gates, gates)  # (B, 2G, *spatial)
    act = F.gelu(conv)  # recomputed: (B, *spatial, C)
    flat_grad = grad_logits.transpose(0, 1).reshape(grad_logits.shape[1], -1)  # (2G, B*positions)
    grad_proj_weight = flat_grad @ act.reshape(-1, act.shape[-1])  # (2G, C)
    grad_proj_bias = flat_grad.sum(1) if has_proj_bias else None
    # into act's memory, free now, and the GELU gradient in place: fresh buffers of this size cost the CPU page
    # faults (measured: the 2-D predictor's backward 1.29x -> 1.10x the autograd nodes' time at ViT sizes)
    into = act.view(-1, act.shape[-1]) if act.is_contiguous() else None
    grad_act = torch.mm(flat_grad.t(), proj_weight, out=into).view(conv.shape)  # (B, *spatial, C)
    grad_conv = torch.ops.aten.gelu_backward.grad_input(grad_act, conv, grad_input=grad_act)
    return grad_conv, grad_proj_weight, grad_proj_bias


def _predictor_1d_forward(h, conv_weight, conv_bias, proj_weight, proj_bias, pad_left):
    """The forward of `_FusedPredictor1d`: h (B, n, C); conv_weight (C, k); proj_weight (2G, C) -> the gates
    (B, 2G, n)."""
    if _is_exporting():  # shifted slices would decide on n (|shift| < n): pad instead
        n, kernel = h.shape[1], conv_weight.shape[1]
        h_pad = F.pad(h, (0, 0, pad_left, kernel - 1 - pad_left))  # (B, n + k - 1, C)
        conv = _depthwise_conv_1d(h_pad, conv_weight, conv_bias, n)
    else:
        conv = _depthwise_conv_1d_unpadded(h, conv_weight, conv_bias, pad_left)
    return _project_channels_first(F.gelu(conv), proj_weight, proj_bias).sigmoid_()  # (B, 2G, n)


def _predictor_1d_backward(grad_gates, h, conv_weight, conv_bias, proj_weight, gates, pad_left, has_proj_bias):
    """The backward of `_FusedPredictor1d`: grad_gates and gates (B, 2G, n) -> the gradients of h, the conv
    weight and bias, the projection weight and bias (a bias's None when it has none). The conv output and its
    GELU are recomputed (the conv is kernel_size passes over h; kept, it was one more (B, n, C) tensor per
    pooling site for the whole forward and backward)."""
    n, kernel = h.shape[1], conv_weight.shape[1]
    has_conv_bias = conv_bias is not None
    conv = _depthwise_conv_1d_unpadded(h, conv_weight, conv_bias, pad_left)  # recomputed: (B, n, C)
    grad_conv, grad_proj_weight, grad_proj_bias = _gelu_projection_backward(grad_gates, conv, proj_weight, gates,
                                                                            has_proj_bias)  # fmt: skip
    grad_conv_bias = grad_conv.sum((0, 1)) if has_conv_bias else None
    # the adjoint of the shifted multiply-adds: out[t] += w_j h[t + s]  =>  grad_h[t + s] += w_j grad_conv[t]
    grad_h = grad_conv * conv_weight[:, pad_left]
    grad_conv_weight = torch.zeros_like(conv_weight)  # (C, k); taps that reach nothing stay 0
    grad_conv_weight[:, pad_left] = torch.linalg.vecdot(grad_conv, h, dim=1).sum(0)
    for j, shift in _tap_shifts(kernel, pad_left, n):
        if shift < 0:
            g, x = grad_conv[:, -shift:], h[:, : n + shift]
            grad_h[:, : n + shift].addcmul_(g, conv_weight[:, j])
        elif shift > 0:
            g, x = grad_conv[:, : n - shift], h[:, shift:]
            grad_h[:, shift:].addcmul_(g, conv_weight[:, j])
        else:
            continue
        grad_conv_weight[:, j] = torch.linalg.vecdot(g, x, dim=1).sum(0)
    return grad_h, grad_conv_weight, grad_conv_bias, grad_proj_weight, grad_proj_bias


# Under torch.compile the backward below is a custom operator, as the pooling's is (see pooling_1d_contextpool):
# traced through, the compiled step kept more forward intermediates than the eager one.


def _predictor_1d_backward_op_impl(grad_gates: torch.Tensor, h: torch.Tensor, conv_weight: torch.Tensor,
                                   conv_bias: torch.Tensor, proj_weight: torch.Tensor, gates: torch.Tensor, pad_left: int
                                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """`_predictor_1d_backward` with both biases' gradients (the caller drops a bias's it has not): an operator
    takes and returns tensors, never None (an empty conv_bias: the conv has none)."""
    grads = _predictor_1d_backward(grad_gates, h, conv_weight, conv_bias if conv_bias.numel() else None, proj_weight,
                                   gates, pad_left, True)  # fmt: skip
    return tuple(h.new_zeros(conv_weight.shape[0]) if g is None else g.contiguous() for g in grads)


def _predictor_1d_backward_op_fake(grad_gates, h, conv_weight, conv_bias, proj_weight, gates, pad_left):
    # contiguous, as the operator returns them (empty_like would copy a permuted input's strides)
    channels, logits = conv_weight.shape[0], proj_weight.shape[0]
    return (h.new_empty(h.shape), h.new_empty(conv_weight.shape), h.new_empty(channels), h.new_empty(proj_weight.shape),
            h.new_empty(logits))  # fmt: skip


_predictor_1d_backward_op = _define_op(_op_namespace(__name__), "predictor_1d_backward", _predictor_1d_backward_op_impl,
                                       _predictor_1d_backward_op_fake)  # fmt: skip


class _FusedPredictor1d(torch.autograd.Function):
    """sigmoid(proj(gelu(depthwise_conv(h)))) for 1-D sequences, with a hand-written backward.

    One function instead of four autograd nodes: on a CPU the depthwise conv's backward alone
    cost more than the pooling, and the layout changes around nn.Conv1d ((B, n, C) <-> (B, C, n))
    copied the input twice. The conv runs on shifted slices of h (no padded copy). Saved: the
    input (which the pooling keeps anyway) and the (B, 2G, n) gates; the conv output and its GELU are
    recomputed in the backward. Under torch.compile the backward is a custom operator
    (`_predictor_1d_backward_op`).
    """

    @staticmethod
    @_autocast_off
    def forward(ctx, h, conv_weight, conv_bias, proj_weight, proj_bias, pad_left):
        # h (B, n, C); conv_weight (C, k); proj_weight (2G, C) -> gates (B, 2G, n)
        gates = _predictor_1d_forward(h, conv_weight, conv_bias, proj_weight, proj_bias, pad_left)
        ctx.save_for_backward(h, conv_weight, conv_bias, proj_weight, gates)
        ctx.options = (pad_left, proj_bias is not None)
        return gates

    @staticmethod
    @_autocast_off
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_gates):
        if not _is_compiling():
            return (*_predictor_1d_backward(grad_gates, *ctx.saved_tensors, *ctx.options), None)
        h, conv_weight, conv_bias, proj_weight, gates = ctx.saved_tensors
        pad_left, has_proj_bias = ctx.options
        bias = h.new_empty(0) if conv_bias is None else conv_bias
        grad_h, grad_conv_weight, grad_conv_bias, grad_proj_weight, grad_proj_bias = _predictor_1d_backward_op(
            grad_gates, h, conv_weight, bias, proj_weight, gates, pad_left
        )
        return (grad_h, grad_conv_weight, None if conv_bias is None else grad_conv_bias, grad_proj_weight,
                grad_proj_bias if has_proj_bias else None, None)  # fmt: skip


class _GeluProjectionGates(torch.autograd.Function):
    """sigmoid(proj(gelu(conv))) of the predictor's conv output (B, *spatial, C), row-major -> (B, 2G, *spatial).

    Autograd's own nodes keep the GELU output for the projection's weight gradient: one more tensor as large as
    the pooling site's input, at every site. This function keeps the conv output only (GELU's backward needs it
    anyway) and recomputes the GELU in the backward. The 2-D predictor under torch.compile or autocast and 1-D
    predictors outside the fused function (a carried conv state) take it.
    """

    @staticmethod
    def forward(ctx, conv, proj_weight, proj_bias):
        gates = _project_channels_first(F.gelu(conv), proj_weight, proj_bias).sigmoid_()  # (B, 2G, *spatial)
        ctx.save_for_backward(conv, proj_weight, gates)
        ctx.has_proj_bias = proj_bias is not None
        return gates

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_gates):
        conv, proj_weight, gates = ctx.saved_tensors
        if not _is_compiling():
            return _gelu_projection_backward(grad_gates, conv, proj_weight, gates, ctx.has_proj_bias)
        grad_conv, grad_proj_weight, grad_proj_bias = _gelu_projection_backward_op(grad_gates, conv, proj_weight, gates)
        return grad_conv, grad_proj_weight, grad_proj_bias if ctx.has_proj_bias else None


class _FusedPredictor2d(torch.autograd.Function):
    """sigmoid(proj(gelu(depthwise_conv2d(h)))) for 2-D maps, keeping neither the conv output nor its GELU.

    `_GeluProjectionGates` keeps the conv output (GELU's backward reads it): one tensor as large as the site's
    input, at every site, for the whole forward and backward. Here the conv is recomputed in the backward from h,
    which the conv's backward reads anyway (and the pooling keeps), as the 1-D function does: about 1.13x the
    predictor's time for one tensor less per site (measured at the ViT and ResNet site shapes). h (B, H, W, C), any
    memory layout (the conv runs on its (B, C, H, W) view); conv_weight (C, 1, k, k).
    """

    @staticmethod
    def forward(ctx, h, conv_weight, conv_bias, proj_weight, proj_bias):
        conv = _conv2d_rows(h, conv_weight, conv_bias)  # (B, H, W, C)
        gates = _project_channels_first(_gelu_dense(conv), proj_weight, proj_bias).sigmoid_()  # (B, 2G, H, W)
        ctx.save_for_backward(h, conv_weight, conv_bias, proj_weight, gates)
        ctx.has_proj_bias = proj_bias is not None
        return gates

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_gates):
        h, conv_weight, conv_bias, proj_weight, gates = ctx.saved_tensors
        conv = _conv2d_rows(h, conv_weight, conv_bias)  # recomputed, the forward's values: (B, H, W, C)
        grad_conv, grad_proj_weight, grad_proj_bias = _gelu_projection_backward(grad_gates, conv, proj_weight, gates,
                                                                                ctx.has_proj_bias)  # fmt: skip
        del conv
        need_h, need_conv_weight, need_conv_bias = ctx.needs_input_grad[:3]
        kernel = conv_weight.shape[-1]
        grad_h, grad_conv_weight, grad_conv_bias = torch.ops.aten.convolution_backward.default(
            grad_conv.permute(0, 3, 1, 2), h.permute(0, 3, 1, 2), conv_weight,
            None if conv_bias is None else list(conv_bias.shape), [1, 1], [kernel // 2] * 2, [1, 1], False, [0, 0],
            conv_weight.shape[0], [need_h, need_conv_weight, need_conv_bias and conv_bias is not None],
        )  # fmt: skip
        grad_h = None if grad_h is None else grad_h.permute(0, 2, 3, 1)  # (B, H, W, C)
        return grad_h, grad_conv_weight, grad_conv_bias, grad_proj_weight, grad_proj_bias


def _conv2d_rows(h, weight, bias):
    """The predictor's depthwise conv of h (B, H, W, C) as nn.Conv2d computes it, returned as (B, H, W, C)."""
    kernel = weight.shape[-1]
    return F.conv2d(h.permute(0, 3, 1, 2), weight, bias, padding=kernel // 2, groups=weight.shape[0]).permute(0, 2, 3, 1)


def _gelu_projection_backward_op_impl(grad_gates: torch.Tensor, conv: torch.Tensor, proj_weight: torch.Tensor,
                                      gates: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`_gelu_projection_backward` with the bias's gradient (the caller drops it without a bias), for
    torch.compile: traced through, the compiled step could keep the GELU output this function exists not to keep."""
    grads = _gelu_projection_backward(grad_gates, conv, proj_weight, gates, True)
    return tuple(g.contiguous() for g in grads)


def _gelu_projection_backward_op_fake(grad_gates, conv, proj_weight, gates):
    return conv.new_empty(conv.shape), conv.new_empty(proj_weight.shape), conv.new_empty(proj_weight.shape[0])


_gelu_projection_backward_op = _define_op(_op_namespace(__name__), "gelu_projection_backward",
                                          _gelu_projection_backward_op_impl, _gelu_projection_backward_op_fake)  # fmt: skip


def _predictor_input(in_proj, hidden, keep):
    """What the predictor's conv reads: hidden (B, n, d) / (B, H, W, d), through `in_proj` when there is one, with
    padding zeroed (keep (B, n) / (B, H, W), or None): padding must not leak into real tokens' logits."""
    h = in_proj(hidden) if in_proj is not None else hidden
    if keep is not None:
        h = h * keep.unsqueeze(-1).to(h.dtype)
    return h


_PLAIN_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d)
# torch's hooks on every module (`torch.nn.modules.module.register_module_forward_hook` and its kin): dicts that
# registering fills in place, which Module.__call__ reads before it skips to the forward
_GLOBAL_MODULE_HOOKS = tuple(
    getattr(torch.nn.modules.module, name, {})
    for name in ("_global_forward_pre_hooks", "_global_forward_hooks", "_global_backward_pre_hooks",
                 "_global_backward_hooks")
)  # fmt: skip


def _is_plain_layer(layer) -> bool:
    """Whether a fast path may read `layer.weight` / `.bias` instead of calling the layer: a plain nn.Linear or
    nn.Conv, not a wrapper whose forward adds to its base weights (a PEFT LoRA adapter, a quantised linear),
    which reading the weights would silently skip; not a layer with hooks (`_has_hooks`); and not a layer whose
    weights are offloaded (`_offloaded`). Any other layer is called."""
    return type(layer) in _PLAIN_LAYERS and not _has_hooks(layer) and not _offloaded(layer)


def _has_hooks(layer) -> bool:
    """Whether calling `layer` runs more than its forward: hooks on it or on every module, the test torch's
    Module.__call__ makes. Reading its weights would skip them: a user's forward or backward hooks, and
    reparametrisations kept by a forward pre-hook (`torch.nn.utils.prune`, the old `weight_norm`), whose
    `weight` is then a tensor the hook recomputes from the trained parameters at each call."""
    return bool(layer._forward_pre_hooks or layer._forward_hooks or layer._backward_pre_hooks
                or layer._backward_hooks or any(_GLOBAL_MODULE_HOOKS))  # fmt: skip


def _offloaded(layer) -> bool:
    """Whether accelerate offloads `layer`'s weights (`from_pretrained(device_map=...)` with "cpu" or "disk"
    entries, `cpu_offload`, `disk_offload`): they then wait on the meta device, and the hook it sets on the layer
    (`_hf_hook`) loads them for the layer's own forward only, so the layer must be called, not read. A model
    all on the meta device (shape runs) has no hook: its fast paths run on meta like the rest."""
    if "_hf_hook" not in layer.__dict__:
        return False
    weight = layer._parameters.get("weight")  # None where a reparametrisation took it out (then it has hooks)
    return weight is None or weight.is_meta


def _project_channels_first(act: torch.Tensor, weight: torch.Tensor, bias) -> torch.Tensor:
    """The predictor's projection to 2G logits, channels first: act (B, *spatial, C) -> (B, 2G, *spatial).

    Computed as one wide (2G x C) @ (C x B*positions) matmul: the same product as F.linear, but
    F.linear's (B*positions x C) @ (C x 2G) has an output only 2G wide, which CPU BLAS runs
    2.5-4x slower (measured at predictor sizes: (8192 x 32) 180 -> 51 us, (4096 x 256) 437 -> 171 us).
    The result is a (2G, B, *spatial) tensor seen as (B, 2G, *spatial).
    """
    flat = act.reshape(-1, act.shape[-1])  # (B*positions, C)
    logits = torch.mm(weight, flat.t()) if bias is None else torch.addmm(bias.unsqueeze(1), weight, flat.t())
    logits = logits.view((weight.shape[0],) + tuple(act.shape[:-1]))  # (2G, B, *spatial)
    return logits.transpose(0, 1)  # (B, 2G, *spatial), a view


def _gelu_dense(t: torch.Tensor) -> torch.Tensor:
    """F.gelu of a permuted view, run on whichever of its two layouts is dense in memory.

    GELU and its backward take 2x longer on a tensor that is not row-major in its own shape
    (measured on the CPU: a channels-last (B, C, H, W) conv output, or the (B, n, C) view of a
    (B, C, n) one), so the permuted view's GELU is taken where it is contiguous, the result the same.
    """
    if t.is_contiguous() or t.dim() < 3:
        return F.gelu(t)
    # t is a permuted view of a contiguous tensor (the conv output): GELU there, then the same view
    order, inverse = _dims_by_stride(t)  # dims by stride, outermost first
    base = t.permute(order)
    if not base.is_contiguous():
        return F.gelu(t)
    return F.gelu(base).permute(inverse)


# --------------------------------------------------------------------------------------
# The predictor module
# --------------------------------------------------------------------------------------


class ContextPoolPredictor(nn.Module):
    """m(X) -> (a, b): depthwise conv -> GELU -> linear to 2 * groups logits (spec item 1).

    `a` gives the token weights (w = sigmoid(a)), `b` the pooling sizes. The causal variant
    pads on the left only, so a token's logits never see later tokens; its conv state (the
    last kernel_size - 1 inputs) is what incremental decoding carries between steps.
    """

    def __init__(
        self,
        hidden_size: int,
        groups: int = 1,
        kernel_size: int = 3,
        causal: bool = False,
        width: int | None = None,
        spatial_dims: int = 1,
    ):
        super().__init__()
        _check_module_options(hidden_size, groups, kernel_size, causal, width, spatial_dims)
        width = width or hidden_size
        self.groups, self.kernel_size, self.causal, self.spatial_dims, self.width = (
            groups,
            kernel_size,
            causal,
            spatial_dims,
            width,
        )
        # A narrower predictor first projects down; at full width it reads the input directly.
        self.in_proj = nn.Linear(hidden_size, width, bias=False) if width != hidden_size else None
        conv = nn.Conv1d if spatial_dims == 1 else nn.Conv2d
        padding = 0 if causal else kernel_size // 2
        self.conv = conv(width, width, kernel_size, padding=padding, groups=width)
        self.proj = nn.Linear(width, 2 * groups)

    @property
    def state_size(self) -> int:
        """How many past conv inputs a causal predictor needs to continue a sequence."""
        return self.kernel_size - 1

    def forward(self, hidden: torch.Tensor, keep: torch.Tensor | None = None, conv_state=None):
        """hidden: (B, n, d) or (B, H, W, d); keep: (B, n) / (B, H, W) real-token mask.

        Returns a, b of shape (B, groups, n) / (B, groups, H, W), and the new conv state
        (B, kernel_size - 1, width), token-major, for causal 1-D predictors (else None).
        """
        logits, new_state = self._logits(hidden, keep, conv_state)
        a, b = logits.chunk(2, dim=1)
        return a, b, new_state

    def _logits(self, hidden, keep, conv_state):
        """(logits (B, 2G, n) / (B, 2G, H, W), new conv state): conv -> GELU -> projection."""
        conv, new_state = self._conv_output(hidden, keep, conv_state)
        return self._project(conv), new_state

    def _project(self, conv):
        """GELU -> projection of the conv output (B, n, width) / (B, H, W, width) -> logits (B, 2G, n) / (B, 2G, H, W)."""
        act = _gelu_dense(conv)
        if not _is_plain_layer(self.proj):  # a wrapped projection (a PEFT adapter, ...): its own forward
            return self.proj(act).permute((0, 2, 1) if self.spatial_dims == 1 else (0, 3, 1, 2))
        return _project_channels_first(act, self.proj.weight, self.proj.bias)

    def _conv_output(self, hidden, keep, conv_state):
        """(the depthwise conv's output as (B, n, width) / (B, H, W, width), a view of nn.Conv's output; the new
        conv state)."""
        h = _predictor_input(self.in_proj, hidden, keep)
        # explicit non-negative permutations: movedim(-1, 1) exports to ONNX as a negative one,
        # which onnxruntime rejects
        to_channels = (0, 2, 1) if self.spatial_dims == 1 else (0, 3, 1, 2)
        to_last = (0, 2, 1) if self.spatial_dims == 1 else (0, 2, 3, 1)
        h = h.permute(to_channels)  # (B, width, n) or (B, width, H, W)
        new_state = None
        if self.causal:
            if conv_state is None:
                conv_state = h.new_zeros(h.shape[0], self.state_size, h.shape[1])
            # the state is token-major (B, k - 1, width), so that a decoding step appends a token without a transpose
            h = torch.cat([conv_state.to(h.dtype).transpose(1, 2), h], dim=-1)  # (B, width, k - 1 + n)
            new_state = h[..., h.shape[-1] - self.state_size :].transpose(1, 2)  # (B, k - 1, width)
        return self.conv(h).permute(to_last), new_state  # (B, n, width) or (B, H, W, width)

    @property
    def reads_weights_directly(self) -> bool:
        """Whether the fast paths may read the conv and projection weights instead of calling the modules
        (`_is_plain_layer` of both)."""
        return _is_plain_layer(self.conv) and _is_plain_layer(self.proj)

    def _fusable(self, h: torch.Tensor, conv_state) -> bool:
        """The fused 1-D function covers a sequence without carried conv state, in the weights' dtype, with plain
        conv and projection layers."""
        conv = self.conv
        return (
            self.spatial_dims == 1
            and self.reads_weights_directly
            and conv_state is None
            and (self.causal or self.kernel_size % 2 == 1)
            and h.dtype == conv.weight.dtype == self.proj.weight.dtype
            and not _autocast_on(h.device.type)
        )

    def _fusable_2d(self, h: torch.Tensor) -> bool:
        """The 2-D function (`_FusedPredictor2d`) covers an odd square kernel with plain conv and projection layers,
        in their dtype, eager and outside autocast (under torch.compile the GELU-projection function's operator
        keeps what it must; inductor decides the rest)."""
        conv = self.conv
        return (
            self.spatial_dims == 2
            and self.reads_weights_directly
            and self.kernel_size % 2 == 1
            and h.dtype == conv.weight.dtype == self.proj.weight.dtype
            and torch.is_grad_enabled()
            and not _autocast_on(h.device.type)
            and not _is_compiling()
            and not _is_exporting()
        )

    def _projection_fusable(self, conv: torch.Tensor) -> bool:
        """GELU -> projection -> sigmoid as one function (`_GeluProjectionGates`): a plain projection in the conv
        output's dtype, outside autocast and export, on a row-major conv output (on a strided one, GELU and its
        backward take a path twice as slow: `_gelu_dense` avoids it in the forward only)."""
        proj = self.proj
        return (
            _is_plain_layer(proj)
            and conv.dtype == proj.weight.dtype
            and conv.is_contiguous()
            and not _autocast_on(conv.device.type)
            and not _is_exporting()
        )

    def gates(self, hidden: torch.Tensor, keep: torch.Tensor | None = None, conv_state=None, fused: bool = True):
        """(sigmoid(a), sigmoid(b)) stacked as (B, 2 * groups, n) / (B, 2 * groups, H, W), and the conv state.

        Equal to `forward` followed by a sigmoid; 1-D sequences without carried state take the
        fused function (`_FusedPredictor1d`), 2-D maps in training `_FusedPredictor2d`, others
        GELU -> projection -> sigmoid as one function (`_GeluProjectionGates`). fused=False:
        autograd's own nodes throughout, which are twice differentiable (the hand-written backwards
        are not); ContextPool's "reference" implementation.
        """
        fused_2d = fused and self._fusable_2d(hidden)
        if not fused_2d and (not fused or not self._fusable(hidden, conv_state)):
            conv, new_state = self._conv_output(hidden, keep, conv_state)
            if fused and self._projection_fusable(conv):
                return _GeluProjectionGates.apply(conv, self.proj.weight, self.proj.bias), new_state
            return torch.sigmoid(self._project(conv)), new_state
        h = _predictor_input(self.in_proj, hidden, keep)
        if fused_2d:
            return _FusedPredictor2d.apply(h, self.conv.weight, self.conv.bias, self.proj.weight, self.proj.bias), None
        new_state = None
        if self.causal:  # the last k - 1 inputs, zeros before the sequence: (B, k - 1, width)
            if _is_exporting():  # no Python max on the symbolic length: pad first, then take the tail
                padded = F.pad(h, (0, 0, self.state_size, 0))  # (B, k - 1 + n, width)
                new_state = padded[:, padded.shape[1] - self.state_size :]
            else:
                tail = h[:, max(0, h.shape[1] - self.state_size) :]
                new_state = F.pad(tail, (0, 0, self.state_size - tail.shape[1], 0))
        pad_left = self.kernel_size - 1 if self.causal else self.kernel_size // 2
        gates = _FusedPredictor1d.apply(
            h, self.conv.weight.squeeze(1), self.conv.bias, self.proj.weight, self.proj.bias, pad_left
        )
        return gates, new_state
