"""Where a benchmark runs: the `--device` and `--dtype` options of the bench scripts, and the calls that
differ between a CPU and an accelerator (synchronising before a clock is read, peak memory).

On a CPU every op has finished when its Python call returns; an accelerator queues work, so a timer
read without `synchronize` measures the queueing, not the work. Precision follows what users run:
training steps keep float32 weights under `torch.autocast` (as `Trainer(bf16=True)` does), generation
runs a model cast to the dtype (as `from_pretrained(dtype=torch.bfloat16)` gives).

    python scripts/bench_model.py --device cuda --dtype bfloat16 --output-dir benchmarks/gpu

`--malloc retain` (CPU, glibc): the C allocator keeps the memory PyTorch frees for its next allocations instead of
returning it to the system. By default glibc serves large tensors with fresh mappings and trims its heap, so a
training step touches tens of thousands of new pages, each a page fault (measured on this 2-core CPU: 2-35% of a
text model's training step, by model and by what the process allocated before). Retained memory is what jemalloc
or tcmalloc (LD_PRELOAD), or the environment variables MALLOC_MMAP_THRESHOLD_ and MALLOC_TRIM_THRESHOLD_, give a
CPU training run; the README's "On a CPU: the C allocator" section has the numbers.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import ctypes.util
import time

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
MALLOC_CHOICES = ("default", "retain")
# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4


def add_device_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="cpu",
                        help="where to run: cpu (default), or an accelerator torch sees (cuda, cuda:1, xpu, ...)")
    parser.add_argument("--dtype", default="float32", choices=list(DTYPES),
                        help="float32 (default); bfloat16 / float16: training steps under torch.autocast with float32 "
                             "weights, generation with the models cast to it")  # fmt: skip
    add_malloc_argument(parser)


def add_malloc_argument(parser: argparse.ArgumentParser) -> None:
    """`--malloc` alone, for a script without `--device` (scripts/bench_ab.py); `apply_malloc` puts it in force."""
    parser.add_argument("--malloc", default="default", choices=MALLOC_CHOICES,
                        help="the C allocator's policy (CPU): default (glibc's: fresh pages for large tensors, the heap "
                             "trimmed) or retain (freed memory kept for reuse: no page faults on fresh memory; glibc "
                             "only)")  # fmt: skip


def resolve_placement(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Set args.torch_device (the torch.device `args.device` names) and args.torch_dtype (`args.dtype`), after
    checking that this machine has the device (parser.error otherwise)."""
    args.torch_device = _checked_device(parser, args)
    args.torch_dtype = DTYPES[args.dtype]
    apply_malloc(parser, args.malloc)


def apply_malloc(parser: argparse.ArgumentParser, policy: str) -> None:
    """Put `--malloc`'s policy in force (parser.error where the C library cannot)."""
    if policy == "retain":
        error = retain_freed_memory()
        if error:
            parser.error(f"--malloc retain: {error}; use --malloc default")


def retain_freed_memory() -> str | None:
    """Make glibc keep freed memory for reuse, from now on in this process: no mmap for large blocks
    (M_MMAP_MAX 0) and no heap trimming (M_TRIM_THRESHOLD at its maximum). -> None, or why it could not."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return f"this C library ({name or 'not found'}) has no mallopt (glibc only)"
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    if not (mallopt(_M_MMAP_MAX, 0) and mallopt(_M_TRIM_THRESHOLD, 2**31 - 1)):
        return "mallopt refused the settings"
    return None


def _checked_device(parser: argparse.ArgumentParser, args: argparse.Namespace) -> torch.device:
    try:
        device = torch.device(args.device)
    except (RuntimeError, ValueError):
        parser.error(f"--device: {args.device!r} is not a device name torch knows (cpu, cuda, cuda:1, xpu, ...)")
    if device.type == "cpu":
        return device
    accelerator = torch.accelerator.current_accelerator() if torch.accelerator.is_available() else None
    if accelerator is None or accelerator.type != device.type:
        seen = accelerator.type if accelerator is not None else "no accelerator"
        parser.error(f"--device {args.device}: this machine has no {device.type} device (torch sees {seen}); "
                     "use --device cpu")  # fmt: skip
    count = torch.accelerator.device_count()
    if device.index is not None and device.index >= count:
        parser.error(f"--device {args.device}: there are {count} {device.type} device(s), indices 0 to {count - 1}")
    return device


def minor_faults() -> int:
    """Minor page faults of this process so far (0 where `resource` is missing, e.g. Windows): each first write to
    a page the C allocator took fresh from the system (see `--malloc`)."""
    try:
        import resource
    except ImportError:
        return 0
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def synchronize(device: torch.device) -> None:
    """Wait until the work queued on `device` has finished (nothing to wait for on a CPU)."""
    if device.type != "cpu":
        torch.accelerator.synchronize(device)


def timed(fn, device: torch.device, cpu_time: bool = False) -> float:
    """Seconds one call of fn takes: wall time (process CPU time with cpu_time, on a CPU only); on an
    accelerator, wall time until its queued work has finished."""
    clock = time.process_time if cpu_time and device.type == "cpu" else time.perf_counter
    synchronize(device)
    start = clock()
    fn()
    synchronize(device)
    return clock() - start


def mixed_precision(device: torch.device, dtype: torch.dtype):
    """The autocast region a training step runs in: none for float32."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def accelerator_peak_bytes(fn, device: torch.device) -> int:
    """Peak bytes the accelerator's allocator holds during fn(), above what it held before."""
    synchronize(device)
    before = torch.accelerator.memory_allocated(device)
    torch.accelerator.reset_peak_memory_stats(device)
    fn()
    synchronize(device)
    return torch.accelerator.max_memory_allocated(device) - before


def peak_bytes(fn, device: torch.device | None = None) -> int:
    """Peak bytes of tensor memory allocated during fn(), above the level before it.

    On the CPU: the running sum of the profiler's memory events (every allocation and free of PyTorch's CPU
    allocator, in time order; the order the profiler recorded them breaks a tie, though none occurred in the
    operator's or the text models' steps when checked). On an accelerator: its allocator's peak
    (`accelerator_peak_bytes`)."""
    if device is not None and device.type != "cpu":
        return accelerator_peak_bytes(fn, device)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    # kineto's [memory] records: nbytes > 0 for an allocation, < 0 for a free, with a timestamp
    events = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
                    key=lambda e: e.start_ns())  # fmt: skip
    running = peak = 0
    for event in events:
        running += event.nbytes()
        peak = max(peak, running)
    return peak


def device_info(device: torch.device) -> dict:
    """What results on `device` depend on besides the CPU: the accelerator's name (empty dict on a CPU)."""
    if device.type == "cpu":
        return {}
    info = {"accelerator": device.type}
    module = getattr(torch, device.type, None)
    if module is not None and hasattr(module, "get_device_name"):
        info["accelerator_name"] = module.get_device_name(device)
    return info
