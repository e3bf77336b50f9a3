"""Input checks of the ContextPool operators and modules.

Flat, Hub-shipped file (imports only torch): every rejected option raises a ValueError whose
message names the argument and says what is allowed. Split out of pooling_contextpool.py,
which re-exports these names.
"""

from __future__ import annotations

import functools
import hashlib
import math

import torch
from torch._subclasses.fake_tensor import is_fake

try:  # an internal module: without it, symbolic floats (torch.compile(dynamic=True)) stay as they are
    from torch.fx.experimental.symbolic_shapes import guard_scalar
except ImportError:  # pragma: no cover

    def guard_scalar(value):
        return value


IMPLEMENTATIONS = ("fast", "reference", "triton")


# Float constants that the autograd Functions' forwards and backwards read are literals returned by functions,
# not module-level floats. Under torch.compile(dynamic=True) dynamo turns every float it reads from a global or
# an attribute into a graph input (a SymFloat), created where the float is first used: inside a Function's
# forward, that is the Function's own subgraph. The next pooled layer's Function then reads the same global,
# gets that input back from a subgraph already closed, and dynamo stops with "lift_tracked_freevar_to_input
# should not be called on root SubgraphTracer" (every family failed so). A literal is a constant to dynamo.
def default_eps() -> float:
    """The pooling normaliser's eps: y_i = sum_j c_ij x_j / (eps + sum_j c_ij)."""
    return 1e-6


DEFAULT_EPS = default_eps()
# sigma is produced as sigma_min + (sigma_max - sigma_min) * sigmoid(b); allow float rounding
# at the top of that range without letting real out-of-range widths through.
_SIGMA_MAX_SLACK = 1e-4


# --------------------------------------------------------------------------------------
# Input checking
# --------------------------------------------------------------------------------------


# torch.compiler.is_compiling itself (torch >= 2.4 has it), not a wrapper: the models ask on every decoding step,
# where a wrapper's extra frame and module look-ups cost more than the answer; dynamo recognises the function.
_is_compiling = torch.compiler.is_compiling


# Every rejected option raises a ValueError whose message starts with the argument's name and
# says what is allowed. bool is an int subclass in Python: `sigma_max=True` or `stride=True` is a
# mistake, never a number, so the number checks exclude it.


def _is_real(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_real(name: str, value, low=None, low_open: bool = False) -> None:
    """A finite Python int/float (not bool), >= low (> low when low_open)."""
    relation = ">" if low_open else ">="
    allowed = "a finite number" + (f" {relation} {low}" if low is not None else "")
    if not (_is_real(value) and math.isfinite(value)):
        raise ValueError(f"{name} must be {allowed}, got {value!r}")
    if low is not None and (value < low or (low_open and value <= low)):
        raise ValueError(f"{name} must be {allowed}, got {value!r}")


def _check_int(name: str, value, low: int = 1, odd: bool = False) -> None:
    """A Python int (not bool) >= low, odd when asked."""
    allowed = f"an {'odd ' if odd else ''}int >= {low}"
    if not isinstance(value, int) or isinstance(value, bool) or value < low or (odd and value % 2 == 0):
        raise ValueError(f"{name} must be {allowed}, got {value!r}")


def _check_bool(name: str, value) -> None:
    # "no", 0 or None would be truthy/falsy by accident: only True or False say what they mean
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}")


def _concrete(value):
    """value, or its Python value where it is symbolic. Under torch.compile(dynamic=True) dynamo makes a float
    argument a SymFloat, and the window radius and the pooling plans are Python numbers built from sigma_max and
    truncation (math.isfinite, ceil); a guard on the value (a recompile for another one, as for any float
    without dynamic=True) keeps them so."""
    # a real number only (bad values get their errors from the checks); dynamo answers isinstance(x, float) for a
    # SymFloat with True, and guard_scalar returns a plain number as it is
    return guard_scalar(value) if _is_real(value) else value


