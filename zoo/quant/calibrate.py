"""Calibration: per-input-channel activation statistics of every layer to quantize, a sample of its
inputs for the scale searches, and which layer produced each input (so scales can be folded there).

The producer graph comes from one traced forward pass: hooks match a module's input tensor by
identity with another module's output, through positively homogeneous modules (ReLU, Identity,
Dropout in eval), which a positive per-channel scale passes unchanged; a ``TorchFunctionMode`` counts
every use of every tensor, functional ones included (a residual ``x + y``), so a scale is folded
only into a producer whose output has no other reader. The folded float model is checked anyway.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Optional

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

# modules that commute with a positive per-channel scale: relu(s * x) = s * relu(x) for s > 0
SCALE_PASSTHROUGH = (nn.ReLU, nn.LeakyReLU, nn.Identity, nn.Dropout, nn.PReLU)
SAMPLE_ELEMENTS = 2 ** 21  # inputs kept per layer for the scale searches (fp32: 8 MB)


@dataclass
class LayerStats:
    """Running statistics of one layer's input channels over the calibration data."""

    absmax: torch.Tensor
    minimum: torch.Tensor
    maximum: torch.Tensor
    abs_sum: torch.Tensor
    count: int = 0
    sample: Optional[torch.Tensor] = None  # the layer's input on (part of) the first batch
    calls: int = 0

    @property
    def abs_mean(self) -> torch.Tensor:
        return self.abs_sum / max(self.count, 1)


@dataclass
class Producer:
    """The module whose output a layer reads, and whether a ReLU-like module sits between them."""

    name: str
    through_nonlinearity: bool


@dataclass
class Calibration:
    stats: dict[str, LayerStats] = field(default_factory=dict)
    producers: dict[str, Optional[Producer]] = field(default_factory=dict)
    batches: int = 0
    first_input: object = None


class _UseCounter(TorchFunctionMode):
    """Counts, per tensor id, the torch calls that read the tensor and produce a tensor."""

    def __init__(self, users: dict[int, int], state: dict, keep_alive: list) -> None:
        super().__init__()
        self.users, self.state, self.keep_alive = users, state, keep_alive

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        produces_tensor = isinstance(out, torch.Tensor) or (  # not torch.Size, a tuple of ints
            isinstance(out, (tuple, list)) and any(isinstance(o, torch.Tensor) for o in out))
        if self.state["quiet"] == 0 and self.state["passthrough"] == 0 and produces_tensor:
            for t in (*args, *kwargs.values()):
                for u in (t if isinstance(t, (list, tuple)) else (t,)):
                    if isinstance(u, torch.Tensor):
                        self.users[id(u)] = self.users.get(id(u), 0) + 1
                        self.keep_alive.append(u)  # a freed tensor's id could be reused by a later one
        return out


def input_of(batch) -> object:
    """The model input in a data-loader batch: the batch itself, or the first item of (x, y)/(x, y, ...)."""
    if isinstance(batch, (list, tuple)):
        return batch[0]
    if isinstance(batch, dict):
        for key in ("x", "input", "image", "lr", "input_ids"):
            if key in batch:
                return batch[key]
        raise ValueError(f"calibration batch is a dict with keys {sorted(batch)}; pass batches of inputs, "
                         f"(input, target) pairs, or a dict with an 'x'/'input'/'image'/'lr' entry")
    return batch


def _channels_last(x: torch.Tensor, layer: nn.Module) -> torch.Tensor:
    """A layer input as (tokens, C): pixels of a conv map, rows of a linear layer's input."""
    if isinstance(layer, nn.Conv2d):
        return x.permute(0, 2, 3, 1).reshape(-1, x.shape[1])  # (B*H*W, C)
    return x.reshape(-1, x.shape[-1])  # (M, K)


def check_input(model: nn.Module, x: object, first_layer: nn.Module) -> None:
    """Reject calibration data the model cannot take, naming the expected shape, before any work."""
    if not isinstance(x, torch.Tensor):
        return
    if isinstance(first_layer, nn.Conv2d) and (x.ndim != 4 or x.shape[1] != first_layer.in_channels):
        raise ValueError(f"calibration data has shape {tuple(x.shape)}, but the model's first layer takes "
                         f"(B, {first_layer.in_channels}, H, W) images; pass batches of model inputs")
    # only a 2-D batch must match a first Linear directly: a Flatten/reshape may sit in front of it
    if isinstance(first_layer, nn.Linear) and x.is_floating_point() and x.ndim == 2 and \
            x.shape[-1] != first_layer.in_features:
        raise ValueError(f"calibration data has shape {tuple(x.shape)}, but the model's first layer takes "
                         f"(..., {first_layer.in_features}) inputs; pass batches of model inputs")


