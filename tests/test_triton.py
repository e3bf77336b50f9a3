"""implementation="triton": its cases (tests/triton_cases.py) under Triton's CPU interpreter in a subprocess,
and the errors where it cannot run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import contextpool_hf.pooling_triton_contextpool as triton_pooling
from contextpool_hf.pooling_contextpool import context_pool

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(triton_pooling.triton is None, reason="the triton package is not installed")
def test_triton_cases_pass_under_the_interpreter():
    env = dict(os.environ, TRITON_INTERPRET="1")
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/triton_cases.py"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)  # fmt: skip
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert " passed" in done.stdout and "skipped" not in done.stdout, done.stdout[-2000:]


def _inputs():
    return torch.randn(2, 9, 4), torch.rand(2, 9), 0.5 + torch.rand(2, 9)


@pytest.mark.skipif(triton_pooling.triton is None or triton_pooling.INTERPRETED or torch.cuda.is_available(),
                    reason="needs triton installed, no interpreter and no CUDA")  # fmt: skip
def test_triton_on_a_cpu_tensor_says_where_it_runs():
    with pytest.raises(ValueError, match=r"implementation='triton' cannot run here: it runs on CUDA devices "
                                         r"\(x is on cpu; TRITON_INTERPRET=1.*use implementation='fast'"):  # fmt: skip
        context_pool(*_inputs(), implementation="triton")


def test_triton_without_the_package_says_so(monkeypatch):
    monkeypatch.setattr(triton_pooling, "triton", None)
    with pytest.raises(ValueError, match=r"the triton package is not installed \(pip install triton\)"):
        context_pool(*_inputs(), implementation="triton")


@pytest.mark.skipif(triton_pooling.triton is None or triton_pooling.INTERPRETED or torch.cuda.is_available(),
                    reason="needs triton installed, no interpreter and no CUDA")  # fmt: skip
def test_triton_on_a_cpu_grid_says_where_it_runs_too():
    from contextpool_hf.pooling_contextpool import context_pool_2d

    x, w, s = torch.randn(1, 6, 6, 3), torch.rand(1, 6, 6), 0.5 + torch.rand(1, 3, 3)
    with pytest.raises(ValueError, match=r"implementation='triton' cannot run here: it runs on CUDA devices"):
        context_pool_2d(x, w, s, stride=2, implementation="triton")


@pytest.mark.skipif(triton_pooling.triton is None or triton_pooling.INTERPRETED,
                    reason="needs triton installed and its kernels not interpreted")  # fmt: skip
def test_the_kernels_compile_for_an_h100_without_one():
    """Every kernel variant compiles to a cubin for sm_90 (triton's bundled ptxas needs no GPU): what the
    interpreter cannot check (types, dot shapes, loops and tuples as compiled Triton takes them)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    forward, backward = triton_pooling._FORWARD_WARPS, triton_pooling._BACKWARD_WARPS
    pointers = {  # kernel: (its pointer arguments, the warps it is launched with)
        triton_pooling._forward_kernel: (("x_ptr", "w_ptr", "s_ptr", "y_ptr", "total_ptr"), forward),
        triton_pooling._sigma_grad_kernel: (("x_ptr", "w_ptr", "s_ptr", "g_ptr", "t_ptr", "ds_ptr"), backward),
        triton_pooling._input_grad_kernel: (("x_ptr", "w_ptr", "s_ptr", "g_ptr", "t_ptr", "dx_ptr", "dw_ptr"), backward),
    }
    for kernel, (names, warps) in pointers.items():
        for causal, normalize in ((True, True), (False, False)):
            constexprs = dict(CAUSAL=causal, NORMALIZE=normalize, BLOCK_O=triton_pooling._BLOCK_OUT,
                              BLOCK_J=triton_pooling._BLOCK_WINDOW, BLOCK_D=triton_pooling._BLOCK_FEATURES)  # fmt: skip
            types = {name: "*fp32" for name in names} | {"eps": "fp32"}
            signature = {arg: "constexpr" if arg in constexprs else types.get(arg, "i32") for arg in kernel.arg_names}
            source = ASTSource(fn=kernel, signature=signature,
                               constexprs={(kernel.arg_names.index(k),): v for k, v in constexprs.items()})  # fmt: skip
            compiled = triton.compile(source, target=GPUTarget("cuda", 90, 32), options={"num_warps": warps})
            assert compiled.asm["cubin"], (kernel.__name__, causal, normalize)
