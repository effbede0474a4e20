"""Compile every Triton kernel for an NVIDIA GPU on a machine without one.

    python tests/gpu_compile_check.py [--arch 90] [--list]

The interpreter (how the kernel tests run on a CPU) executes a kernel's Python, so it cannot catch
what only the compiler sees: a type the GPU lowering rejects, a layout that does not fit, shared
memory past the limit, a construct the interpreter accepts and the compiler does not. This script
drives every kernel test file's opcheck cases (``kernel_testing.OPCHECK_CASES``: each custom op,
forward and backward) through the ops' own Triton wrappers with ``ZOO_KERNELS=triton``, but every
launch compiles the kernel to a cubin for ``sm_<arch>`` (Triton ships ptxas) instead of running it,
each autotune config included. A launch's outputs are then zeros, enough for the code after it to go
on; nothing is checked but the compilation. It fails on any compile error, on shared memory past
the arch's limit per block (which only a launch would report), and on any kernel in
``kernels/_triton_*.py`` that no case reached, and prints a table: each kernel's compiled variants,
warp counts, and the most shared memory, registers and spilled bytes per thread of any variant
(from the cuobjdump that ships with Triton; spills cost speed, not correctness, so they are shown).

Run it without ``TRITON_INTERPRET`` (``tests/test_gpu_compile.py`` starts it in a clean process).
The default arch, 90, is the H200's (and H100's); ``--arch 80`` is the A100's.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
from collections import defaultdict
from pathlib import Path

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
TEST_DIRS = (TESTS, TESTS / "kernels")  # where test files with opcheck cases are looked for

# the most shared memory one block may use (opt-in), by compute capability (CUDA programming guide):
# a kernel over it compiles but fails at launch with OutOfResources, so it is checked here
SHARED_MEMORY_LIMIT = {80: 166912, 86: 101376, 87: 166912, 89: 101376, 90: 232448, 100: 232448, 120: 101376}


class CompileOnlyDriver:
    """The bits of a Triton GPU driver that compiling needs, for a machine with no GPU: the target."""

    def __init__(self, arch: int) -> None:
        from triton.backends.compiler import GPUTarget

        self.target = GPUTarget("cuda", arch, 32)

    def is_active(self) -> bool:
        return True

    def get_current_target(self):
        return self.target

    def get_current_device(self) -> int:
        return 0

    def get_current_stream(self, device=None) -> int:
        return 0

    def get_benchmarker(self):
        raise RuntimeError("gpu_compile_check compiles kernels; it never times them")


def resource_usage(cubin: bytes) -> tuple[int, int]:
    """(registers per thread, local-memory bytes per thread: spills) of a cubin, from the cuobjdump that
    ships with Triton; (-1, -1) where it is missing."""
    import re
    import subprocess
    import tempfile

    import triton

    tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    if not tool.exists():
        return -1, -1
    with tempfile.NamedTemporaryFile(suffix=".cubin") as file:
        file.write(cubin)
        file.flush()
        report = subprocess.run([str(tool), "--dump-resource-usage", file.name], capture_output=True,
                                text=True).stdout
    found = re.search(r"REG:(\d+).*LOCAL:(\d+)", report)
    return (int(found[1]), int(found[2])) if found else (-1, -1)


def install(arch: int) -> dict:
    """Make every Triton launch compile for ``sm_<arch>`` instead of running; returns the record of
    compiled variants by kernel name."""
    import torch
    import triton
    from triton.runtime import autotuner
    from triton.runtime.driver import driver

    from zoo.kernels import dispatch

    driver.set_active(CompileOnlyDriver(arch))
    record: dict[str, list[tuple]] = defaultdict(list)
    compile_run = triton.runtime.jit.JITFunction.run

    def run(self, *args, grid, warmup, **kwargs):
        kernel = compile_run(self, *args, grid=grid, warmup=True, **kwargs)  # compile, do not launch
        name = f"{self.fn.__module__}.{self.fn.__name__}"
        registers, local = resource_usage(kernel.asm["cubin"])
        record[name].append((kernel.hash, kwargs.get("num_warps", 4), kernel.metadata.shared, registers, local))
        for arg in args:  # the launch's outputs (and inputs): defined values for the code that follows
            if isinstance(arg, torch.Tensor) and arg.numel():
                arg.data.zero_()
        return kernel

    def run_every_config(self, *args, **kwargs):
        self.nargs = dict(zip(self.arg_names, args))
        for config in self.configs:
            self.fn.run(*args, **kwargs, **config.all_kwargs())

    triton.runtime.jit.JITFunction.run = run
    autotuner.Autotuner.run = run_every_config
    dispatch._interpreting = lambda: True  # CPU tensors take the Triton path (ZOO_KERNELS=triton)
    os.environ["ZOO_KERNELS"] = "triton"
    return record


def launchable_kernels() -> set[str]:
    """Every ``*_kernel`` in kernels/_triton_*.py (the helpers they call compile with them)."""
    import triton

    names = set()
    for path in sorted((ROOT / "kernels").glob("_triton_*.py")):
        module = importlib.import_module(f"zoo.kernels.{path.stem}")
        for attr, value in vars(module).items():
            fn = value.fn if isinstance(value, triton.runtime.autotuner.Autotuner) else value
            if attr.endswith("_kernel") and isinstance(fn, triton.runtime.jit.JITFunction):
                names.add(f"{fn.fn.__module__}.{fn.fn.__name__}")
    return names


def drive(cases) -> None:
    """Each case's op forward, then backward through every floating output."""
    import torch

    for case in cases:
        op, args = case[0], case[1]
        kwargs = case[2] if len(case) > 2 else {}
        out = op(*args, **kwargs)
        outs = [t for t in (out if isinstance(out, (tuple, list)) else [out])
                if isinstance(t, torch.Tensor) and t.requires_grad and t.is_floating_point()]
        inputs = [t for t in list(args) + list(kwargs.values()) if isinstance(t, torch.Tensor) and t.requires_grad]
        if outs and inputs:
            torch.autograd.grad(outs, inputs, [torch.ones_like(t) for t in outs], allow_unused=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", type=int, default=90, help="compute capability x 10 (90: H100 / H200)")
    parser.add_argument("--list", action="store_true", help="list the kernels and exit")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        print("gpu_compile_check compiles kernels: unset TRITON_INTERPRET (the interpreter never compiles)",
              file=sys.stderr)
        return 2
    sys.path[:0] = [str(ROOT)] + [str(folder) for folder in TEST_DIRS]
    if args.list:
        print("\n".join(sorted(launchable_kernels())))
        return 0
    record = install(args.arch)
    import kernel_testing

    for path in sorted(path for folder in TEST_DIRS for path in folder.glob("test_*.py")):
        if "opcheck_tests(" in path.read_text():
            importlib.import_module(path.stem)  # registers its cases
    start = time.perf_counter()
    failures = []
    for module, cases in sorted(kernel_testing.OPCHECK_CASES.items()):
        try:
            drive(cases("cpu"))
        except Exception as error:  # report every file's failure, not just the first
            failures.append(f"{module}: {type(error).__name__}: {error}")
    missing = sorted(launchable_kernels() - set(record))
    limit = SHARED_MEMORY_LIMIT.get(args.arch)
    failures += [f"{name}: {v[2]} bytes of shared memory, over sm_{args.arch}'s {limit} per block"
                 for name, variants in record.items() for v in variants if limit and v[2] > limit]
    rows = [(name.removeprefix("zoo.kernels."), len({v[0] for v in variants}),
             ",".join(map(str, sorted({v[1] for v in variants}))), *(max(v[i] for v in variants) for i in (2, 3, 4)))
            for name, variants in sorted(record.items())]
    width = max(len(r[0]) for r in rows) if rows else 10
    print(f"Triton kernels compiled for sm_{args.arch} (no launch) in {time.perf_counter() - start:.0f} s")
    print(f"{'kernel'.ljust(width)} | variants | num_warps | shared memory (bytes) | registers | spilled (bytes)")
    for name, variants, warps, shared, registers, local in rows:
        print(f"{name.ljust(width)} | {variants:<8} | {warps:<9} | {shared:<21} | {registers:<9} | {local}")
    for failure in failures:
        print(f"FAILED {failure}", file=sys.stderr)
    if missing:
        print(f"no case reached: {', '.join(missing)} (add an opcheck case that launches it)", file=sys.stderr)
    return 1 if failures or missing else 0


if __name__ == "__main__":
    sys.exit(main())