@torch.no_grad()
def calibrate(model: nn.Module, layers: dict[str, nn.Module], data: Iterable, num_batches: Optional[int] = None,
              progress: bool = False) -> Calibration:
    """Run ``model`` over ``data`` and collect the statistics of each of ``layers``' inputs."""
    result = Calibration()
    names = {id(m): n for n, m in model.named_modules()}
    leaves = [m for m in model.modules() if not list(m.children())]
    produced_by: dict[int, tuple[str, bool]] = {}  # tensor id -> (producer name, through a non-linearity)
    users: dict[int, int] = {}
    keep_alive: list[torch.Tensor] = []  # ids stay unique while the traced batch is alive
    tracing = {"on": True}
    state = {"quiet": 0, "passthrough": 0}  # inside our own hooks / inside a ReLU-like module
    first_input_ids: dict[str, int] = {}

    def enter_passthrough(module, args):
        state["passthrough"] += 1

    def leaf_hook(module, args, output):
        if isinstance(module, SCALE_PASSTHROUGH):
            state["passthrough"] -= 1
        if not tracing["on"] or not isinstance(output, torch.Tensor):
            return
        name = names[id(module)]
        tensors = [a for a in args if isinstance(a, torch.Tensor)]
        keep_alive.extend(tensors + [output])
        if isinstance(module, SCALE_PASSTHROUGH) and tensors:
            source = produced_by.get(id(tensors[0]))
            produced_by[id(output)] = (source[0], True) if source else ("", True)
            return
        produced_by[id(output)] = (name, False)

    def layer_hook(name):
        def hook(module, args):
            state["quiet"] += 1
            try:
                collect(name, module, args[0])
            finally:
                state["quiet"] -= 1
        return hook

    def collect(name, module, x):
        tokens = _channels_last(x.detach(), module).float()  # (tokens, C)
        st = result.stats.get(name)
        if st is None:
            c = tokens.shape[1]
            st = result.stats[name] = LayerStats(torch.zeros(c), torch.full((c,), float("inf")),
                                                 torch.full((c,), float("-inf")), torch.zeros(c))
            keep = max(1, min(x.shape[0], SAMPLE_ELEMENTS // max(x[0].numel(), 1)))
            st.sample = x[:keep].detach().float().cpu().clone()
        st.absmax = torch.maximum(st.absmax, tokens.abs().amax(0).cpu())
        st.minimum = torch.minimum(st.minimum, tokens.amin(0).cpu())
        st.maximum = torch.maximum(st.maximum, tokens.amax(0).cpu())
        st.abs_sum += tokens.abs().sum(0).cpu()
        st.count += tokens.shape[0]
        if tracing["on"]:
            st.calls += 1
            first_input_ids[name] = id(x)

    handles = [m.register_forward_hook(leaf_hook) for m in leaves]
    handles += [m.register_forward_pre_hook(enter_passthrough) for m in leaves if isinstance(m, SCALE_PASSTHROUGH)]
    handles += [layer.register_forward_pre_hook(layer_hook(name)) for name, layer in layers.items()]
    was_training = model.training
    model.eval()
    try:
        device = next(iter(model.parameters())).device
        total = num_batches if num_batches is not None else (len(data) if hasattr(data, "__len__") else None)
        iterator = iter(data)
        step = 0
        bar = _progress(total) if progress else None
        while num_batches is None or step < num_batches:
            try:
                batch = next(iterator)
            except StopIteration:
                break
            x = input_of(batch)
            if step == 0:
                # the first module with weights: where the data enters (a conv stem, a patch embedding, ...)
                first_layer = next((m for m in model.modules() if not list(m.children())
                                    and next(m.parameters(recurse=False), None) is not None), None)
                check_input(model, x, first_layer)
                result.first_input = x
            x = x.to(device) if isinstance(x, torch.Tensor) else x
            if step == 0:
                try:
                    with _UseCounter(users, state, keep_alive):
                        model(x)
                except (RuntimeError, ValueError) as exc:
                    shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
                    raise ValueError(f"the model cannot run on the calibration data (first batch {shape}): {exc}; "
                                     f"pass batches of model inputs") from exc
            else:
                model(x)
            if step == 0:
                tracing["on"] = False
                for name, tid in first_input_ids.items():
                    source = produced_by.get(tid)
                    single = source is not None and source[0] and users.get(tid, 0) == 1 and \
                        result.stats[name].calls == 1
                    result.producers[name] = Producer(source[0], source[1]) if single else None
                keep_alive.clear()
            step += 1
            if bar is not None:
                bar.update(1)
        if bar is not None:
            bar.close()
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    if step == 0:
        raise ValueError("calibration data is empty; pass a DataLoader or a list with at least one batch")
    result.batches = step
    return result


def _progress(total: Optional[int]):
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm ships with lightning
        return None
    return tqdm(total=total, desc="calibrating", unit="batch", leave=False)
