"""A run's graph, checked before anything starts: step ids unique, dependencies that name steps
of the graph (not the step itself), no cycle. Pure functions over `(id, depends_on)` pairs."""

from __future__ import annotations

from collections.abc import Sequence

Node = tuple[str, Sequence[str]]


def graph_errors(nodes: Sequence[Node], noun: str = "step") -> list[str]:
    """Every problem with the graph, in words that name the steps (empty: it can run)."""
    errors: list[str] = []
    seen: set[str] = set()
    for ident, _ in nodes:
        if ident in seen:
            errors.append(f"{noun} id '{ident}' is used twice")
        seen.add(ident)
    for ident, depends_on in nodes:
        for dependency in depends_on:
            if dependency == ident:
                errors.append(f"{noun} '{ident}' depends on itself")
            elif dependency not in seen:
                errors.append(f"{noun} '{ident}' depends on '{dependency}', which is not a {noun}")
    if not errors:
        cycle = find_cycle(nodes)
        if cycle is not None:
            errors.append(f"{noun}s depend on each other in a cycle ({' -> '.join(cycle)})")
    return errors


def find_cycle(nodes: Sequence[Node]) -> list[str] | None:
    """A dependency cycle, as the path that closes it (`a -> b -> a`), if there is one."""
    graph = {ident: list(depends_on) for ident, depends_on in nodes}
    state: dict[str, int] = {}  # 1: on the path, 2: done
    for root in graph:
        if root in state:
            continue
        path: list[str] = [root]
        pending: list[list[str]] = [list(graph[root])]
        state[root] = 1
        while path:
            if not pending[-1]:
                state[path.pop()] = 2
                pending.pop()
                continue
            nxt = pending[-1].pop(0)
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and nxt in graph:
                state[nxt] = 1
                path.append(nxt)
                pending.append(list(graph[nxt]))
    return None


def ancestors(nodes: Sequence[Node]) -> dict[str, set[str]]:
    """Every step each step depends on, directly or through others (the graph is acyclic)."""
    graph = {ident: list(depends_on) for ident, depends_on in nodes}
    found: dict[str, set[str]] = {}

    def of(ident: str) -> set[str]:
        stack, result = list(graph.get(ident, [])), set()
        while stack:
            node = stack.pop()
            if node in result:
                continue
            result.add(node)
            stack.extend(found.get(node, graph.get(node, [])))
        return result

    for ident in graph:
        found[ident] = of(ident)
    return found
