"""Engine partitioning: group the nodes an engine supports into subgraphs it can run whole.

Given a DAG (any graph: a ``torch.fx`` graph, an exported program's graph, or a plain adjacency
list in the tests) and a predicate saying which nodes the engine supports, :func:`partition`
returns groups of supported nodes such that replacing each group by one node keeps the graph
acyclic, and drops groups smaller than ``min_size`` (a tiny subgraph costs more in tensor
hand-over between the engines than it saves).

The algorithm is ONNX Runtime's wave-based grouping (``CreateSupportedPartitions`` in
``onnxruntime/core/providers/partitioning_utils.cc``): walk the graph in topological order; a
ready supported node joins the current group unless one of its inputs is an outside node that
itself depends on the group (joining would then create a cycle group → outside → group); such a
node waits for the next wave. When nothing more is ready the group closes and the waiting nodes
start the next one. Every group closes before any later group's node is visited, so a path can
only lead from an earlier group to a later one: the contracted graph is acyclic by construction,
and :func:`check_acyclic` re-checks it anyway after the merge (cheap, and it guards the
torch.fx adapter's dependency edges as well).

Hand-written rather than ``torch.fx.passes.infra.partitioner.CapabilityBasedPartitioner``
because the same code must group plain DAGs for the property tests, report what it dropped, and
drop small groups; torch's partitioner does none of that and merges pairwise (quadratic).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from ..errors import RepositoryError

N = TypeVar("N", bound=Hashable)


@dataclass
class Partition(Generic[N]):
    groups: list[list[N]]  # each in topological order; groups in the order they closed
    dropped: list[list[N]] = field(default_factory=list)  # supported, but below min_size

    def group_of(self) -> dict[N, int]:
        return {n: i for i, g in enumerate(self.groups) for n in g}


def partition(nodes: Sequence[N], inputs: Mapping[N, Iterable[N]],
              supported: Callable[[N], bool], min_size: int = 1) -> Partition[N]:
    """Group the supported ``nodes`` (``inputs[n]``: the nodes ``n`` reads; any order of
    ``nodes``, the graph must be a DAG) into maximal subgraphs whose contraction is acyclic."""
    preds = {n: list(dict.fromkeys(inputs.get(n, ()))) for n in nodes}
    users: dict[N, list[N]] = {n: [] for n in nodes}
    for n, ps in preds.items():
        for p in ps:
            if p not in users:
                raise ValueError(f"node {n!r} reads {p!r}, which is not in the graph")
            users[p].append(n)
    waiting = {n: len(ps) for n, ps in preds.items()}
    order = {n: i for i, n in enumerate(nodes)}  # stable tie-break: the caller's order
    ready = deque(n for n in nodes if waiting[n] == 0)
    groups: list[list[N]] = []
    visited = 0
    while ready:
        group: set[N] = set()
        members: list[N] = []
        # reaches[n]: n depends on the open group (is in it, or reads from something that is).
        reaches: dict[N, bool] = {}
        next_wave: list[N] = []
        while ready:
            n = ready.popleft()
            if supported(n):
                if any(p not in group and reaches.get(p, False) for p in preds[n]):
                    next_wave.append(n)  # joining now would close a cycle through p
                    continue
                group.add(n)
                members.append(n)
                reaches[n] = True
            else:
                reaches[n] = any(reaches.get(p, False) for p in preds[n])
            visited += 1
            for u in users[n]:
                waiting[u] -= 1
                if waiting[u] == 0:
                    ready.append(u)
        if members:
            groups.append(members)
        ready.extend(sorted(next_wave, key=order.__getitem__))
    if visited != len(nodes):
        raise RepositoryError("the graph has a cycle; it cannot be partitioned")
    kept = [g for g in groups if len(g) >= min_size]
    dropped = [g for g in groups if len(g) < min_size]
    result = Partition(kept, dropped)
    check_acyclic(nodes, preds, result.groups)
    return result


def contracted_edges(nodes: Sequence[N], inputs: Mapping[N, Iterable[N]],
                     groups: Sequence[Sequence[N]]) -> dict[object, set[object]]:
    """The graph with every group replaced by one node ``("group", i)``: node → its inputs."""
    where: dict[N, object] = {n: ("group", i) for i, g in enumerate(groups) for n in g}
    edges: dict[object, set[object]] = {}
    for n in nodes:
        a = where.get(n, n)
        edges.setdefault(a, set())
        for p in inputs.get(n, ()):
            b = where.get(p, p)
            if a != b:
                edges[a].add(b)
    return edges


def is_acyclic(edges: Mapping[object, set[object]]) -> bool:
    """Kahn's algorithm on ``node → inputs``."""
    waiting = {n: len(ps) for n, ps in edges.items()}
    users: dict[object, list[object]] = {n: [] for n in edges}
    for n, ps in edges.items():
        for p in ps:
            users.setdefault(p, []).append(n)
            waiting.setdefault(p, 0)
    ready = [n for n, k in waiting.items() if k == 0]
    seen = 0
    while ready:
        n = ready.pop()
        seen += 1
        for u in users.get(n, ()):
            waiting[u] -= 1
            if waiting[u] == 0:
                ready.append(u)
    return seen == len(waiting)


def check_acyclic(nodes: Sequence[N], inputs: Mapping[N, Iterable[N]],
                  groups: Sequence[Sequence[N]]) -> None:
    if not is_acyclic(contracted_edges(nodes, inputs, groups)):
        raise RepositoryError("internal error: contracting the engine groups created a cycle")
