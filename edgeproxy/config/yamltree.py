"""Bytes -> a small tree of YAML nodes that know their line, or the problems that stop it.

Why not ``yaml.compose`` (what the loader used until issue 10):
- PyYAML's composer recurses once per nesting level (thousands of ``[`` end in RecursionError) and
  follows aliases into cycles (``&a [*a]``); libyaml's recurses in C.
- It resolves YAML 1.1 implicit types (``1:30`` is 90, ``017`` is 15, ``off`` is false) before we
  can say anything about them. Here a plain scalar stays the text it was written as, and the
  loader decides per field what it means (config/loader.py): the rules are ours and documented.
- It would let an alias bomb (a billion laughs) reach code that walks the expanded tree.

So we read PyYAML's event stream, which both of its parsers produce the same way and without
recursion, and build the tree ourselves: iteratively, with a nesting limit, with aliases shared
(never copied) and their expansion bounded, and with tags checked, never constructed (nothing
is ever executed, whatever ``!!python/...`` says). The events come from libyaml when PyYAML has
it (a 1 MB file loads in 0.9 s, 4.8 s with the pure-Python parser, 9.6 s with yaml.compose:
benchmarks/config_reload.py), from the pure-Python parser otherwise. When libyaml refuses a file,
the pure-Python parser reads it again and its verdict is the one reported, so the messages do not
depend on how PyYAML was built.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import yaml
from yaml import events as ev

MAX_BYTES = 8 * 1024 * 1024  # bounds a reload's work: 1 MB takes ~1 s with libyaml
MAX_DEPTH = 64  # the schema needs 6 levels
MAX_ALIAS_EXTRA = 100_000  # values that aliases may add to what is written (a billion laughs needs 10^9)

# What a scalar is before a field reads it:
# - "plain": written without quotes or tag; its meaning is decided by the field (``off``, ``017``)
# - "str": quoted, a block scalar (| >), or tagged !!str or !
# - "int" | "float" | "bool" | "null": tagged so explicitly (``!!int 5``); the field checks it
ScalarKind = Literal["plain", "str", "int", "float", "bool", "null"]

_CORE = "tag:yaml.org,2002:"
_SCALAR_TAGS: dict[str, ScalarKind] = {
    "!": "str",
    _CORE + "str": "str",
    _CORE + "int": "int",
    _CORE + "float": "float",
    _CORE + "bool": "bool",
    _CORE + "null": "null",
}

# YAML's printable set (spec 5.1) less the tab: anything else in the stream is refused. YAML
# forbids tabs in indentation, and elsewhere libyaml and the pure-Python parser disagree about
# them (``key:<TAB>value``, ``0<TAB>0``: found by fuzz/harness_config.py), so one rule for both.
_NOT_PRINTABLE = re.compile("[^\x0a\x0d\x20-\x7e\x85\xa0-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
_LINE_BREAK = re.compile("\r\n|[\r\n\x85\u2028\u2029]")


@dataclass(slots=True)
class Scalar:
    value: str
    line: int
    kind: ScalarKind


@dataclass(slots=True)
class Seq:
    line: int
    items: list[Node] = field(default_factory=list)


@dataclass(slots=True)
class Map:
    line: int
    pairs: list[tuple[Node, Node]] = field(default_factory=list)


Node = Scalar | Seq | Map


@dataclass(frozen=True, slots=True)
class Problem:
    line: int
    message: str


class YamlError(Exception):
    """The file cannot be read as YAML at all (one problem, the first)."""

    def __init__(self, problem: Problem) -> None:
        self.problem = problem
        super().__init__(f"{problem.line}: {problem.message}")


@dataclass(slots=True)
class Tree:
    root: Node | None  # None: no document (an empty file, or only comments)
    problems: list[Problem]  # not fatal (an unsupported tag): the loader reports them with its own


def have_libyaml() -> bool:
    return getattr(yaml, "__with_libyaml__", False) and hasattr(yaml, "CSafeLoader")


def line_of(text: str, index: int) -> int:
    """1-based line of ``text[index]``, counting line breaks the way YAML does."""
    return 1 + sum(1 for _ in _LINE_BREAK.finditer(text, 0, index))


def show_char(ch: str) -> str:
    return f"U+{ord(ch):04X}"


def read_tree(raw: bytes, *, libyaml: bool | None = None) -> Tree:
    """Decode, check and parse ``raw``; raise ``YamlError`` when it is not YAML we can read."""
    if len(raw) > MAX_BYTES:
        raise YamlError(Problem(1, f"the file is larger than {MAX_BYTES} bytes (8 MiB): refused"))
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise YamlError(Problem(line, f"not UTF-8 text: byte 0x{raw[e.start]:02x} at offset {e.start}")) from None
    bad = _NOT_PRINTABLE.search(text)
    if bad is not None:
        ch = bad.group()
        if ch == "\t":
            what = "a tab: indent and separate with spaces"
        else:
            what = "a control character" if ord(ch) < 0xA0 else "not a character a YAML file may contain"
        raise YamlError(Problem(line_of(text, bad.start()), f"{show_char(ch)} ({what}) at offset {bad.start()}"))
    if have_libyaml() and libyaml is not False:
        try:
            return _Composer(yaml.CSafeLoader, text).run()
        except YamlError:
            pass  # the pure-Python parser's verdict is the reference (see the module doc)
    return _Composer(yaml.SafeLoader, text).run()


class _Frame:
    __slots__ = ("anchor", "key", "node", "size")

    def __init__(self, node: Seq | Map, anchor: str | None) -> None:
        self.node = node
        self.anchor = anchor
        self.key: Node | None = None  # a mapping's key waiting for its value
        self.size = 1  # values in this node with its aliases expanded


class _Composer:
    def __init__(self, parser: type[yaml.SafeLoader] | type[yaml.CSafeLoader], text: str) -> None:
        self.parser_class = parser
        self.text = text
        self.anchors: dict[str, tuple[Node, int]] = {}  # node and its expanded size
        self.stack: list[_Frame] = []
        self.problems: list[Problem] = []
        self.alias_extra = 0
        self.root: Node | None = None

    def run(self) -> Tree:
        parser = None
        try:
            parser = self.parser_class(self.text)
            self._events(parser.get_event)
        except yaml.MarkedYAMLError as e:
            mark = e.problem_mark or e.context_mark
            line = mark.line + 1 if mark is not None else 1
            raise YamlError(Problem(line, f"YAML syntax error: {e.problem or e.context or 'invalid'}")) from None
        except yaml.YAMLError as e:  # ReaderError (cannot happen after our printable check) and others
            raise YamlError(Problem(1, f"YAML error: {e}")) from None
        finally:
            if parser is not None:
                parser.dispose()
        return Tree(self.root, self.problems)

    def _events(self, get: Callable[[], ev.Event | None]) -> None:
        documents = 0
        while True:
            event = get()
            if event is None:  # past the end (cannot happen: we stop at StreamEnd)
                return
            line = event.start_mark.line + 1 if event.start_mark is not None else 1
            if isinstance(event, ev.ScalarEvent):
                tag = event.tag
                if tag is None:
                    kind: ScalarKind = "plain" if event.style in (None, "") else "str"
                else:
                    kind = _SCALAR_TAGS.get(tag, "str")
                    if tag not in _SCALAR_TAGS:
                        self._unsupported_tag(tag, line)
                self._add(Scalar(event.value, line, kind), 1, event.anchor, line)
            elif isinstance(event, ev.CollectionStartEvent):
                is_map = isinstance(event, ev.MappingStartEvent)
                if event.tag not in (None, "!", _CORE + ("map" if is_map else "seq")):
                    self._unsupported_tag(event.tag, line)
                if len(self.stack) >= MAX_DEPTH:
                    raise YamlError(Problem(line, f"nested more than {MAX_DEPTH} levels deep"))
                self.stack.append(_Frame(Map(line) if is_map else Seq(line), event.anchor))
            elif isinstance(event, ev.CollectionEndEvent):
                frame = self.stack.pop()
                self._add(frame.node, frame.size, frame.anchor, frame.node.line)
            elif isinstance(event, ev.AliasEvent):
                self._alias(event.anchor or "", line)
            elif isinstance(event, ev.DocumentStartEvent):
                documents += 1
                if documents > 1:
                    raise YamlError(Problem(line, "a second YAML document (---): the file must hold one"))
            elif isinstance(event, ev.StreamEndEvent):
                return
            # StreamStart, DocumentEnd: nothing to do

    def _alias(self, anchor: str, line: int) -> None:
        """An alias shares its node (never a copy); what it would expand to is counted."""
        target = self.anchors.get(anchor)
        if target is None:
            what = f"alias *{anchor[:80]}"
            raise YamlError(Problem(line, f"{what} is not defined before this point (or contains itself)"))
        node, size = target
        self.alias_extra += size
        if self.alias_extra > MAX_ALIAS_EXTRA:
            raise YamlError(Problem(line, f"aliases expand to more than {MAX_ALIAS_EXTRA} values (an alias bomb?)"))
        self._add(node, size, None, line)

    def _unsupported_tag(self, tag: str, line: int) -> None:
        shown = "!!" + tag.removeprefix(_CORE) if tag.startswith(_CORE) else tag
        self.problems.append(
            Problem(line, f"tag {shown[:80]} is not supported: values are plain YAML (tags are never executed)")
        )

    def _add(self, node: Node, size: int, anchor: str | None, line: int) -> None:
        if anchor is not None:
            self.anchors[anchor] = (node, size)  # redefining an anchor is allowed (YAML 1.2)
        if not self.stack:
            self.root = node
            return
        top = self.stack[-1]
        top.size += size
        parent = top.node
        if isinstance(parent, Seq):
            parent.items.append(node)
        elif top.key is None:
            # A key must be a name: a collection there is an error the loader reports at this
            # line, without a look inside (it may be an alias to a bomb).
            top.key = node if isinstance(node, Scalar) else type(node)(line)
        else:
            parent.pairs.append((top.key, node))
            top.key = None
