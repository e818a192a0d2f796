"""Property tests of the engine-partitioning algorithm on random DAGs (hypothesis).

The checks here are written independently of the module's own acyclicity check: a DFS over
the contracted graph, convexity by reachability, and pairwise-merge maximality.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from modelmint._optimize.partition import Partition, partition
from modelmint.errors import RepositoryError

Graph = tuple[list[int], dict[int, list[int]], set[int]]


@st.composite
def dags(draw: st.DrawFn) -> Graph:
    """Nodes 0..n-1 (shuffled order handed to partition), edges only from lower to higher ids,
    a random subset supported."""
    n = draw(st.integers(1, 24))
    inputs = {i: sorted(draw(st.sets(st.integers(0, i - 1), max_size=3)) if i else [])
              for i in range(n)}
    supported = draw(st.sets(st.integers(0, n - 1)))
    order = draw(st.permutations(range(n)))
    return list(order), inputs, set(supported)


def _contract(inputs: dict[int, list[int]], groups: list[list[int]]) -> dict[object, set[object]]:
    where: dict[int, object] = {v: ("g", i) for i, g in enumerate(groups) for v in g}
    out: dict[object, set[object]] = {}
    for v, ps in inputs.items():
        a = where.get(v, v)
        out.setdefault(a, set())
        out[a] |= {where.get(p, p) for p in ps} - {a}
    return out


def _has_cycle(edges: dict[object, set[object]]) -> bool:
    state: dict[object, int] = {}  # 1 on the DFS stack, 2 finished

    def visit(v: object) -> bool:
        state[v] = 1
        for p in edges.get(v, ()):
            if state.get(p) == 1 or (p not in state and visit(p)):
                return True
        state[v] = 2
        return False
    return any(v not in state and visit(v) for v in list(edges))


def _run(graph: Graph, min_size: int = 1) -> Partition[int]:
    order, inputs, supported = graph
    return partition(order, inputs, supported.__contains__, min_size)


@settings(max_examples=150, deadline=None)
@given(dags())
def test_contracting_the_groups_never_creates_a_cycle(graph: Graph) -> None:
    result = _run(graph)
    assert not _has_cycle(_contract(graph[1], result.groups))


@settings(max_examples=150, deadline=None)
@given(dags(), st.integers(1, 4))
def test_every_supported_node_is_in_exactly_one_group_or_dropped(graph: Graph,
                                                                 min_size: int) -> None:
    _, _, supported = graph
    result = _run(graph, min_size)
    placed = [v for g in result.groups + result.dropped for v in g]
    assert sorted(placed) == sorted(supported)  # no duplicates, nothing unsupported, none lost
    assert all(len(g) >= min_size for g in result.groups)
    assert all(len(g) < min_size for g in result.dropped)
    # Dropping is a filter on the same grouping, not a different partition.
    assert sorted(map(sorted, result.groups + result.dropped)) == sorted(
        map(sorted, _run(graph).groups))


@settings(max_examples=150, deadline=None)
@given(dags())
def test_no_two_groups_can_be_merged_without_a_cycle(graph: Graph) -> None:
    """Maximality: every group is as big as it can be, since merging any two groups (or, by
    the previous test, adding any left-out supported node: there is none) would make the
    contracted graph cyclic."""
    result = _run(graph)
    groups = result.groups
    for i in range(len(groups)):
        for j in range(i + 1, len(groups)):
            merged = [g for k, g in enumerate(groups) if k not in (i, j)]
            merged.append(groups[i] + groups[j])
            assert _has_cycle(_contract(graph[1], merged)), (i, j, groups)


@settings(max_examples=100, deadline=None)
@given(dags())
def test_groups_keep_topological_order(graph: Graph) -> None:
    """Each group lists its nodes so that a node comes after the group members it reads."""
    _, inputs, _ = graph
    for group in _run(graph).groups:
        seen: set[int] = set()
        members = set(group)
        for v in group:
            assert not (set(inputs[v]) & members) - seen
            seen.add(v)


def test_all_supported_chain_is_one_group_and_a_split_chain_two() -> None:
    chain = {0: [], 1: [0], 2: [1], 3: [2], 4: [3]}
    assert _run((list(chain), chain, {0, 1, 2, 3, 4})).groups == [[0, 1, 2, 3, 4]]
    result = _run((list(chain), chain, {0, 1, 3, 4}))
    assert result.groups == [[0, 1], [3, 4]]
    # A diamond whose one branch is unsupported: the join cannot be in the first group.
    diamond = {0: [], 1: [0], 2: [0], 3: [1, 2]}
    assert _run((list(diamond), diamond, {0, 1, 3})).groups == [[0, 1], [3]]
    assert _run((list(diamond), diamond, {0, 1, 3}), min_size=2).dropped == [[3]]


def test_a_cyclic_graph_is_refused() -> None:
    with pytest.raises(RepositoryError, match="cycle"):
        partition([0, 1], {0: [1], 1: [0]}, lambda _: True)