def _check_options(sigma_max: float, truncation: float, implementation: str, eps: float,
                   causal: bool = False, normalize: bool = True) -> None:  # fmt: skip
    if not isinstance(implementation, str) or implementation not in IMPLEMENTATIONS:
        raise ValueError(f"implementation must be one of {IMPLEMENTATIONS}, got {implementation!r}")
    _check_real("sigma_max", sigma_max, 0, low_open=True)
    _check_real("truncation", truncation, 0, low_open=True)
    if not math.isfinite(truncation * sigma_max):
        raise ValueError(
            f"truncation * sigma_max (the window radius) must be finite, got {truncation!r} * {sigma_max!r}"
        )
    _check_real("eps", eps, 0)
    _check_bool("causal", causal)
    _check_bool("normalize", normalize)


def _check_module_options(hidden_size, groups, kernel_size, causal, width, spatial_dims) -> None:
    """The predictor's sizes (ContextPoolPredictor and ContextPool), each named with its allowed values."""
    _check_int("hidden_size", hidden_size)
    _check_int("groups", groups)
    # odd: a centred depthwise conv keeps the length only with an odd kernel (an even one adds a token)
    _check_int("kernel_size", kernel_size, odd=True)
    _check_bool("causal", causal)
    if width is not None:
        _check_int("predictor_width", width)
    if spatial_dims not in (1, 2) or isinstance(spatial_dims, bool):
        raise ValueError(f"spatial_dims must be 1 (sequences) or 2 (grids), got {spatial_dims!r}")


def _check_not_transformed(*tensors: torch.Tensor) -> None:
    """torch.func transforms (vmap, grad, jacrev) cannot run the fast path's autograd Functions nor
    the value checks (they read the data): say so instead of failing deep inside torch."""
    functorch = getattr(torch._C, "_functorch", None)
    if _is_compiling() or functorch is None or not hasattr(functorch, "is_functorch_wrapped_tensor"):
        return  # dynamo cannot trace the query (and compiled code runs no transforms through here)
    if any(isinstance(t, torch.Tensor) and functorch.is_functorch_wrapped_tensor(t) for t in tensors):
        raise ValueError(
            "x, weights and sigma are torch.func-transformed tensors (torch.vmap / torch.func.grad): "
            "ContextPool does not support function transforms; its inputs are already batched along "
            "dim 0, so stack the examples instead of vmapping, and use torch.autograd.grad for gradients"
        )


# The smallest width the arithmetic sees. A smaller sigma (down to 1e-45, where sigma^2 underflows
# to 0 and 0 * inf would give NaN) means the identity: every neighbour's weight
# exp(-dist^2 / (2 sigma^2)) with dist >= 1 is below exp(-800), which is exactly 0 in float32 and
# float64, and so it already is at this floor. Flooring is therefore exact (outputs and gradients:
# the true d/dsigma is 0 there too), not an approximation. (A literal returned by a function: see default_eps.)
def _sigma_floor() -> float:
    return 0.025


def _empty_result(x: torch.Tensor, weights: torch.Tensor, sigma: torch.Tensor, shape) -> torch.Tensor:
    """The result when some size is 0 (batch, positions or features): zeros of the output shape,
    still attached to the inputs so that autograd gives them (empty or zero) gradients."""
    attached = (x.sum() + weights.sum() + sigma.sum()) * 0
    return x.new_zeros(shape) + attached.to(x.dtype)


def _holds_no_data(tensor: torch.Tensor) -> bool:
    """A tensor with a shape but no values: on the meta device, or a FakeTensorMode's (shape and memory estimators
    run models on them, as transformers' own models allow)."""
    return tensor.is_meta or (type(tensor) is not torch.Tensor and is_fake(tensor))


def _values_unreadable(tensor: torch.Tensor) -> bool:
    """Whether a check or a branch must not read `tensor`'s values: while torch.compile or export traces (a read
    would break the graph) or when it holds no data (`_holds_no_data`). The caller then skips the check, or takes
    the path that is right for any value."""
    return _is_compiling() or _holds_no_data(tensor)


