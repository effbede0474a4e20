"""Graph capture: the channel-gate custom ops trace under torch.compile(fullgraph=True).

``aot_eager`` (docs/DESIGN.md) runs dynamo and AOTAutograd with the ops' fake implementations and autograd
formulas, then executes the captured graphs eagerly: cheap on a CPU, and it fails on any graph break.
"""
from __future__ import annotations

import pytest
import torch
from torch._dynamo.backends.common import aot_autograd
from torch._dynamo.testing import CompileCounterWithBackend
from torch._functorch.aot_autograd import make_boxed_func

import zoo
from zoo.models.resnet import Bottleneck

from kernel_testing import needs_triton


def _ops(graphs) -> set[str]:
    """The zoo:: custom ops that appear as single nodes in captured FX graphs."""
    return {str(node.target) for graph in graphs for node in graph.graph.nodes
            if node.op == "call_function" and str(node.target).startswith("zoo.")}


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize("name,pool", [("seresnet50", "zoo.pool_mean.default"),
                                       ("fcanet50", "zoo.pool_weighted.default")])
def test_model_compiles_fullgraph_and_matches_eager(name, pool):
    model = zoo.create(name, zero_init_last=False).eval()
    x = torch.randn(1, 3, 64, 64)
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(model, fullgraph=True, backend=counter)
    with torch.no_grad():
        got, expected = compiled(x), model(x)
    assert counter.frame_count == 1
    assert {pool, "zoo.channel_scale.default"} <= _ops(counter.graphs)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("attn,kwargs", [("se", {}), ("fca", dict(dct_h=7, dct_w=7, reduction=4))])
def test_training_block_compiles_with_backward(attn, kwargs):
    """The fused epilogue and the pools in a training graph: AOTAutograd traces the backward ops."""
    block = Bottleneck(32, 8, attn_layer=attn, attn_kwargs=kwargs)
    for p in block.parameters():
        torch.nn.init.normal_(p, 0.0, 0.3) if p.ndim > 1 else torch.nn.init.uniform_(p, 0.5, 1.5)
    x = torch.randn(2, 32, 5, 6).to(memory_format=torch.channels_last)
    x_eager, x_comp = x.clone().requires_grad_(), x.clone().requires_grad_()
    params = list(block.parameters())
    eager = block(x_eager)
    grad = torch.randn_like(eager)
    want = torch.autograd.grad(eager, [x_eager, *params], grad)  # before BN's running stats move again
    graphs = {"forward": [], "backward": []}

    def recorder(kind):
        def compile_fn(gm, example_inputs):
            graphs[kind].append(gm)
            return make_boxed_func(gm.forward)  # run the captured graph eagerly, as aot_eager does
        return compile_fn

    backend = aot_autograd(fw_compiler=recorder("forward"), bw_compiler=recorder("backward"))
    compiled = torch.compile(block, fullgraph=True, backend=backend)(x_comp)
    torch.testing.assert_close(compiled, eager, atol=1e-5, rtol=1e-5)
    got = torch.autograd.grad(compiled, [x_comp, *params], grad)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-5)
    pool = "zoo.pool_mean.default" if attn == "se" else "zoo.pool_weighted.default"
    assert {pool, "zoo.channel_scale.default"} <= _ops(graphs["forward"])
    assert {"zoo.pool_backward.default", "zoo.channel_scale_backward.default"} <= _ops(graphs["backward"])


@needs_triton
@pytest.mark.parametrize("attn,kwargs,fused", [
    ("se", {}, "zoo.squeeze_excite_mlp.default"), ("eca", {}, "zoo.squeeze_excite_conv.default"),
    ("fca", dict(dct_h=3, dct_w=4, reduction=4), "zoo.squeeze_excite_mlp.default")])
def test_fused_squeeze_excite_compiles_with_backward(triton_mode, attn, kwargs, fused):
    """Where the Triton kernels run, the block's pool and excitation are one op in the traced forward graph,
    and the compiled block's output and gradients equal eager mode's."""
    block = Bottleneck(32, 8, attn_layer=attn, attn_kwargs=kwargs).eval()
    x = torch.randn(2, 32, 3, 4)
    x_eager, x_comp = x.clone().requires_grad_(), x.clone().requires_grad_()
    params = list(block.parameters())
    eager = block(x_eager)
    want = torch.autograd.grad(eager.square().sum(), [x_eager, *params])
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(block, fullgraph=True, backend=counter)(x_comp)
    torch.testing.assert_close(compiled, eager, atol=1e-5, rtol=1e-5)
    for g, w in zip(torch.autograd.grad(compiled.square().sum(), [x_comp, *params]), want):
        torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-5)
    assert fused in _ops(counter.graphs)
