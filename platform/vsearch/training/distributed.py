"""Collectives the losses need, over ``torch.distributed`` only (Ray Train sets the group up).

The losses take these as an injected ``gather`` argument (``vsearch.models.losses``), so they are
tested without a process group.
"""

from __future__ import annotations

import warnings

import torch
import torch.distributed as dist


def world_size() -> int:
    """Workers in the default process group; 1 when none is initialised."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


def all_gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` ``(n, ...)`` over all workers in rank order: ``(world * n, ...)``.

    Every worker must pass the same shape. The result is differentiable: the backward pass sums
    the gradients that every worker's loss puts on a worker's rows and hands each worker its own
    (``torch.distributed.nn.functional.all_gather``). Tensors that need no gradient (labels) go
    through the plain collective. Returns ``x`` itself when no process group is initialised or
    the group has a single worker.
    """
    if world_size() == 1:
        return x
    if x.requires_grad:
        from torch.distributed.nn.functional import all_gather

        # torch 2.13 marks it deprecated for a private functional API without the same autograd
        # contract; the warning, printed by every worker, asks nothing of a user.
        with warnings.catch_warnings():
            warnings.filterwarnings(
                "ignore", message=".*all_gather is deprecated", category=FutureWarning
            )
            return torch.cat(all_gather(x), 0)
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, 0)
