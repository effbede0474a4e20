"""Structured channel pruning: dependency groups, importance criteria, and the replay that rebuilds a
pruned model from its saved widths (see :mod:`zoo.pruning.api`)."""
from .api import (PrunePlan, PruneReport, apply_plan, format_report, plan_pruning, prune, record_widths,
                  slice_state_dict, soft_mask)
from .cost import count_macs, count_params
from .groups import Group, Member
from .importance import IMPORTANCE, register_importance
from .replay import SHRINKERS, apply_record, register_shrinker
from .target import PruneTarget

__all__ = ["prune", "record_widths", "plan_pruning", "apply_plan", "soft_mask", "slice_state_dict", "PrunePlan",
           "PruneReport", "format_report", "PruneTarget", "Group", "Member", "IMPORTANCE", "register_importance",
           "SHRINKERS", "register_shrinker", "apply_record", "count_macs", "count_params"]
