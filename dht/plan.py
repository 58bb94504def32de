"""Which nodes to ask (pure): the closest by XOR distance, and the fewest
holders that cover a set of keys."""

from __future__ import annotations

from collections.abc import Iterable

from kademlia.node import Node

__all__ = ["closest", "cover"]


def closest(nodes: Iterable[Node], target: Node, k: int) -> list[Node]:
    return sorted(nodes, key=target.distance_to)[:k]


def cover(holders: dict[bytes, list[Node]], width: int) -> list[tuple[Node, list[bytes]]]:
    """Which node to ask for which keys: every key of `holders` (key → its
    holders, closest first) asked of `width` of its holders, greedily from
    the node that holds the most keys still short (ties: the first met)."""
    need = {k: min(width, len(h)) for k, h in holders.items()}
    candidates: dict[bytes, tuple[Node, list[bytes]]] = {}
    for key32, nodes in holders.items():
        for node in nodes:
            candidates.setdefault(node.id, (node, []))[1].append(key32)
    # How many keys still short each candidate holds, kept up to date.
    short = {node_id: len(ks) for node_id, (_, ks) in candidates.items()}
    by_key: dict[bytes, list[bytes]] = {}
    for node_id, (_, ks) in candidates.items():
        for k in ks:
            by_key.setdefault(k, []).append(node_id)
    plan: list[tuple[Node, list[bytes]]] = []
    while short:
        node_id = max(short, key=short.__getitem__)  # ties: the first met
        if short[node_id] == 0:
            break
        node, ks = candidates[node_id]
        useful = [k for k in ks if need[k] > 0]
        plan.append((node, useful))
        del short[node_id]
        for k in useful:
            need[k] -= 1
            if need[k] == 0:
                for other in by_key[k]:
                    if other in short:
                        short[other] -= 1
    return plan
