"""Which autograd nodes a result's graph holds: tests that a fast path really ran."""

from __future__ import annotations

import torch


def graph_node_names(*outputs: torch.Tensor) -> set[str]:
    """Class names of every node in the backward graph of `outputs` (each node visited once)."""
    names: set[str] = set()
    seen: set[int] = set()
    todo = [out.grad_fn for out in outputs]
    while todo:
        node = todo.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        names.add(type(node).__name__)
        todo += [child for child, _ in node.next_functions]
    return names
