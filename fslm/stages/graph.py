"""The stage graph: which stage reads which, in what order stages run, and when a conditional stage can run.

Pure functions over (name, sees) pairs, so the config validator and the scheduler share one definition. A stage may
see any other stage (not only earlier ones) as long as there is no cycle.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

PROMPT = "prompt"
CASES = ("has_options", "no_options")  # the two kinds of prompt a `when:` condition tells apart


def find_cycle(sees: Mapping[str, Sequence[str]]) -> list[str] | None:
    """One cycle as a path of names (first == last), or None. `sees` maps each stage to the names it reads;
    'prompt' and unknown names are ignored (they are reported elsewhere)."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    for start in sees:
        if state.get(start):
            continue
        path: list[str] = []
        stack: list[tuple[str, int]] = [(start, 0)]
        while stack:  # iterative DFS: a 10k-stage chain must not hit the recursion limit
            node, i = stack.pop()
            if i == 0:
                state[node] = 1
                path.append(node)
            deps = [d for d in sees.get(node, ()) if d in sees]
            if i < len(deps):
                stack.append((node, i + 1))
                dep = deps[i]
                if state.get(dep) == 1:
                    return path[path.index(dep) :] + [dep]
                if not state.get(dep):
                    stack.append((dep, 0))
            else:
                state[node] = 2
                path.pop()
    return None


def topological_order(names: Sequence[str], sees: Mapping[str, Sequence[str]]) -> list[str]:
    """The trace order: the list order when it is already a valid order, else the stable topological order (at
    each step the earliest-listed stage whose inputs exist). Assumes no cycle (`find_cycle` first)."""
    done: set[str] = set()
    order: list[str] = []
    left = list(names)
    while left:
        for k, name in enumerate(left):
            if all(d in done or d not in sees for d in sees.get(name, ())):
                order.append(name)
                done.add(name)
                del left[k]
                break
        else:
            raise ValueError(f"the stages {left} see each other in a cycle")
    return order


def waves(order: Sequence[str], sees: Mapping[str, Sequence[str]]) -> list[list[str]]:
    """Stages grouped by depth (a stage runs one wave after the deepest stage it sees), each wave in trace order:
    the stages of one wave need nothing from each other, so they can run side by side."""
    depth: dict[str, int] = {}
    for name in order:
        depth[name] = 1 + max((depth[d] for d in sees.get(name, ()) if d in depth), default=-1)
    out: list[list[str]] = [[] for _ in range(max(depth.values(), default=-1) + 1)]
    for name in order:
        out[depth[name]].append(name)
    return out


def ancestors(name: str, sees: Mapping[str, Sequence[str]]) -> set[str]:
    """Every stage whose text reaches `name`, directly or through others."""
    found: set[str] = set()
    todo = [d for d in sees.get(name, ()) if d in sees]
    while todo:
        dep = todo.pop()
        if dep not in found:
            found.add(dep)
            todo.extend(d for d in sees.get(dep, ()) if d in sees)
    return found


def run_cases(
    order: Sequence[str], sees: Mapping[str, Sequence[str]], when: Mapping[str, str | None]
) -> dict[str, frozenset[str]]:
    """For each stage, the kinds of prompt (CASES) it runs on: its own `when:` and that of every stage it sees,
    since a stage that sees a skipped stage is skipped too."""
    cases: dict[str, frozenset[str]] = {}
    for name in order:
        mine = frozenset(CASES) if when.get(name) is None else frozenset({when[name]})  # type: ignore[arg-type]
        for dep in sees.get(name, ()):
            if dep in cases:
                mine &= cases[dep]
        cases[name] = mine
    return cases


def conditional_stages(order: Sequence[str], sees: Mapping[str, Sequence[str]], conditional: set[str]) -> set[str]:
    """The stages that may not run on a prompt for a reason known only at run time (a confidence condition): those
    in `conditional` and every stage that depends on one of them."""
    maybe: set[str] = set()
    for name in order:
        if name in conditional or any(d in maybe for d in sees.get(name, ())):
            maybe.add(name)
    return maybe
