"""Choosing between a Triton kernel and its PyTorch reference.

Rule (docs/DESIGN.md): a CUDA tensor with Triton importable runs the Triton kernel; anything else runs the
reference. ``ZOO_KERNELS`` overrides it:

- ``auto`` (default): the rule above;
- ``torch``: always the reference;
- ``triton``: always the kernel, an error where none exists. With ``TRITON_INTERPRET=1`` this runs
  kernels on CPU tensors through Triton's interpreter, which is how the tests exercise them.

Public ops are ``torch.library.custom_op``s (namespace ``zoo``) whose bodies call a :class:`KernelOp`,
so the choice is made per call, inside the op, on real tensors; ``torch.compile`` sees one opaque op
with a fake implementation and an autograd formula. Triton itself is imported only when a kernel first
launches (:meth:`KernelOp.register_triton_lazy` defers importing the ``zoo.kernels._triton_*`` modules), so
``import zoo.kernels`` works on machines without Triton. ``TRITON_INTERPRET=1`` must be in the environment
before triton is imported, by us or by torch (``torch._dynamo`` imports it): set it when the process starts.
"""
from __future__ import annotations

import contextlib
import functools
import importlib.util
import os
from typing import Callable

import torch

ENV_VAR = "ZOO_KERNELS"
MODES = ("auto", "torch", "triton")

_OPS: dict[str, KernelOp] = {}


def autocast_off(device_type: str) -> contextlib.AbstractContextManager:
    """Autocast switched off where it is on, for references that must run in their inputs' dtype; a no-op
    where it is off (entering ``torch.autocast`` costs ~8 us a call) or does not exist (``meta``)."""
    if torch.amp.is_autocast_available(device_type) and torch.is_autocast_enabled(device_type):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()


def upcast_16bit(*tensors: torch.Tensor | None) -> list[torch.Tensor | None]:
    """fp16 / bf16 tensors in fp32, others (and None) as they are: backward formulas run in fp32 and
    round each gradient once."""
    return [t.float() if t is not None and t.dtype in (torch.float16, torch.bfloat16) else t for t in tensors]


def _environ(name: str) -> str | None:
    """``os.environ.get(name)``, cheap for an unset name. Every op call reads ``ZOO_KERNELS``, several times
    a block; ``os.environ.get`` raises and catches two KeyErrors when the name is unset (the common case),
    ~1 us a read in a loop and several inside a model's forward. CPython keeps the mapping in ``_data``
    (updated by assignment, ``monkeypatch.setenv`` and ``del``), keyed by the encoded name."""
    data = getattr(os.environ, "_data", None)
    if data is None:  # another Python's os.environ
        return os.environ.get(name)
    raw = data.get(os.environ.encodekey(name))
    return None if raw is None else os.environ.decodevalue(raw)


def kernel_mode() -> str:
    """The path forced by ``ZOO_KERNELS``, read on every call so tests can flip it."""
    mode = (_environ(ENV_VAR) or "auto").strip().lower() or "auto"
    if mode not in MODES:
        raise ValueError(f"{ENV_VAR}={mode!r} is not a kernel mode; use one of {', '.join(MODES)}")
    return mode


def _interpreting() -> bool:
    return _environ("TRITON_INTERPRET") == "1"


@functools.lru_cache(maxsize=1)
def _triton_importable() -> bool:
    return importlib.util.find_spec("triton") is not None


def choose_backend(mode: str, triton_runs: bool, on_cuda: bool) -> str | None:
    """The one dispatch rule: ``torch`` mode runs the reference; ``triton`` mode the Triton kernel where it
    can run (None where it cannot: the caller raises); ``auto`` the Triton kernel on CUDA, else the
    reference (the interpreter only under ``ZOO_KERNELS=triton``)."""
    if mode == "torch":
        return "torch"
    if mode == "triton":
        return "triton" if triton_runs else None
    return "triton" if triton_runs and on_cuda else "torch"


