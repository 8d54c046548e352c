"""How many parse stacks llama.cpp's grammar engine may keep for a grammar, estimated before it is built.

llama.cpp keeps one parse stack per way the output so far can be parsed, with no cap: building a grammar opens a
stack per way its root can begin (and compares each with all the others), and each token costs a pass per stack
(over the whole vocabulary when the model's pick is refused). Two numbers bound that, from the rule graph:

- ways to begin: the stacks entering a rule opens at once (a rule whose alternatives each begin with the same
  two-way rule begins in twice its ways; stacked k deep, 2^k). Exact, as llama.cpp counts them.
- ways at once: how many stacks can be live together while a text is read. Alternatives add up (those that begin
  with different characters are never read together, and count apart); a sequence adds
  up from its first part of variable length on (before it, one part is read at a time); a bounded repetition of a
  part of variable length multiplies by its count (each copy is a distinct stack, and where one copy ends is
  ambiguous), as `((a|aa){1,9}){1,9}` does; an unbounded one (`*`, `+`) does not, since llama.cpp reads it as one
  rule calling itself last. An upper bound: a grammar whose parts are delimited may count more than it keeps.

Recursive rules (a rule that reaches itself) cannot be bounded this way: within a recursion a rule counts as its
ways to begin, and the scheduler's per-token time limit (server/engine/grammar_guard.py) is what stops the rest.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

from server.generation.grammar_reader import Alternatives, Item, Terminal, read_grammar

SATURATED = 1 << 62  # counts stop growing here: far past any bound, and no huge integers


@dataclass(frozen=True)
class Ways:
    begin: int  # the most ways any one rule can begin
    begin_rule: str  # that rule
    at_once: int  # ways the root can be parsed at once
    at_once_rule: str  # the smallest rule already past `limit` (the culprit to name), else the root


def grammar_ways(text: str, root: str = "root", limit: int = SATURATED) -> Ways:
    """The ways of a GBNF grammar (already checked for syntax); `limit` only picks which rule `at_once_rule` names."""
    return _Counter(read_grammar(text)).ways(root, limit)


def expression_ways(expression: str, rules: Mapping[str, str]) -> int:
    """Ways at once of a GBNF expression whose helper rules are `rules` (name -> body)."""
    text = f"expression-root ::= {expression}\n" + "".join(f"{name} ::= {body}\n" for name, body in rules.items())
    return grammar_ways(text, "expression-root").at_once


@dataclass(frozen=True)
class _Stats:
    ways: int  # at once
    length: int | None  # characters of every text it matches, when that is one number


class _Counter:
    def __init__(self, rules: dict[str, Alternatives]) -> None:
        self.rules = rules
        self.nullable = self._nullable()
        self.begin: dict[str, int] = {}
        self.first: dict[str, frozenset[int] | None] = {}
        self.stats: dict[str, _Stats] = {}
        self.component: dict[str, int] = {}
        # Of each group (by identity), once the rules it uses are known: groups nest, and each level asks again.
        self._group_skip: dict[int, bool] = {}
        self._group_begin: dict[int, int] = {}
        self._group_first: dict[int, frozenset[int] | None] = {}

    def ways(self, root: str, limit: int) -> Ways:
        # Ways to begin (and first characters) follow only the rules an alternative can begin with: that graph has
        # no cycle unless the grammar is left-recursive (which llama.cpp refuses); there a back edge counts as one
        # way, beginning with any character.
        for component in _components({name: set(self._leading(alts)) for name, alts in self.rules.items()}):
            for name in component:
                self.begin[name] = self._begin(self.rules[name])
                self.first[name] = self._first(self.rules[name])
        for i, component in enumerate(_components({name: set(_refs(alts)) for name, alts in self.rules.items()})):
            for name in component:
                self.component[name] = i
            for name in component:
                self.stats[name] = self._alternatives(self.rules[name], i)
        begin_rule = max(self.begin, key=self.begin.__getitem__, default=root)
        past = [name for name, stats in self.stats.items() if stats.ways > limit]
        return Ways(
            begin=self.begin.get(begin_rule, 0),
            begin_rule=begin_rule,
            at_once=self.stats[root].ways if root in self.stats else 0,
            at_once_rule=min(past, key=lambda name: self.stats[name].ways) if past else root,
        )

    # -- nullable: a least fixpoint over the rules ----------------------------------------------------------
    def _nullable(self) -> dict[str, bool]:
        nullable = dict.fromkeys(self.rules, False)
        changed = True
        while changed:
            changed = False
            for name, alts in self.rules.items():
                if not nullable[name] and any(all(self._can_skip(i, nullable) for i in seq) for seq in alts):
                    nullable[name] = changed = True
        return nullable

    def _can_skip(self, item: Item, nullable: dict[str, bool] | None = None) -> bool:
        """Whether the item can match nothing."""
        atom, low, _ = item
        if low == 0:
            return True
        if isinstance(atom, Terminal):
            return atom.length == 0
        if isinstance(atom, str):
            return (self.nullable if nullable is None else nullable).get(atom, False)
        if nullable is not None:  # still finding which rules can match nothing
            return any(all(self._can_skip(i, nullable) for i in seq) for seq in atom)
        if id(atom) not in self._group_skip:
            self._group_skip[id(atom)] = any(all(self._can_skip(i) for i in seq) for seq in atom)
        return self._group_skip[id(atom)]

    # -- how a text begins ------------------------------------------------------------------------------------
    def _leading(self, alts: Alternatives) -> Iterator[str]:
        """The rules an alternative can begin with."""
        for seq in alts:
            for item in seq:
                atom, _, high = item
                if high != 0:
                    if isinstance(atom, str):
                        yield atom
                    elif isinstance(atom, list):
                        yield from self._leading(atom)
                if not self._can_skip(item):
                    break

    def _begin(self, alts: Alternatives) -> int:
        total = 0
        for seq in alts:
            for item in seq:
                total = _add(total, self._begin_item(item))
                if not self._can_skip(item):
                    break
        return total

    def _begin_item(self, item: Item) -> int:
        atom, low, high = item
        if high == 0:
            return 0
        if isinstance(atom, Terminal):
            one = 0 if atom.length == 0 else 1
        elif isinstance(atom, str):
            one = self.begin.get(atom, 1)  # not counted yet: a left-recursive cycle
        else:
            if id(atom) not in self._group_begin:
                self._group_begin[id(atom)] = self._begin(atom)
            one = self._group_begin[id(atom)]
        # Copies of a part that can match nothing all begin at once.
        return _mul(one, _copies(low, high)) if self._can_skip((atom, 1, 1)) else one

    def _first(self, alts: Alternatives) -> frozenset[int] | None:
        """The characters a text of these alternatives can begin with; None: any."""
        out: set[int] = set()
        for seq in alts:
            for item in seq:
                atom, _, high = item
                if high != 0:
                    if isinstance(atom, Terminal):
                        chars = atom.first
                    elif isinstance(atom, str):
                        chars = self.first.get(atom)  # not known yet (left recursion): any
                    else:
                        if id(atom) not in self._group_first:
                            self._group_first[id(atom)] = self._first(atom)
                        chars = self._group_first[id(atom)]
                    if chars is None:
                        return None
                    out |= chars
                if not self._can_skip(item):
                    break
        return frozenset(out)

    # -- ways at once -----------------------------------------------------------------------------------------
    def _alternatives(self, alts: Alternatives, component: int) -> _Stats:
        options = [self._sequence(seq, component) for seq in alts]
        lengths = {stats.length for stats in options}
        length = lengths.pop() if len(lengths) == 1 else None
        if len(options) == 1:
            return _Stats(ways=options[0].ways, length=length)
        # Once a character is read, only the alternatives that can begin with it are left: those that begin
        # differently are never parsed together (before that, each is as many stacks as it begins with).
        groups: list[tuple[frozenset[int] | None, int]] = []
        for seq, stats in zip(alts, options, strict=True):
            chars, ways = self._first([seq]), stats.ways
            apart = []
            for group_chars, group_ways in groups:
                if _overlap(chars, group_chars):
                    chars = None if chars is None or group_chars is None else chars | group_chars
                    ways = _add(ways, group_ways)
                else:
                    apart.append((group_chars, group_ways))
            groups = [*apart, (chars, ways)]
        return _Stats(ways=max(self._begin(alts), max(ways for _, ways in groups)), length=length)

    def _sequence(self, seq: list[Item], component: int) -> _Stats:
        first, rest = 0, 0
        length: int | None = 0
        variable = False
        for item in seq:
            stats = self._item(item, component)
            variable = variable or stats.length is None
            if variable:
                rest = _add(rest, stats.ways)
            else:
                first = max(first, stats.ways)  # a fixed part at a time, before anything of variable length
            length = None if length is None or stats.length is None else length + stats.length
        return _Stats(ways=max(first, rest), length=length)

    def _item(self, item: Item, component: int) -> _Stats:
        atom, low, high = item
        if high == 0:
            return _Stats(ways=0, length=0)
        if isinstance(atom, Terminal):
            one = _Stats(ways=0 if atom.length == 0 else 1, length=atom.length)
        elif isinstance(atom, str):
            if self.component.get(atom) == component and atom not in self.stats:  # recursion: unbounded
                one = _Stats(ways=self.begin.get(atom, 1), length=None)
            else:
                one = self.stats.get(atom, _Stats(ways=1, length=None))
        else:
            one = self._alternatives(atom, component)
        if (low, high) == (1, 1):
            return one
        if one.length is not None and one.length > 0:  # fixed length: one copy is read at a time
            return _Stats(ways=one.ways, length=one.length * low if low == high else None)
        return _Stats(ways=_mul(one.ways, _copies(low, high)), length=0 if one.length == 0 else None)


def _overlap(a: frozenset[int] | None, b: frozenset[int] | None) -> bool:
    if a is None:
        return b is None or bool(b)
    return bool(a) if b is None else not a.isdisjoint(b)


def _copies(low: int, high: int | None) -> int:
    """Copies of a repeated part in llama.cpp's expansion: the required ones, then one per optional count (a
    single self-calling rule for no maximum)."""
    return low + 1 if high is None else max(high, 1)


def _refs(alts: Alternatives) -> Iterator[str]:
    for seq in alts:
        for atom, _, _ in seq:
            if isinstance(atom, str):
                yield atom
            elif isinstance(atom, list):
                yield from _refs(atom)


def _components(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components, callees before callers (Tarjan's algorithm, without recursion)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(graph[start]))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, edges = work[-1]
            advanced = False
            for nxt in edges:
                if nxt not in graph:
                    continue
                if nxt not in index:
                    index[nxt] = low[nxt] = len(index)
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(graph[nxt])))
                    advanced = True
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            if advanced:
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                found.append(component)
    return found


def _add(a: int, b: int) -> int:
    return min(a + b, SATURATED)


def _mul(a: int, b: int) -> int:
    return min(a * b, SATURATED)


def _sum(values: Iterable[int]) -> int:
    total = 0
    for value in values:
        total = _add(total, value)
    return total
