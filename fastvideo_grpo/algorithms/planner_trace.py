"""What an algorithm gives the planner to trace its training micro-batch (`Algorithm.planner_micro_batch`)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch


@dataclass
class MicroBatchTrace:
    """An algorithm's training micro-batch for `planning.tracer.track_micro_batch`: `inputs()` makes, under
    fake tensors and without autograd, what the rollout stored for it; `loss(*inputs)` runs
    the micro-batch's forwards to its loss, under the tracker."""

    inputs: object
    loss: object


def as_numbers(sampler):
    """The sampler with its tensors (noise levels, DDIM's alpha_bar) as Python lists: the steps
    only read numbers from them, and under fake tensors a tensor's element has no value."""
    if isinstance(sampler, torch.Tensor):
        return sampler.tolist()
    if not dataclasses.is_dataclass(sampler):
        return sampler
    fields = {f.name: getattr(sampler, f.name) for f in dataclasses.fields(sampler)}
    return dataclasses.replace(sampler, **{name: as_numbers(value) for name, value in fields.items()
                                           if isinstance(value, torch.Tensor) or dataclasses.is_dataclass(value)})
