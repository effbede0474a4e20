"""The dispatch between Triton kernels and their PyTorch references."""
from __future__ import annotations

import sys

import pytest
import torch

from zoo import kernels
from zoo.kernels.dispatch import KernelOp


def test_reference_ops_compute_the_formulas():
    x = torch.randn(2, 5, 3, 4, dtype=torch.float64)
    w = torch.randn(5, 3, 4, dtype=torch.float64)
    gate = torch.rand(2, 5, dtype=torch.float64)
    torch.testing.assert_close(kernels.pool_mean(x), x.mean(dim=(2, 3)))
    torch.testing.assert_close(kernels.pool_weighted(x, w), (x * w).sum(dim=(2, 3)))
    torch.testing.assert_close(kernels.channel_scale(x, gate), x * gate[:, :, None, None])


def test_low_precision_inputs_accumulate_in_fp32():
    x = torch.randn(2, 8, 64, 64).to(torch.bfloat16)
    pooled = kernels.pool_mean(x)
    assert pooled.dtype == torch.float32
    torch.testing.assert_close(pooled, x.float().mean(dim=(2, 3)))
    y = kernels.channel_scale(x, torch.rand(2, 8))
    assert y.dtype == torch.bfloat16


def test_mode_from_environment(monkeypatch):
    monkeypatch.setenv("ZOO_KERNELS", "torch")
    assert kernels.kernel_mode() == "torch"
    monkeypatch.setenv("ZOO_KERNELS", "bogus")
    with pytest.raises(ValueError, match="ZOO_KERNELS='bogus'.*auto, torch, triton"):
        kernels.kernel_mode()


def test_dispatch_picks_reference_on_cpu_and_triton_when_forced(monkeypatch):
    calls = []
    op = KernelOp("test.double", lambda x: calls.append("torch") or x * 2)
    x = torch.ones(3)
    monkeypatch.setenv("ZOO_KERNELS", "auto")
    assert op.backend_for(x) == "torch"  # no Triton implementation
    monkeypatch.setenv("ZOO_KERNELS", "triton")
    with pytest.raises(RuntimeError, match="no Triton implementation"):
        op(x)
    op.register_triton(lambda x: calls.append("triton") or x * 2)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert op.backend_for(x) == "triton"
    torch.testing.assert_close(op(x), torch.full((3,), 2.0))
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="not on CUDA"):
        op(x)
    monkeypatch.setenv("ZOO_KERNELS", "auto")
    assert op.backend_for(x) == "torch"  # auto never sends CPU tensors to the interpreter
    monkeypatch.setenv("ZOO_KERNELS", "torch")
    op(x)
    assert calls == ["triton", "torch"]


def test_lazy_triton_registration_imports_on_first_launch(tmp_path, monkeypatch):
    (tmp_path / "zoo_lazy_kernel_probe.py").write_text("def triple(x):\n    return x * 3\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "zoo_lazy_kernel_probe", raising=False)
    op = KernelOp("test.lazy", lambda x: x * 2)
    op.register_triton_lazy("zoo_lazy_kernel_probe", "triple")
    assert "zoo_lazy_kernel_probe" not in sys.modules  # registering imports nothing
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setenv("ZOO_KERNELS", "triton")
    torch.testing.assert_close(op(torch.ones(2)), torch.full((2,), 3.0))
    assert "zoo_lazy_kernel_probe" in sys.modules
    monkeypatch.setenv("ZOO_KERNELS", "torch")
    torch.testing.assert_close(op(torch.ones(2)), torch.full((2,), 2.0))
    monkeypatch.delitem(sys.modules, "zoo_lazy_kernel_probe")


def test_available_reports_ops():
    info = kernels.available()
    assert info["mode"] in ("auto", "torch", "triton")
    assert {"pool_mean", "pool_weighted", "channel_scale"} <= set(info["ops"])
    assert all(backends[0] == "torch" for backends in info["ops"].values())


def _ran_custom_op(fn, name: str) -> bool:
    from torch.profiler import profile

    with profile() as prof:
        fn()
    return any(event.name == f"zoo::{name}" for event in prof.events())


def test_eager_inference_skips_the_custom_ops_dispatch_only():
    """Without autograd, outside torch.compile / export, the exported op runs its body (same checks, same
    implementation choice); with a gradient to compute it runs the registered op and its formula."""
    x, gate, shortcut = torch.randn(2, 6, 5, 5), torch.rand(2, 6), torch.randn(2, 6, 5, 5)
    with torch.inference_mode():
        assert not _ran_custom_op(lambda: kernels.channel_scale(x, gate, shortcut, relu=True), "channel_scale")
        fast = kernels.channel_scale(x, gate, shortcut, relu=True)
        with pytest.raises(ValueError, match=r"\(B, C\) = \(2, 6\) gate"):  # the body's checks still run
            kernels.channel_scale(x, gate[:, :3])
    needs_grad = gate.clone().requires_grad_()
    assert _ran_custom_op(lambda: kernels.channel_scale(x, needs_grad, shortcut=shortcut, relu=True), "channel_scale")
    slow = kernels.channel_scale(x, needs_grad, shortcut=shortcut, relu=True)
    assert torch.equal(fast, slow.detach())
    with torch.no_grad():  # a gradient-free call through a keyword argument stays on the fast path too
        assert not _ran_custom_op(lambda: kernels.channel_scale(x, gate, shortcut=shortcut), "channel_scale")
    compiled = torch.compile(lambda t: kernels.pool_mean(t), fullgraph=True, backend="aot_eager")
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), kernels.pool_mean(x))  # traced as the op: fullgraph holds
    assert kernels.channel_scale.op is not None and torch.ops.zoo.channel_scale.default is not None
