"""Each task's loss, and how the task losses of one joint step become one update of the shared modules.

``gradient: sum`` (the default) back-propagates the weighted sum of the task losses. ``gradient: pcgrad`` is
gradient surgery (Yu et al., 2020, "Gradient Surgery for Multi-Task Learning"): each task's gradient on the
*shared* parameters is projected off the normal plane of every other task's gradient it conflicts with
(negative dot product), in a random order, and the projected gradients are summed. Task-specific modules
(heads, the uncertainty weights) get their own task's gradient either way. PCGrad costs one extra backward
pass per task per step.
"""

from __future__ import annotations

import torch
from torch import nn

GRADIENTS = ("sum", "pcgrad")


def task_loss(kind: str, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    bce = nn.functional.binary_cross_entropy_with_logits(logits, y, reduction="none")
    if kind == "bce":
        return bce.mean()
    if kind == "focal":
        p_t = torch.exp(-bce)
        return ((1 - p_t) ** 2 * bce).mean()
    raise ValueError(f"unknown loss {kind!r} (bce or focal)")


def pcgrad_project(grads: list[torch.Tensor], gen: torch.Generator) -> torch.Tensor:
    """The sum of the task gradients (flat vectors of the shared parameters), each first projected off the
    gradients of the other tasks it conflicts with, visited in a random order."""
    out = torch.zeros_like(grads[0])
    for i, gi in enumerate(grads):
        g = gi.clone()
        for j in torch.randperm(len(grads), generator=gen).tolist():
            if j == i:
                continue
            dot = torch.dot(g, grads[j])
            if dot < 0:
                g = g - dot / (grads[j].dot(grads[j]) + 1e-20) * grads[j]
        out += g
    return out


def backward(kind: str, task_losses: list[torch.Tensor], shared: list[nn.Parameter], gen: torch.Generator) -> None:
    """Set ``.grad`` of every parameter for one joint step (call after ``zero_grad``)."""
    total = torch.stack([torch.as_tensor(x) for x in task_losses]).sum() if task_losses else None
    if kind == "sum" or len(task_losses) < 2 or not shared:
        total.backward()
        return
    if kind != "pcgrad":
        raise ValueError(f"gradient must be one of {GRADIENTS}, not {kind!r}")
    flat = []
    for loss in task_losses:
        g = torch.autograd.grad(loss, shared, retain_graph=True, allow_unused=True)
        flat.append(torch.cat([(x if x is not None else torch.zeros_like(p)).reshape(-1) for x, p in zip(g, shared)]))
    combined = pcgrad_project(flat, gen)
    total.backward()  # the task-specific parameters' gradients; the shared ones are replaced below
    offset = 0
    for p in shared:
        n = p.numel()
        p.grad = combined[offset: offset + n].view_as(p).clone()
        offset += n