class KernelOp:
    """One op with a reference implementation and, optionally, a Triton one.

    Calling the op dispatches on the first tensor argument and on ``ZOO_KERNELS``.
    """

    def __init__(self, name: str, reference: Callable) -> None:
        self.name = name
        self.reference = reference
        self.triton: Callable | None = None
        functools.update_wrapper(self, reference)

    def register_triton(self, fn: Callable) -> Callable:
        self.triton = fn
        return fn

    def register_triton_lazy(self, module: str, function: str) -> None:
        """Register ``module.function`` (e.g. ``"zoo.kernels._triton_adaln", "adaln_modulate"``) as the Triton
        implementation without importing it: the module, and triton with it, is imported on the first launch."""

        def launch(*args, **kwargs):
            return getattr(importlib.import_module(module), function)(*args, **kwargs)

        launch.__qualname__ = launch.__name__ = f"{module}.{function}"
        self.register_triton(launch)

    def backend_for(self, x: torch.Tensor) -> str:
        mode = kernel_mode()
        if mode == "auto" and not x.is_cuda:  # the common CPU call: one environment read, no interpreter check
            return "torch"
        runs = self.triton is not None and _triton_importable() and (x.is_cuda or _interpreting())
        choice = choose_backend(mode, runs, x.is_cuda)
        if choice is None:
            why = "no Triton implementation is registered" if self.triton is None else (
                "Triton is not importable" if not _triton_importable()
                else "the tensor is not on CUDA and TRITON_INTERPRET=1 is not set")
            raise RuntimeError(f"{ENV_VAR}=triton but kernel {self.name!r} cannot run Triton: {why}. "
                               f"Unset {ENV_VAR} (or set it to 'auto') to use the PyTorch reference.")
        return choice

    def __call__(self, x: torch.Tensor, *args, **kwargs):
        impl = self.triton if self.backend_for(x) == "triton" else self.reference
        return impl(x, *args, **kwargs)

    def __repr__(self) -> str:
        return f"KernelOp({self.name!r}, triton={'yes' if self.triton else 'no'})"


def kernel_op(name: str) -> Callable[[Callable], KernelOp]:
    """Declare a reference implementation as a dispatchable op named ``name``."""

    def wrap(reference: Callable) -> KernelOp:
        if name in _OPS:
            raise ValueError(f"kernel op {name!r} is registered twice")
        op = KernelOp(name, reference)
        _OPS[name] = op
        return op

    return wrap


def eager_inference(x: object, *others: object) -> bool:
    """Whether an op call may run the op's Python body without the custom op around it: eager (not under
    torch.compile / torch.export; FX passes proxies, never this type) and no argument needing a gradient.
    The body makes the same choice of implementation and the same checks; the custom op's dispatch costs
    30-100 us a call on the CPU, as much as a whole channel gate on a small map or a decode step's FFN."""
    if type(x) is not torch.Tensor or torch.compiler.is_compiling():
        return False
    return not torch.is_grad_enabled() or not any(isinstance(t, torch.Tensor) and t.requires_grad
                                                  for t in (x, *others))


def public_op(name: str) -> Callable[[Callable], Callable]:
    """Register ``fn`` as the custom op ``zoo::name`` and return what the package exports: ``fn`` itself in
    eager inference (:func:`eager_inference`), the op otherwise (autograd with its formula; torch.compile and
    torch.export see one node). ``.op`` is the op, for ``register_fake`` and ``register_autograd``;
    ``torch.ops.zoo.<name>`` is its overload, for ``opcheck``."""

    def wrap(fn: Callable) -> Callable:
        op = torch.library.custom_op(f"zoo::{name}", fn, mutates_args=())

        @functools.wraps(fn)
        def call(*args, **kwargs):
            return fn(*args, **kwargs) if eager_inference(*args, *kwargs.values()) else op(*args, **kwargs)

        call.op = op
        return call

    return wrap


def available() -> dict:
    """What this machine can run: the mode, Triton and CUDA availability, and each op's backends.

    ``backend`` says which implementation a CPU and a CUDA tensor get now (``None``: no CUDA here,
    or ``ZOO_KERNELS=triton`` where the kernel cannot run, which raises when called).
    """
    mode = kernel_mode()
    triton, cuda, interpret = _triton_importable(), torch.cuda.is_available(), _interpreting()

    def backend(on_cuda: bool) -> str | None:
        return None if on_cuda and not cuda else choose_backend(mode, triton and (on_cuda or interpret), on_cuda)

    return {
        "mode": mode,
        "triton": triton,
        "cuda": cuda,
        "interpret": interpret,
        "backend": {"cpu": backend(False), "cuda": backend(True)},
        "ops": {name: ["torch"] + (["triton"] if op.triton else []) for name, op in sorted(_OPS.items())},
    }
