"""Dependency groups: the channels that must be removed together.

A residual add, a concatenation or an attention gate ties the channels of several layers to one
index: removing channel 7 of a ResNet stage means removing output 7 of every conv that writes the
stage's stream, input 7 of every conv that reads it, and the BN and gate entries between them
(Fang et al., "DepGraph: Towards Any Structural Pruning", CVPR 2023, call these dependency groups).
Each model family declares its own groups in its model file (``pruning_groups()``), small and
explicit, instead of a graph tracer guessing them.
"""
from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["Member", "Group"]


@dataclass(frozen=True)
class Member:
    """One dimension of one module that a group's channels index.

    Channel ``c`` of the group is indices ``offset + (b * width + c) * unit + j`` of ``dim`` for every
    ``b`` below ``blocks`` and ``j`` below ``unit``, where ``width`` is the group's current size:
    ``blocks=2`` is a classifier reading a concatenation of average and max pools, ``offset=C`` the
    second half of a concatenation, ``unit=head_dim`` an attention head (``blocks=3``: q, k and v).

    Args:
        module: the module's name in ``model.named_modules()`` (``""`` is the model itself).
        dim: a dimension the module's shrinker knows (``out``, ``in``, ``channels``, ``hidden``) or
            ``attr:<name>``, an int attribute set to the new width (``num_features``).
        offset: where the group's channels start along ``dim``.
        blocks: how many copies of the group's channels ``dim`` holds, ``width`` apart.
        unit: how many consecutive indices one channel of the group is (a head's ``head_dim``).
    """

    module: str
    dim: str
    offset: int = 0
    blocks: int = 1
    unit: int = 1


@dataclass
class Group:
    """Channels removed together.

    Args:
        name: a readable name (``layer2``, ``layer2.0.inner1``) for reports and per-group rates.
        members: every module dimension the channels index.
        gates: the channel-attention blocks (:class:`zoo.blocks.gate.ChannelGate`) whose gate scores
            these channels: the ``gate`` importance reads them.
        min_keep: the fewest channels the group keeps, whatever the target (a head needs one channel,
            a frequency group needs its share).
    """

    name: str
    members: list[Member] = field(default_factory=list)
    gates: list[str] = field(default_factory=list)
    min_keep: int = 1

    def add(self, module: str, dim: str, offset: int = 0, blocks: int = 1, unit: int = 1) -> "Group":
        self.members.append(Member(module, dim, offset, blocks, unit))
        return self
