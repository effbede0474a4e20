"""Helpers shared by the benchmark scripts: interleaved repeats, medians, a plain table, the kernel path
(``ZOO_KERNELS``), shape arguments, forward(+backward) calls, CUDA peak memory, and saving a table."""
from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

import torch

OUT = Path(__file__).resolve().parent / "out"


def time_interleaved(fns: dict[str, Callable[[], object]], repeats: int, warmup: int = 2) -> dict[str, list[float]]:
    """Run every function once per round, ``repeats`` rounds, so machine noise hits all alike."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return times


def median_ms(samples: list[float]) -> float:
    return 1e3 * statistics.median(samples)


def interleaved_medians_ms(fns: dict[str, Callable[[], object]], repeats: int, warmup: int = 2) -> dict[str, float]:
    """:func:`time_interleaved`, then each function's median in ms."""
    return {name: median_ms(t) for name, t in time_interleaved(fns, repeats, warmup).items()}


def print_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]
    lines = [" | ".join(str(c).ljust(w) for c, w in zip(header, widths)),
             "-|-".join("-" * w for w in widths)]
    lines += [" | ".join(str(c).ljust(w) for c, w in zip(row, widths)) for row in rows]
    text = "\n".join(lines)
    print(text)
    return text


def add_kernel_bench_args(parser: argparse.ArgumentParser, dtypes: list[str]) -> None:
    """The flags the fused-kernel benchmarks share: --dtype (CUDA), --repeats (CPU), --rep-ms (CUDA),
    --no-compile, --cpu and --save."""
    parser.add_argument("--dtype", choices=sorted(dtypes), default="bf16", help="CUDA only; the CPU runs fp32")
    parser.add_argument("--repeats", type=int, default=5, help="CPU: interleaved rounds")
    parser.add_argument("--rep-ms", type=int, default=100, help="CUDA: do_bench's time budget per path")
    parser.add_argument("--no-compile", action="store_true", help="CUDA: skip the torch.compile row")
    parser.add_argument("--cpu", action="store_true", help="run the CPU table even where CUDA is present")
    parser.add_argument("--save", action="store_true", help="also write the table to benchmarks/out/")


def keep_freed_memory() -> bool:
    """Ask glibc's malloc to serve maps of up to 32 MiB from its heap and never hand freed memory back
    to the OS, so a timed call that allocates its output does not page-fault it in afresh each time
    (on this VM that cost up to 4x a 25 MB multiply and was the largest noise in CPU tables). Every
    path timed side by side allocates alike. False where it does not apply (not glibc)."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if os.name != "posix" or not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # glibc's malloc.h; 32 MiB is its largest mmap threshold
    return bool(mallopt(m_mmap_threshold, 32 << 20)) and bool(mallopt(m_trim_threshold, 2**31 - 1))


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux), else the platform's machine type: timings taken on
    different CPUs are not comparable, and these machines are not always the same model."""
    import platform

    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> str:
    return f"{cpu_name()}, {torch.get_num_threads()} threads, torch {torch.__version__}"


@contextmanager
def kernel_mode(mode: str) -> Iterator[None]:
    """``ZOO_KERNELS=mode`` (auto, torch or triton) inside the block; the previous value is restored after."""
    old = os.environ.get("ZOO_KERNELS")
    os.environ["ZOO_KERNELS"] = mode
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("ZOO_KERNELS", None)
        else:
            os.environ["ZOO_KERNELS"] = old


def shapes_arg(names: str) -> Callable[[str], list[tuple[int, ...]]]:
    """An argparse ``type`` for comma-separated shapes with the dimensions ``names`` (e.g. ``"BxLxC"``):
    ``"2x5x8,1x3x4"`` -> ``[(2, 5, 8), (1, 3, 4)]``; a wrong count or a non-integer is a usage error."""
    count = len(names.split("x"))

    def parse(text: str) -> list[tuple[int, ...]]:
        try:
            shapes = [tuple(int(v) for v in item.lower().split("x")) for item in text.split(",")]
        except ValueError:
            shapes = []
        if not shapes or any(len(shape) != count for shape in shapes):
            raise argparse.ArgumentTypeError(f"shapes are {names}[,{names}...], got {text!r}")
        return shapes

    return parse


def timed_call(fn: Callable[..., torch.Tensor], inputs: list[torch.Tensor], backward: bool) -> Callable[[], object]:
    """``fn`` on ``inputs``, or forward + backward into copies of them that require grad."""
    if not backward:
        return lambda: fn(*inputs)
    leaves = [t.detach().clone().requires_grad_() for t in inputs]
    grad = torch.randn_like(fn(*inputs))
    return lambda: torch.autograd.grad(fn(*leaves), leaves, grad)


def cuda_peak_mib(fn: Callable[[], object]) -> float:
    """MiB of GPU memory one call of ``fn`` allocates at its peak beyond what was allocated before it."""
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def do_bench_with_peaks(fns: dict[str, Callable[[], object]], rep_ms: int) -> tuple[dict[str, float], dict[str, float]]:
    """Each function's median ms by ``triton.testing.do_bench`` (L2 flushed before each call) and its
    :func:`cuda_peak_mib`, after one untimed call of every function (compiling and autotuning)."""
    from triton.testing import do_bench

    for fn in fns.values():
        fn()
    torch.cuda.synchronize()
    ms, peak = {}, {}
    for name, fn in fns.items():
        peak[name] = cuda_peak_mib(fn)
        ms[name] = do_bench(fn, warmup=10, rep=rep_ms, return_mode="median")
    return ms, peak


def save_text(text: str, name: str) -> Path:
    """Write ``text`` to benchmarks/out/``name`` atomically (tmp + rename); returns the path."""
    OUT.mkdir(exist_ok=True)
    path = OUT / name
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text + "\n")
    tmp.replace(path)
    return path
