"""The ContextPool operator and its modules.

Flat, Hub-shipped file: it imports only torch (and its flat siblings, relatively), so a
checkpoint saved with `save_pretrained` carries it next to the modeling files. Split by job:
checks_contextpool.py (input checks), predictor_contextpool.py (the predictor and its fused
1-D function), pooling_1d_contextpool.py (the 1-D blocked op), pooling_offsets_contextpool.py
(the offset loop), pooling_2d_contextpool.py (the 2-D matmul paths); this file keeps the
reference, the dispatch, the public functions and the ContextPool module, and re-exports the
others' names.

For output position i with width sigma_i and input weights w_j (spec items 2-5):

    g_ij = exp(-|p_j - p_i|^2 / (2 sigma_i^2))   if every |p_j - p_i| <= R, else 0
    y_i  = sum_j w_j g_ij x_j / (eps + sum_j w_j g_ij)        (normalize=True)

with R = ceil(truncation * sigma_max); causal 1-D pooling also drops j > i.

Three implementations:
- "reference": dense (batch, n_out, n_in) coefficient matrix. Obviously correct, any
  dtype (float64 for the oracle), O(n^2) memory. Used by tests only.
- "fast": in 1-D, blocked banded matmuls (`_BlockedPool1d`, `pooling_1d_contextpool.py`); in 2-D, dense or tiled
  coefficient matmuls (`pooling_2d_contextpool.py`). Extra memory O(n d) (2-D: plus a
  dense n_out x n_in only on small maps); hand-written backwards recompute the Gaussian
  coefficients instead of storing them. The offset loop (`_FastContextPool`, one shifted
  view of x per window offset) is the earlier 2-D path, kept as the measured baseline.
- "triton": 1-D sequences and 2-D grids through Triton kernels on CUDA (`pooling_triton_contextpool.py`;
  opt-in, not yet measured on a GPU); a strided 1-D pooling takes the fast path.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from .checks_contextpool import (  # noqa: F401  (re-exported: the public and test-facing names)
    _SIGMA_MAX_SLACK,
    DEFAULT_EPS,
    IMPLEMENTATIONS,
    _autocast_off,
    _autocast_on,
    _check_bool,
    _check_int,
    _check_module_options,
    _check_not_transformed,
    _check_options,
    _check_real,
    _check_shape,
    _check_values,
    _concrete,
    _empty_result,
    _is_compiling,
    _is_exporting,
    _is_real,
    _mask_as_weights,
    _sigma_floor,
    default_eps,
)

# Only the two entry points: the 1-D tuning constants live (and are patched, by tests and bench_op) in
# pooling_1d_contextpool alone, so that a patch here cannot silently miss the code that reads them.
from .pooling_1d_contextpool import _BlockedPool1d, _pool_1d_export
from .pooling_2d_contextpool import tiled_pool_2d
from .pooling_offsets_contextpool import (  # noqa: F401
    _FastContextPool,
    _GaussianCache,
    _offset_plan,
    _offset_slices,
    _tiled_plans,
    _window_offsets,
)
from .pooling_triton_contextpool import triton_pool_1d, triton_pool_2d
from .predictor_contextpool import (  # noqa: F401
    ContextPoolPredictor,
    _depthwise_conv_1d,
    _depthwise_conv_1d_unpadded,
    _FusedPredictor1d,
    _tap_shifts,
)


def window_radius(sigma_max: float, truncation: float) -> int:
    """R = ceil(truncation * sigma_max): the largest offset that may get a non-zero weight."""
    return int(math.ceil(truncation * sigma_max))


def clamped_radius(radius: int, in_sizes: Sequence[int]) -> int:
    """The radius that pooling an input of `in_sizes` actually needs: min(R, largest size - 1).

    Exact, not an approximation: no two positions of the input lie further apart than that,
    so a larger R selects the same (j, i) pairs. It keeps every path's cost bounded by the
    input (a window of R = 9000 on 8 tokens would otherwise cost 9000 tokens' work).
    """
    # Comparisons, not max()/min() of the sizes: under torch.compile with symbolic sizes, max(sizes, default=0)
    # broke the graph (and `dynamic=True` then failed), and min(R, n - 1) would make R symbolic everywhere
    # downstream. A comparison becomes one guard (n - 1 >= R in any real training step), and R stays an int.
    largest = 0
    for size in in_sizes:
        if size > largest:
            largest = size
    radius = int(radius)
    if largest - 1 < radius:
        return max(0, largest - 1)
    return radius


def _pool_fast(x, weights, sigma, radius, stride, causal, normalize, eps):
    if x.dim() == 3 and stride == 1 and _is_exporting():
        return _pool_1d_export(x, weights, sigma, radius, causal, normalize, eps)
    if x.dim() == 3 and stride == 1:
        return _BlockedPool1d.apply(x, weights, sigma, radius, causal, normalize, eps)
    if x.dim() == 4 and not causal:  # 2-D: dense or tiled coefficient matmuls (pooling_2d_contextpool)
        return tiled_pool_2d(x, weights, sigma, radius, stride, normalize, eps)
    return _FastContextPool.apply(x, weights, sigma, radius, stride, causal, normalize, eps)


# --------------------------------------------------------------------------------------
# Dense reference
# --------------------------------------------------------------------------------------


def _grid_positions(sizes: Sequence[int], stride: int, device, dtype) -> torch.Tensor:
    """(prod(sizes), ndim) coordinates of a grid whose points sit `stride` apart."""
    axes = [torch.arange(s, device=device, dtype=dtype) * stride for s in sizes]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, len(sizes))


def _pool_reference(x, weights, sigma, radius, stride, causal, normalize, eps):
    batch, d = x.shape[0], x.shape[-1]
    in_sizes, out_sizes = weights.shape[1:], sigma.shape[1:]
    p_in = _grid_positions(in_sizes, 1, x.device, x.dtype)  # (n_in, ndim)
    p_out = _grid_positions(out_sizes, stride, x.device, x.dtype)  # (n_out, ndim)
    diff = p_in.unsqueeze(0) - p_out.unsqueeze(1)  # (n_out, n_in, ndim)
    inside = (diff.abs() <= radius).all(-1)
    if causal:
        inside = inside & (diff[..., 0] <= 0)
    sq = (diff * diff).sum(-1)  # (n_out, n_in)
    s = sigma.reshape(batch, -1, 1)  # (B, n_out, 1)
    gauss = torch.exp(-sq / (2 * s * s)) * inside  # (B, n_out, n_in)
    coef = gauss * weights.reshape(batch, 1, -1)
    y = coef @ x.reshape(batch, -1, d)  # (B, n_out, d)
    if normalize:
        y = y / (coef.sum(-1, keepdim=True) + eps)
    return y.reshape(sigma.shape + (d,))


def _pool_triton(x, weights, sigma, radius, stride, causal, normalize, eps):
    if x.dim() == 3 and stride == 1:
        return triton_pool_1d(x, weights, sigma, radius, causal, normalize, eps)
    if x.dim() == 4 and not causal:
        return triton_pool_2d(x, weights, sigma, radius, stride, normalize, eps)
    return _pool_fast(x, weights, sigma, radius, stride, causal, normalize, eps)  # a strided 1-D pooling


# autocast off for the reference's plain matmuls as for the fast paths' Functions (see _autocast_off)
_IMPLEMENTATION_FUNCTIONS = {name: _autocast_off(fn) for name, fn in
                             (("fast", _pool_fast), ("reference", _pool_reference), ("triton", _pool_triton))}


def _run(x, weights, sigma, radius, stride, causal, normalize, eps, implementation):
    """Compute in float32 at least: a 49-term sum in bf16/fp16 loses too much."""
    out_dtype = x.dtype
    if x.numel() == 0 or sigma.numel() == 0:  # batch, positions or features are 0 (the paths divide by them)
        return _empty_result(x, weights, sigma, tuple(sigma.shape) + tuple(x.shape[-1:]))
    compute_dtype = torch.promote_types(x.dtype, torch.float32)
    x, weights, sigma = (t.to(compute_dtype) for t in (x, weights, sigma))
    sigma = sigma.clamp_min(_sigma_floor())  # exact: see _sigma_floor (a tiny sigma is the identity, not NaN)
    if not _is_exporting():  # exported graphs keep R: min(R, n - 1) would fix the length
        radius = clamped_radius(radius, weights.shape[1:])
    fn = _IMPLEMENTATION_FUNCTIONS[implementation]
    return fn(x, weights, sigma, radius, stride, causal, normalize, eps).to(out_dtype)


# --------------------------------------------------------------------------------------
# Public functions
# --------------------------------------------------------------------------------------


def context_pool(
    x: torch.Tensor,
    weights: torch.Tensor,
    sigma: torch.Tensor,
    *,
    attention_mask: torch.Tensor | None = None,
    causal: bool = False,
    sigma_max: float = 8.0,
    truncation: float = 3.0,
    normalize: bool = True,
    implementation: str = "fast",
    eps: float = DEFAULT_EPS,
) -> torch.Tensor:
    """Pool every token's Gaussian neighbourhood of a sequence (ContextPool, 1-D).

    Args:
        x: (batch, n, d), or grouped (batch, groups, n, d).
        weights: per-token weights w_j in [0, 1], (batch, n) or (batch, groups, n).
        sigma: per-output-token Gaussian widths in (0, sigma_max], same shape as `weights`.
        attention_mask: (batch, n), 1 = real token, 0 = padding. Padded tokens get weight 0.
        causal: output i pools tokens j <= i only.
        sigma_max, truncation: the window radius is R = ceil(truncation * sigma_max).
        normalize: divide by eps + sum_j w_j g_ij (spec item 5).
        implementation: "fast" (blocked banded matmuls, O(n (T + 2R) d) time, O(n d) extra memory),
            "reference" (dense n x n) or "triton" (Triton kernels on CUDA, opt-in).

    Returns:
        y with the shape of x. Past 160 tokens it may be a view cropped from whole blocks (not contiguous):
        flatten it with `.reshape`, not `.view`.
    """
    sigma_max, truncation, eps = (_concrete(v) for v in (sigma_max, truncation, eps))
    _check_options(sigma_max, truncation, implementation, eps, causal, normalize)
    if not isinstance(x, torch.Tensor) or x.dim() not in (3, 4):
        got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"x must be (batch, n, d) or (batch, groups, n, d), got {got}")
    lead = tuple(x.shape[:-1])
    what = "x's shape without the feature dim"
    _check_shape("weights", weights, lead, what)
    _check_shape("sigma", sigma, lead, what)
    _check_not_transformed(x, weights, sigma)
    _check_values("x", x)
    _check_values("weights", weights, 0.0, 1.0)
    _check_values("sigma", sigma, 0.0, sigma_max * (1 + _SIGMA_MAX_SLACK), low_open=True)
    if attention_mask is not None:
        _check_shape("attention_mask", attention_mask, (x.shape[0], x.shape[-2]), "(batch, n)")
        keep = _mask_as_weights(attention_mask, "attention_mask")
        if x.dim() == 4:
            keep = keep.unsqueeze(1)  # (B, 1, n): the same mask for every group
        weights = weights * keep.to(weights.dtype)
    if x.numel() == 0 or weights.numel() == 0:  # batch, n or d is 0: the empty result, no pooling
        return _empty_result(x, weights, sigma, x.shape)
    d = x.shape[-1]
    if x.dim() == 4:  # (B, G, n, d) -> (B*G, n, d)
        x, weights, sigma = (
            x.reshape(-1, x.shape[-2], d),
            weights.reshape(-1, lead[-1]),
            sigma.reshape(-1, lead[-1]),
        )
    radius = window_radius(sigma_max, truncation)
    y = _run(x, weights, sigma, radius, 1, causal, normalize, eps, implementation)
    return y.reshape(lead + (d,))


def strided_size(size: int, stride: int) -> int:
    """Number of outputs when outputs sit at input positions 0, stride, 2*stride, ..."""
    return (size - 1) // stride + 1


def context_pool_2d(
    x: torch.Tensor,
    weights: torch.Tensor,
    sigma: torch.Tensor,
    *,
    stride: int = 1,
    attention_mask: torch.Tensor | None = None,
    sigma_max: float = 8.0,
    truncation: float = 3.0,
    normalize: bool = True,
    implementation: str = "fast",
    eps: float = DEFAULT_EPS,
) -> torch.Tensor:
    """Pool a 2-D grid of features (ContextPool on image tokens or as a ConvNet pooling layer).

    Args:
        x: (batch, H, W, d) features on a grid.
        weights: (batch, H, W) input weights in [0, 1].
        sigma: (batch, H_out, W_out) widths of the outputs, which sit at input positions
            (r * stride, c * stride); H_out = ceil(H / stride), W_out = ceil(W / stride).
        stride: distance between outputs on the input grid (1 = pool in place).
        attention_mask: optional (batch, H, W), 1 = real pixel/patch, 0 = padding.

    Returns:
        (batch, H_out, W_out, d). On a grid large enough to be tiled (past 16 x 16 at stride 1) it may be a view
        cropped from whole tiles (not contiguous): flatten it with `.reshape`, not `.view`.
    """
    sigma_max, truncation, eps = (_concrete(v) for v in (sigma_max, truncation, eps))
    _check_options(sigma_max, truncation, implementation, eps, normalize=normalize)
    if not isinstance(stride, int) or isinstance(stride, bool) or stride < 1:
        raise ValueError(f"stride must be a positive int, got {stride!r}")
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"x must be (batch, H, W, d), got {got}")
    batch, height, width, _ = x.shape
    _check_shape("weights", weights, (batch, height, width), "(batch, H, W)")
    out_shape = (batch, strided_size(height, stride), strided_size(width, stride))
    _check_shape("sigma", sigma, out_shape, f"(batch, H_out, W_out) for stride {stride}")
    _check_not_transformed(x, weights, sigma)
    _check_values("x", x)
    _check_values("weights", weights, 0.0, 1.0)
    _check_values("sigma", sigma, 0.0, sigma_max * (1 + _SIGMA_MAX_SLACK), low_open=True)
    if attention_mask is not None:
        _check_shape("attention_mask", attention_mask, (batch, height, width), "(batch, H, W)")
        weights = weights * _mask_as_weights(attention_mask, "attention_mask").to(weights.dtype)
    if x.numel() == 0 or sigma.numel() == 0:  # batch, H, W or d is 0: the empty result, no pooling
        return _empty_result(x, weights, sigma, out_shape + (x.shape[-1],))
    radius = window_radius(sigma_max, truncation)
    return _run(x, weights, sigma, radius, stride, False, normalize, eps, implementation)


# --------------------------------------------------------------------------------------
# Modules: predictor and ContextPool
# --------------------------------------------------------------------------------------


POOL_MODES = ("adaptive", "fixed", "fixed_learned")


def _fixed_sigma(fixed_sigma, sigma_min, sigma_max, mode) -> float:
    """The fixed modes' width: given, or the midpoint (where an adaptive predictor starts)."""
    if fixed_sigma is None:
        return sigma_min + 0.5 * (sigma_max - sigma_min)
    low_ok = fixed_sigma > sigma_min if mode == "fixed_learned" else fixed_sigma >= sigma_min
    high_ok = fixed_sigma < sigma_max if mode == "fixed_learned" else fixed_sigma <= sigma_max
    if not (isinstance(fixed_sigma, (int, float)) and low_ok and high_ok):
        interval = "(sigma_min, sigma_max)" if mode == "fixed_learned" else "[sigma_min, sigma_max]"
        raise ValueError(
            f"fixed_sigma must be in {interval} = ({sigma_min}, {sigma_max}) for mode={mode!r}, got {fixed_sigma!r}"
        )
    return float(fixed_sigma)


class ContextPool(nn.Module):
    """Features (+ mask) -> pooled features, with learned weights and pooling sizes.

    The op module knows nothing about attention: the attention layer owns the projections
    and decides what to pool (spec item 6). After `forward`, `last_sigma` holds the
    pooling sizes it used, (B, groups, n) / (B, groups, H_out, W_out), for inspection.
    """

    def __init__(
        self,
        hidden_size: int,
        groups: int = 1,
        sigma_min: float = 0.5,
        sigma_max: float = 8.0,
        truncation: float = 3.0,
        normalize: bool = True,
        causal: bool = False,
        kernel_size: int = 3,
        predictor_width: int | None = None,
        spatial_dims: int = 1,
        stride: int = 1,
        implementation: str = "fast",
        mode: str = "adaptive",
        fixed_sigma: float | None = None,
    ):
        super().__init__()
        _check_module_options(hidden_size, groups, kernel_size, causal, predictor_width, spatial_dims)
        _check_real("sigma_min", sigma_min, 0, low_open=True)
        _check_int("stride", stride)
        if not 0 < sigma_min < sigma_max:
            raise ValueError(
                f"need 0 < sigma_min < sigma_max, got sigma_min={sigma_min}, sigma_max={sigma_max}"
            )
        if mode not in POOL_MODES:
            raise ValueError(f"mode must be one of {POOL_MODES}, got {mode!r}")
        if spatial_dims == 2 and causal:
            raise ValueError("causal pooling is only defined for 1-D sequences")
        if stride != 1 and spatial_dims != 2:
            raise ValueError("stride is only supported for 2-D pooling")
        _check_options(sigma_max, truncation, implementation, DEFAULT_EPS, causal, normalize)
        self.hidden_size = hidden_size
        self.groups, self.sigma_min, self.sigma_max = groups, sigma_min, sigma_max
        self.truncation, self.normalize, self.causal = truncation, normalize, causal
        self.spatial_dims, self.stride, self.implementation = spatial_dims, stride, implementation
        self.radius = window_radius(sigma_max, truncation)
        self.mode = mode
        # The fixed modes (an ablation) have no predictor: w = 1 and one sigma for every token,
        # a constant ("fixed") or a learned scalar per group ("fixed_learned"), same window.
        self.predictor = self.sigma_logit = None
        if mode == "adaptive":
            self.predictor = ContextPoolPredictor(
                hidden_size, groups, kernel_size, causal, predictor_width, spatial_dims
            )
        else:
            self.fixed_sigma = _fixed_sigma(fixed_sigma, sigma_min, sigma_max, mode)
            if mode == "fixed_learned":
                self.sigma_logit = nn.Parameter(torch.full((groups,), self.initial_sigma_logit))
        self.last_sigma: torch.Tensor | None = None

    def _check_hidden(self, hidden: torch.Tensor) -> None:
        """hidden's feature size and dtype against the module's (else a shape/dtype error deep in a conv)."""
        if hidden.shape[-1] != self.hidden_size:
            raise ValueError(f"hidden must have {self.hidden_size} features (hidden_size), got shape {tuple(hidden.shape)}")
        if not hidden.is_floating_point():
            raise ValueError(f"hidden must be a floating-point tensor, got dtype {hidden.dtype}")
        param = next(self.parameters(), None)
        if param is not None and hidden.dtype != param.dtype and not _autocast_on(hidden.device.type):
            raise ValueError(
                f"hidden has dtype {hidden.dtype} but the ContextPool parameters are {param.dtype}: "
                f"cast one to the other (hidden.to({param.dtype}) or module.to({hidden.dtype}))"
            )

    @property
    def initial_sigma_logit(self) -> float:
        """b with sigma_from_logits(b) = fixed_sigma (where a "fixed_learned" sigma starts)."""
        share = (self.fixed_sigma - self.sigma_min) / (self.sigma_max - self.sigma_min)
        return math.log(share / (1.0 - share))

    def _fixed_prediction(self, hidden, keep):
        """w = 1 (0 on padding) and one sigma for all tokens, both (B, groups, *spatial)."""
        spatial = tuple(hidden.shape[1:-1])
        shape = (hidden.shape[0], self.groups) + spatial
        weights = hidden.new_ones(shape)
        if keep is not None:
            weights = weights * keep.unsqueeze(1).to(weights.dtype)
        if self.sigma_logit is None:
            sigma = hidden.new_full(shape, self.fixed_sigma)
        else:
            sigma = self.sigma_from_logits(self.sigma_logit).to(hidden.dtype)
            sigma = sigma.view((1, self.groups) + (1,) * len(spatial)).expand(shape)
        return weights, sigma

    def sigma_from_logits(self, b: torch.Tensor) -> torch.Tensor:
        """sigma = sigma_min + (sigma_max - sigma_min) * sigmoid(b)  (spec item 3)."""
        return self.sigma_min + (self.sigma_max - self.sigma_min) * torch.sigmoid(b)

    def predict(self, hidden, keep=None, conv_state=None):
        """(weights, sigma, conv_state): w = sigmoid(a), zero exactly on padding (spec item 2)."""
        if self.predictor is None:
            weights, sigma = self._fixed_prediction(hidden, keep)
            if self.stride > 1:
                sigma = sigma[..., :: self.stride, :: self.stride]
            return weights, sigma, None
        # one sigmoid over both gates (the fused predictor functions where they apply; not for the reference
        # implementation, which stays twice differentiable throughout)
        fused = self.implementation != "reference"
        gates, conv_state = self.predictor.gates(hidden, keep, conv_state, fused)  # (B, 2G, n) / (B, 2G, H, W)
        weights, sigma = gates[:, : self.groups], gates[:, self.groups :]
        if keep is not None:
            weights = weights * keep.unsqueeze(1).to(weights.dtype)
        if self.stride > 1:  # sizes only at the outputs: the strided positions
            sigma = sigma[..., :: self.stride, :: self.stride]
        return weights, self.sigma_min + (self.sigma_max - self.sigma_min) * sigma, conv_state  # spec item 3

    def pool(self, features: torch.Tensor, weights: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """Pool already-predicted weights/sigma. features: (B, G, n, c) / (B, G, H, W, c)."""
        batch, groups = weights.shape[:2]
        c = features.shape[-1]
        x = features.reshape((batch * groups,) + features.shape[2:])  # (B*G, *spatial, c)
        w = weights.reshape((batch * groups,) + weights.shape[2:])
        s = sigma.reshape((batch * groups,) + sigma.shape[2:])
        y = _run(
            x, w, s, self.radius, self.stride, self.causal, self.normalize, default_eps(), self.implementation
        )
        return y.reshape((batch, groups) + y.shape[1:-1] + (c,))

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """hidden (B, n, d) or (B, H, W, d) -> pooled, same layout (H, W strided when stride > 1).

        With groups > 1 every group pools the whole feature vector with its own weights
        and sizes: the output gets a group axis, (B, G, n, d) / (B, G, H_out, W_out, d).
        """
        expected_dims = self.spatial_dims + 2
        if not isinstance(hidden, torch.Tensor) or hidden.dim() != expected_dims:
            got = tuple(hidden.shape) if isinstance(hidden, torch.Tensor) else type(hidden).__name__
            raise ValueError(f"ContextPool expects a {expected_dims}-D input, got shape {got}")
        self._check_hidden(hidden)
        keep = None
        if attention_mask is not None:
            _check_shape(
                "attention_mask",
                attention_mask,
                tuple(hidden.shape[:-1]),
                "the input without its feature dim",
            )
            keep = _mask_as_weights(attention_mask, "attention_mask")
        if hidden.numel() == 0:  # batch or positions are 0: the empty result (the conv cannot run on it)
            spatial = tuple(strided_size(size, self.stride) for size in hidden.shape[1:-1])
            self.last_sigma = hidden.new_zeros((hidden.shape[0], self.groups) + spatial)
            groups = (self.groups,) if self.groups > 1 else ()
            return hidden.new_zeros(hidden.shape[:1] + groups + spatial + hidden.shape[-1:]) + hidden.sum() * 0
        weights, sigma, _ = self.predict(hidden, keep)
        self.last_sigma = sigma.detach()
        features = hidden.unsqueeze(1).expand((-1, self.groups) + hidden.shape[1:])
        pooled = self.pool(features, weights, sigma)
        return pooled.squeeze(1) if self.groups == 1 else pooled