def _check_values(name: str, tensor: torch.Tensor, low=None, high=None, low_open: bool = False) -> None:
    """Value checks (finite, in range). They read the data, so they are skipped under torch.compile and for
    tensors without data (the meta device; a FakeTensorMode's tensors, as shape and memory estimators run them).

    One pass over the data: min and max propagate nan and expose +-inf, so they answer the
    finiteness and the range questions together.
    """
    if _is_compiling():
        return
    if not tensor.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {tensor.dtype}")
    if tensor.numel() == 0 or _holds_no_data(tensor):
        return
    smallest, largest = torch.stack(torch.aminmax(tensor.detach())).tolist()
    if not (math.isfinite(smallest) and math.isfinite(largest)):
        raise ValueError(f"{name} contains non-finite values (nan or inf)")
    if low is not None and (smallest < low or (low_open and smallest <= low)):
        relation = ">" if low_open else ">="
        raise ValueError(f"{name} must be {relation} {low}, got a minimum of {smallest}")
    if high is not None and largest > high:
        raise ValueError(f"{name} must be <= {high}, got a maximum of {largest}")


def _check_shape(name: str, tensor, expected: tuple[int, ...], what: str) -> None:
    if not isinstance(tensor, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
    if tuple(tensor.shape) != tuple(expected):
        raise ValueError(f"{name} must have shape {tuple(expected)} ({what}), got {tuple(tensor.shape)}")


def _mask_as_weights(attention_mask: torch.Tensor, name: str) -> torch.Tensor:
    """A 0/1 mask (bool, int, or float exactly 0/1) -> a bool keep mask; anything else is an error.

    An additive mask (0 = keep, large negative = drop) would read inverted and 0.5, 2 or -1 as
    "keep" if cast with .bool(), so those are rejected rather than guessed at. The value check
    reads the data (one pass, one host sync), so it is skipped under torch.compile / export.
    """
    if not isinstance(attention_mask, torch.Tensor):
        raise ValueError(
            f"{name} must be a torch.Tensor of 0 (padding) and 1 (real token), got {type(attention_mask).__name__}"
        )
    if attention_mask.dtype == torch.bool:
        return attention_mask
    if attention_mask.is_complex():
        raise ValueError(f"{name} must be a bool, integer or float tensor of 0 and 1, got dtype {attention_mask.dtype}")
    if attention_mask.numel() and not _values_unreadable(attention_mask):
        bad = (attention_mask != 0) & (attention_mask != 1)
        if bool(bad.any()):
            value = attention_mask[bad][0].item()
            raise ValueError(
                f"{name} must contain only 0 (padding) and 1 (real token) (bool, int, or float exactly 0/1), "
                f"got {value!r}. An additive mask (0 = keep, large negative = drop) is not accepted: "
                "pass (additive_mask == 0) instead"
            )
    return attention_mask != 0


def _keep_or_none(attention_mask: torch.Tensor, name: str) -> torch.Tensor | None:
    """`_mask_as_weights`, or None when every token is kept (nothing to mask). Under torch.compile / export, and
    for a mask without data (`_holds_no_data`), never None (that would read the data).

    An integer mask, the kind tokenizers and `generate` make, is checked and tested for all ones in one
    reduction and one read-back (3 calls where the general check and the all-ones test take 8: a decoding
    step at batch 1 pays per call); anything else takes the general check, which also names a bad value.
    """
    unreadable = not isinstance(attention_mask, torch.Tensor) or _values_unreadable(attention_mask)
    integer = isinstance(attention_mask, torch.Tensor) and not (
        attention_mask.dtype == torch.bool or attention_mask.is_floating_point() or attention_mask.is_complex()
    )
    if integer and not unreadable and attention_mask.numel():
        low, high = torch.stack(torch.aminmax(attention_mask)).tolist()
        if 0 <= low and high <= 1:
            return None if low == 1 else attention_mask != 0
    keep = _mask_as_weights(attention_mask, name)
    if not unreadable and bool(keep.all()):
        return None
    return keep


def _is_exporting() -> bool:
    return hasattr(torch.compiler, "is_exporting") and torch.compiler.is_exporting()


def _kept_tensors(build):
    """build(), its tensors made outside torch.inference_mode: for what a module or a table cache keeps between
    calls. A tensor made in inference mode can never be written in place, nor saved for backward, outside it, so a
    table kept from an inference_mode call would break a later step that records autograd (decoding with
    gradients, a training step after generation). Grad mode is left as it is (no_grad still applies). While
    torch.compile traces, build() as it is: nothing is kept then (the graph computes and folds the tables)."""
    if _is_compiling() or not torch.is_inference_mode_enabled():
        return build()
    with torch.inference_mode(False):
        return build()


def _plain_tensors_only(value) -> bool:
    """True when every tensor in value (nested tuples, lists, dicts; None allowed) is a plain torch.Tensor: what a
    module or table cache may keep between calls. A tensor made under a FakeTensorMode (shape and memory
    estimators) or another tensor subclass's mode is valid only there; kept, it would turn every later real call
    that reads it into a fake one."""
    if isinstance(value, dict):
        return all(_plain_tensors_only(v) for v in value.values())
    if isinstance(value, (tuple, list)):
        return all(_plain_tensors_only(v) for v in value)
    return value is None or not isinstance(value, torch.Tensor) or type(value) is torch.Tensor


def _dims_by_stride(t: torch.Tensor) -> tuple[list[int], list[int]]:
    """(order, inverse): t's dims by stride, the outermost (largest) first and ties in dim order, and the
    permutation that undoes `t.permute(order)`. An insertion sort of comparisons, not sorted(key=stride):
    dynamo cannot sort on symbolic strides (torch.compile(dynamic=True)), but turns each comparison into a
    guard."""
    order: list[int] = []
    for dim in range(t.dim()):
        at = len(order)
        while at > 0 and t.stride(order[at - 1]) < t.stride(dim):
            at -= 1
        order.insert(at, dim)
    inverse = [0] * len(order)
    for position, dim in enumerate(order):
        inverse[dim] = position
    return order, inverse


def _autocast_on(device_type: str) -> bool:
    """torch.is_autocast_enabled(device_type), False for a device type autocast does not know (meta), where torch
    raises instead of answering."""
    return torch.amp.is_autocast_available(device_type) and torch.is_autocast_enabled(device_type)


def _autocast_off(fn):
    """fn, run with autocast off on the device of its first tensor argument: an autograd Function's forward or
    backward, or a pooling implementation (`pooling_contextpool._run`). The operators compute in float32 at
    least (their sums of dozens of terms lose too much in bf16/fp16), and autocast would run their matmuls in
    the lower dtype anyway, handing the hand-written backwards a mix of dtypes; backwards are covered too for
    a `loss.backward()` called inside the autocast region (on a CPU it runs on the calling thread)."""

    @functools.wraps(fn)
    def wrapper(*args):
        device_type = next((a.device.type for a in args if isinstance(a, torch.Tensor)), None)
        if device_type is None or not _autocast_on(device_type):
            return fn(*args)
        with torch.autocast(device_type, enabled=False):
            return fn(*args)

    return wrapper


def _op_namespace(module_name: str) -> str:
    """The torch.library namespace of a flat file's custom operators: one per module, so that the package's copy
    and a checkpoint's remote-code copy (another module name, maybe another version) never share an operator."""
    return "contextpool_" + hashlib.sha1(module_name.encode()).hexdigest()[:12]


def _define_op(namespace: str, name: str, fn, fake):
    """torch.library.custom_op `namespace::name` running fn, with its fake (shape) function. Defining it again
    (importlib.reload of the module) replaces it: the module's newest code runs."""
    op = torch.library.custom_op(f"{namespace}::{name}", mutates_args=())(fn)
    op.register_fake(fake)
    return op
