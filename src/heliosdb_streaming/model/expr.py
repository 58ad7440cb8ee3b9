r"""A small, safe expression language for filters, maps and keys, compiled once to Python closures.

User text is never handed to ``eval``/``exec``/``compile``: a hand-written tokenizer and recursive-descent
parser build a small tree, which is compiled to nested closures (with constant folding and specialised
closures for the hot ``field <op> constant`` shapes). Evaluating a record is then plain function calls.

Syntax (keywords and function names are case-insensitive)::

    literals     42  1.5  1e3  'text'  "text"  true  false  null
    fields       amount  payload.user.id  `my field`  items[0]  meta['k']
    logic        a or b   a and b   not a          (aliases: ||  &&  !)
    comparison   == != < <= > >=  (= is ==, <> is !=)   x is [not] null
                 x [not] in (1, 2, 3)   x [not] in [1, 2]   x [not] like 'ab%_'
    arithmetic   + - * / %  unary -   ( ... )
    functions    lower upper length|len trim substr concat contains starts_with ends_with abs round
                 floor ceil coalesce to_number to_string if min max

Precedence, loosest first: ``or``, ``and``, ``not``, comparisons (not chainable), ``+ -``, ``* / %``,
unary ``-``, field access/indexing.

Semantics (decisions a user may trip over):

* A missing field, a missing intermediate object, a non-object intermediate and an out-of-range index
  all give ``null``; field access never fails. ``a.b`` reads nested objects, it never reads a key named
  ``"a.b"`` (write `` `a.b` `` for that). Negative list indexes count from the end.
* Two-valued logic: ``null`` is falsy. ``<  <= > >=`` and ``like`` with a ``null`` side are false
  (also under ``not like``); ``==``/``!=`` compare ``null`` like any value, so ``x == null`` works and
  ``x != 'a'`` is true for a missing ``x``. ``x in (...)`` means ``x == a or x == b ...`` (so
  ``null not in (1, 2)`` is true). ``not``, ``and``, ``or`` use truthiness (``0``, ``''`` are falsy)
  and always give a boolean.
* Booleans are *not* numbers: ``true + 1``, ``true < 2`` raise, and ``true == 1`` is false.
* Ordering a number against a string (or anything but number/number, string/string) raises
  :class:`EvaluationError`; equality across types is simply false.
* Arithmetic with a ``null`` operand gives ``null``. ``/`` is true division (``7 / 2 == 3.5``), ``%``
  takes the sign of the divisor (Python), division by zero raises. ``+`` also joins two strings.
* ``like`` is case-sensitive SQL LIKE: ``%`` any run, ``_`` one character, backslash escapes the next
  character. It is matched without backtracking, so no pattern can be slow.
* String escapes: ``\n \t \r \b \f \0 \\ \' \" \/ \uXXXX``; any other backslash is kept as is
  (so ``'100\%'`` reaches ``like`` as ``100\%``).
* Functions return ``null`` for a ``null`` argument (except ``coalesce`` and ``if``, which are lazy).
  ``substr(s, start[, len])`` is 0-based like indexing (negative start counts from the end);
  ``round`` rounds half away from zero on the decimal value you see (``round(2.675, 2) == 2.68``) and
  gives an integer without ``n``; ``to_number`` accepts only decimal number text and raises otherwise.
"""

from __future__ import annotations

import dataclasses
import json
import math
import operator
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Context, Decimal
from functools import lru_cache
from typing import Any, NoReturn

Record = dict[str, Any]
Evaluator = Callable[[Record], Any]

__all__ = [
    "EvaluationError",
    "ExpressionError",
    "compile_condition",
    "compile_expression",
    "expression_cost",
    "field_names",
    "validate_expression",
]

# Bounds that keep the recursive parser, compiler and the nested closures well inside Python's stack.
_MAX_NESTING = 40
_MAX_DEPTH = 200
# Bounds on size and on work per record, checked while parsing so that an oversized text is refused
# after reading at most this much of it. Each node (a path part counts as one) is evaluated at most
# once per record, so MAX_NODES also bounds the work an expression does per record.
MAX_EXPRESSION_CHARS = 65_536
MAX_NODES = 20_000
MAX_IN_ITEMS = 10_000
MAX_ARGUMENTS = 100
_MAX_SNIPPET = 120  # characters of the expression quoted in evaluation errors
_MISSING: Any = object()


class ExpressionError(ValueError):
    """A compile-time problem in the expression text (syntax, unknown function, arity)."""

    def __init__(self, message: str, position: int) -> None:
        super().__init__(f"{message} at position {position}")
        self.message = message
        self.position = position

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.message, self.position))


class EvaluationError(Exception):
    """A record's values do not fit the expression (wrong type, division by zero)."""


# ------------------------------------------------------------------------------------------ values


def _is_num(v: Any) -> bool:
    return (v.__class__ is int or v.__class__ is float) or (
        isinstance(v, int | float) and not isinstance(v, bool)
    )


def _describe(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if _is_num(v):
        return f"number {v!r}"
    if isinstance(v, str):
        text = repr(v)
        return f"string {text if len(text) <= 40 else text[:37] + '...'}"
    if isinstance(v, list | tuple):
        return "a list"
    if isinstance(v, dict):
        return "an object"
    return f"a {type(v).__name__}"


def _eq(a: Any, b: Any) -> bool:
    """Equality where a boolean never equals a number."""
    return bool(a == b) and (a.__class__ is bool) is (b.__class__ is bool)


def _index(container: Any, key: Any) -> Any:
    if isinstance(container, dict):
        try:
            return container.get(key)
        except TypeError:  # unhashable key
            return None
    if isinstance(container, list | tuple) and isinstance(key, int) and not isinstance(key, bool):
        try:
            return container[key]
        except IndexError:
            return None
    return None


def _to_string(v: Any) -> str:
    if isinstance(v, str):
        return v
    if isinstance(v, bool):
        return "true" if v else "false"
    if v is None:
        return "null"
    if _is_num(v):
        return repr(v)
    return json.dumps(v, separators=(",", ":"), ensure_ascii=False, default=str)


# ------------------------------------------------------------------------------------------ tokens

_KEYWORDS = frozenset({"and", "or", "not", "in", "is", "null", "true", "false", "like"})
_OPERATORS = ("==", "!=", "<>", "<=", ">=", "&&", "||", "=", "<", ">", "+", "-", "*", "/", "%", "!")
_PUNCT = "()[],."
_OP_ALIASES = {"=": "==", "<>": "!=", "&&": "and", "||": "or", "!": "not"}
_ESCAPES = {
    "n": "\n",
    "t": "\t",
    "r": "\r",
    "b": "\b",
    "f": "\f",
    "0": "\0",
    "\\": "\\",
    "'": "'",
    '"': '"',
    "/": "/",
}
_NUMBER_RE = re.compile(r"[0-9]+(\.[0-9]+)?([eE][+-]?[0-9]+)?")
_SPACES_RE = re.compile(r"\s+")


@dataclass(frozen=True, slots=True)
class _Token:
    kind: str  # num, str, name, qname, kw, op, eof
    value: Any
    start: int
    end: int


def _tokenize(text: str) -> list[_Token]:
    tokens: list[_Token] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch.isspace():
            spaces = _SPACES_RE.match(text, i)  # a run of blanks in one step, not a char at a time
            i = spaces.end() if spaces else i + 1
        elif ch in "0123456789":
            m = _NUMBER_RE.match(text, i)
            assert m is not None
            end = m.end()
            if end < n and text[end] in "eE" and not m.group(2):
                raise ExpressionError("invalid number", i)
            raw = m.group(0)
            value: Any = float(raw) if (m.group(1) or m.group(2)) else int(raw)
            tokens.append(_Token("num", value, i, end))
            i = end
        elif ch in "'\"":
            value, end = _read_string(text, i)
            tokens.append(_Token("str", value, i, end))
            i = end
        elif ch == "`":
            j, parts = i + 1, []
            while True:
                k = text.find("`", j)
                if k < 0:
                    raise ExpressionError("unterminated quoted name", i)
                parts.append(text[j:k])
                if text.startswith("`", k + 1):  # `` inside a quoted name is one backquote
                    parts.append("`")
                    j = k + 2
                    continue
                break
            tokens.append(_Token("qname", "".join(parts), i, k + 1))
            i = k + 1
        elif ch.isalpha() or ch == "_":
            j = i + 1
            while j < n and (text[j].isalnum() or text[j] == "_"):
                j += 1
            word = text[i:j]
            if word.lower() in _KEYWORDS:
                tokens.append(_Token("kw", word.lower(), i, j))
            else:
                tokens.append(_Token("name", word, i, j))
            i = j
        elif ch in _PUNCT:
            tokens.append(_Token("op", ch, i, i + 1))
            i += 1
        else:
            for op in _OPERATORS:
                if text.startswith(op, i):
                    alias = _OP_ALIASES.get(op, op)
                    kind = "kw" if alias in _KEYWORDS else "op"
                    tokens.append(_Token(kind, alias, i, i + len(op)))
                    i += len(op)
                    break
            else:
                raise ExpressionError(f"unexpected character {ch!r}", i)
    tokens.append(_Token("eof", None, n, n))
    return tokens


def _read_string(text: str, start: int) -> tuple[str, int]:
    quote, i, n = text[start], start + 1, len(text)
    out: list[str] = []
    while i < n:
        ch = text[i]
        if ch == quote:
            return "".join(out), i + 1
        if ch == "\\" and i + 1 < n:
            nxt = text[i + 1]
            if nxt == "u":
                digits = text[i + 2 : i + 6]
                if len(digits) != 4 or not all(c in "0123456789abcdefABCDEF" for c in digits):
                    raise ExpressionError("invalid \\u escape, expected 4 hex digits", i)
                out.append(chr(int(digits, 16)))
                i += 6
                continue
            out.append(_ESCAPES.get(nxt, "\\" + nxt))
            i += 2
            continue
        out.append(ch)
        i += 1
    raise ExpressionError("unterminated string", start)


# ------------------------------------------------------------------------------------------ tree


@dataclass(frozen=True, slots=True)
class _Node:
    """kind: lit, path, index, neg, not, arith, cmp, and, or, in, isnull, like, call."""

    kind: str
    start: int
    end: int
    value: Any = None  # lit: the value; path: tuple of parts; arith/cmp: op; in/isnull/like: negated
    children: tuple[_Node, ...] = ()
    depth: int = field(default=1, compare=False)


def _node(kind: str, start: int, end: int, value: Any = None, children: tuple[_Node, ...] = ()) -> _Node:
    depth = 1 + max((c.depth for c in children), default=0)
    if depth > _MAX_DEPTH:
        raise ExpressionError("expression is too deeply nested", start)
    return _Node(kind, start, end, value, children, depth)


# name -> (min args, max args or None for any)
_ARITY: dict[str, tuple[int, int | None]] = {
    "lower": (1, 1),
    "upper": (1, 1),
    "length": (1, 1),
    "len": (1, 1),
    "trim": (1, 1),
    "substr": (2, 3),
    "concat": (1, None),
    "contains": (2, 2),
    "starts_with": (2, 2),
    "ends_with": (2, 2),
    "abs": (1, 1),
    "round": (1, 2),
    "floor": (1, 1),
    "ceil": (1, 1),
    "coalesce": (1, None),
    "to_number": (1, 1),
    "to_string": (1, 1),
    "if": (3, 3),
    "min": (1, None),
    "max": (1, None),
}
_CMP_OPS = frozenset({"==", "!=", "<", "<=", ">", ">="})


class _Parser:
    def __init__(self, text: str, *, limits: bool = True) -> None:
        self.text = text
        self.limits = limits
        if limits and len(text) > MAX_EXPRESSION_CHARS:
            raise ExpressionError(
                f"expression is too long: {len(text)} characters, at most {MAX_EXPRESSION_CHARS}",
                MAX_EXPRESSION_CHARS,
            )
        self.tokens = _tokenize(text)
        self.i = 0
        self.nesting = 0
        self.nodes = 0

    def new(
        self, kind: str, start: int, end: int, value: Any = None, children: tuple[_Node, ...] = ()
    ) -> _Node:
        """A tree node, counted against MAX_NODES (a path counts one per part)."""
        self.count_part(start)
        return _node(kind, start, end, value, children)

    def check_items(self, count: int, limit: int, what: str, tok: _Token) -> None:
        if self.limits and count > limit:
            self.fail(tok, f"{what} has more than {limit} items")

    def peek(self, ahead: int = 0) -> _Token:
        return self.tokens[min(self.i + ahead, len(self.tokens) - 1)]

    def take(self) -> _Token:
        tok = self.tokens[self.i]
        if tok.kind != "eof":
            self.i += 1
        return tok

    def at(self, kind: str, value: Any) -> bool:
        tok = self.tokens[self.i]
        return tok.kind == kind and tok.value == value

    def fail(self, tok: _Token, message: str | None = None) -> NoReturn:
        if message is None:
            if tok.kind == "eof":
                message = "unexpected end of expression"
            else:
                raw = self.text[tok.start : tok.end]
                message = f"unexpected {raw if len(raw) <= 30 else raw[:27] + '...'!r}"
        raise ExpressionError(message, tok.start)

    def expect(self, value: str, what: str) -> _Token:
        tok = self.peek()
        if tok.kind != "op" or tok.value != value:
            found = "end of expression" if tok.kind == "eof" else repr(self.text[tok.start : tok.end])
            self.fail(tok, f"expected {what}, found {found}")
        return self.take()

    def enter(self, tok: _Token) -> None:
        self.nesting += 1
        if self.nesting > _MAX_NESTING:
            self.fail(tok, "expression is too deeply nested")

    def parse(self) -> _Node:
        if not self.text.strip():
            raise ExpressionError("empty expression", 0)
        node = self.parse_or()
        tok = self.peek()
        if tok.kind != "eof":
            self.fail(tok)
        return node

    def parse_or(self) -> _Node:
        items = [self.parse_and()]
        while self.at("kw", "or"):
            self.take()
            items.append(self.parse_and())
        if len(items) == 1:
            return items[0]
        return self.new("or", items[0].start, items[-1].end, None, tuple(items))

    def parse_and(self) -> _Node:
        items = [self.parse_not()]
        while self.at("kw", "and"):
            self.take()
            items.append(self.parse_not())
        if len(items) == 1:
            return items[0]
        return self.new("and", items[0].start, items[-1].end, None, tuple(items))

    def parse_not(self) -> _Node:
        if self.at("kw", "not"):
            tok = self.take()
            self.enter(tok)
            operand = self.parse_not()
            self.nesting -= 1
            return self.new("not", tok.start, operand.end, None, (operand,))
        return self.parse_comparison()

    def parse_comparison(self) -> _Node:
        left = self.parse_additive()
        node = self._comparison_tail(left)
        if node is not left:
            tok = self.peek()
            if (tok.kind == "op" and tok.value in _CMP_OPS) or (
                tok.kind == "kw" and tok.value in ("is", "in", "like", "not")
            ):
                self.fail(tok, "comparisons cannot be chained, combine them with 'and'")
        return node

    def _comparison_tail(self, left: _Node) -> _Node:
        tok = self.peek()
        if tok.kind == "op" and tok.value in _CMP_OPS:
            self.take()
            right = self.parse_additive()
            return self.new("cmp", left.start, right.end, tok.value, (left, right))
        if tok.kind != "kw":
            return left
        if tok.value == "is":
            self.take()
            negated = self.at("kw", "not")
            if negated:
                self.take()
            end_tok = self.peek()
            if not (end_tok.kind == "kw" and end_tok.value == "null"):
                self.fail(
                    end_tok, "expected 'null' after 'is not'" if negated else "expected 'null' after 'is'"
                )
            self.take()
            return self.new("isnull", left.start, end_tok.end, negated, (left,))
        negated = False
        if tok.value == "not":
            nxt = self.peek(1)
            if not (nxt.kind == "kw" and nxt.value in ("in", "like")):
                self.fail(nxt, f"expected 'in' or 'like' after {self.text[tok.start : tok.end]!r}")
            self.take()
            negated, tok = True, nxt
        if tok.value == "in":
            self.take()
            return self._in_list(left, negated)
        if tok.value == "like":
            self.take()
            pattern = self.parse_additive()
            return self.new("like", left.start, pattern.end, negated, (left, pattern))
        return left

    def _in_list(self, left: _Node, negated: bool) -> _Node:
        tok = self.peek()
        if not (tok.kind == "op" and tok.value in "(["):
            self.fail(tok, "expected '(' or '[' with a list of values after 'in'")
        self.take()
        self.enter(tok)
        closing = ")" if tok.value == "(" else "]"
        items = [left]
        if not self.at("op", closing):
            items.append(self.parse_or())
            while self.at("op", ","):
                self.check_items(len(items), MAX_IN_ITEMS, "an 'in' list", self.take())
                items.append(self.parse_or())
        end = self.expect(closing, f"',' or {closing!r}")
        self.nesting -= 1
        return self.new("in", left.start, end.end, negated, tuple(items))

    def parse_additive(self) -> _Node:
        left = self.parse_multiplicative()
        while self.peek().kind == "op" and self.peek().value in ("+", "-"):
            op = self.take().value
            right = self.parse_multiplicative()
            left = self.new("arith", left.start, right.end, op, (left, right))
        return left

    def parse_multiplicative(self) -> _Node:
        left = self.parse_unary()
        while self.peek().kind == "op" and self.peek().value in ("*", "/", "%"):
            op = self.take().value
            right = self.parse_unary()
            left = self.new("arith", left.start, right.end, op, (left, right))
        return left

    def parse_unary(self) -> _Node:
        if self.at("op", "-"):
            tok = self.take()
            self.enter(tok)
            operand = self.parse_unary()
            self.nesting -= 1
            return self.new("neg", tok.start, operand.end, None, (operand,))
        return self.parse_postfix()

    def parse_postfix(self) -> _Node:
        """Field access and indexing. A path's parts are collected in one list and made a node once
        at the end: extending a tuple per part made ``a.b.c...`` quadratic in its length."""
        node = self.parse_primary()
        parts: list[str | int] | None = list(node.value) if node.kind == "path" else None
        start, end = node.start, node.end
        while True:
            if self.at("op", "."):
                self.take()
                tok = self.take()
                if tok.kind not in ("name", "kw", "qname"):
                    self.fail(tok, "expected a field name after '.'")
                part = tok.value if tok.kind == "qname" else self.text[tok.start : tok.end]
                if parts is not None:
                    self.count_part(tok.start)
                    parts.append(part)
                    end = tok.end
                else:
                    node = self.new(
                        "index", start, tok.end, None, (node, self.new("lit", tok.start, tok.end, part))
                    )
            elif self.at("op", "["):
                tok = self.take()
                self.enter(tok)
                key = self.parse_or()
                close = self.expect("]", "']'")
                self.nesting -= 1
                k = key.value
                if (
                    parts is not None
                    and key.kind == "lit"
                    and (isinstance(k, str) or (isinstance(k, int) and not isinstance(k, bool)))
                ):
                    parts.append(k)  # the literal key was counted as a node already
                    end = close.end
                    continue
                if parts is not None:
                    node, parts = _node("path", start, end, tuple(parts)), None
                node = self.new("index", start, close.end, None, (node, key))
            else:
                if parts is not None:
                    node = _node("path", start, end, tuple(parts))
                return node

    def count_part(self, at: int) -> None:
        self.nodes += 1
        if self.limits and self.nodes > MAX_NODES:
            raise ExpressionError(f"expression has more than {MAX_NODES} parts (work per record)", at)

    def parse_primary(self) -> _Node:
        tok = self.peek()
        if tok.kind in ("num", "str"):
            self.take()
            return self.new("lit", tok.start, tok.end, tok.value)
        if tok.kind == "kw" and tok.value in ("true", "false", "null"):
            self.take()
            return self.new(
                "lit", tok.start, tok.end, {"true": True, "false": False, "null": None}[tok.value]
            )
        if tok.kind == "qname":
            self.take()
            return self.new("path", tok.start, tok.end, (tok.value,))
        if tok.kind == "name":
            self.take()
            if self.at("op", "("):
                return self._call(tok)
            return self.new("path", tok.start, tok.end, (tok.value,))
        if tok.kind == "op" and tok.value == "(":
            self.take()
            self.enter(tok)
            node = self.parse_or()
            self.expect(")", "')'")
            self.nesting -= 1
            return node
        self.fail(tok)

    def _call(self, name_tok: _Token) -> _Node:
        name = name_tok.value.lower()
        if name not in _ARITY:
            self.fail(name_tok, f"unknown function {name_tok.value!r}")
        open_tok = self.take()
        self.enter(open_tok)
        args: list[_Node] = []
        if not self.at("op", ")"):
            args.append(self.parse_or())
            while self.at("op", ","):
                self.check_items(len(args) + 1, MAX_ARGUMENTS, f"the argument list of {name}()", self.take())
                args.append(self.parse_or())
        end = self.expect(")", "',' or ')'")
        self.nesting -= 1
        lo, hi = _ARITY[name]
        if len(args) < lo or (hi is not None and len(args) > hi):
            want = str(lo) if lo == hi else (f"at least {lo}" if hi is None else f"{lo} to {hi}")
            noun = "argument" if lo == 1 and hi in (1, None) else "arguments"
            self.fail(name_tok, f"{name}() takes {want} {noun}, got {len(args)}")
        return self.new("call", name_tok.start, end.end, name, tuple(args))


# ------------------------------------------------------------------------------------------ compile


@dataclass(frozen=True, slots=True)
class _Compiled:
    fn: Evaluator
    const: bool = False
    value: Any = None
    boolean: bool = False  # fn always returns a bool
    cost: int = 0  # nodes of the whole expression (set on the root only)


def _constant(value: Any) -> _Compiled:
    def fn(r: Record) -> Any:
        return value

    return _Compiled(fn, True, value, isinstance(value, bool))


def _path_getter(parts: tuple[str | int, ...]) -> Evaluator:
    first = parts[0]
    assert isinstance(first, str)
    if len(parts) == 1:

        def get1(r: Record) -> Any:
            return r.get(first)

        return get1
    rest = parts[1:]
    if len(rest) == 1 and isinstance(rest[0], str):
        second = rest[0]

        def get2(r: Record) -> Any:
            v = r.get(first)
            return v.get(second) if isinstance(v, dict) else None

        return get2

    def get(r: Record) -> Any:
        v = r.get(first)
        for p in rest:
            if isinstance(v, dict):
                v = v.get(p)
            elif v is None:
                return None
            else:
                v = _index(v, p)
        return v

    return get


def _order(op: str, a: Any, b: Any, src: str) -> bool:
    if a is None or b is None:
        return False
    if (_is_num(a) and _is_num(b)) or (isinstance(a, str) and isinstance(b, str)):
        if op == "<":
            return bool(a < b)
        if op == "<=":
            return bool(a <= b)
        if op == ">":
            return bool(a > b)
        return bool(a >= b)
    raise EvaluationError(f"cannot compare {_describe(a)} with {_describe(b)} in {src!r}")


_FLIP = {"<": ">", "<=": ">=", ">": "<", ">=": "<=", "==": "==", "!=": "!="}


def _field_vs_const(name: str, op: str, c: Any, src: str) -> Evaluator:
    """``field <op> constant`` as one closure: a dict lookup, a type check and the compare."""
    if op in ("==", "!="):
        if c is None or isinstance(c, bool):
            if op == "==":
                return lambda r: r.get(name) is c
            return lambda r: r.get(name) is not c
        if _is_num(c) and (c == 0 or c == 1):  # would equal False/True without the bool check
            if op == "==":
                return lambda r: _eq(r.get(name), c)
            return lambda r: not _eq(r.get(name), c)
        if op == "==":
            return lambda r: r.get(name) == c
        return lambda r: r.get(name) != c

    if c is None:
        return lambda r: False
    if _is_num(c):
        t1: type[Any] = int
        t2: type[Any] = float
    elif isinstance(c, str):
        t1 = t2 = str
    else:
        return lambda r: _order(op, r.get(name), c, src)

    def slow(v: Any) -> bool:
        return _order(op, v, c, src)

    if op == ">":

        def gt(r: Record) -> Any:
            v = r.get(name)
            t = v.__class__
            if t is t1 or t is t2:
                return v > c  # a bool for these types
            return slow(v)

        return gt
    if op == ">=":

        def ge(r: Record) -> Any:
            v = r.get(name)
            t = v.__class__
            if t is t1 or t is t2:
                return v >= c  # a bool for these types
            return slow(v)

        return ge
    if op == "<":

        def lt(r: Record) -> Any:
            v = r.get(name)
            t = v.__class__
            if t is t1 or t is t2:
                return v < c  # a bool for these types
            return slow(v)

        return lt

    def le(r: Record) -> Any:
        v = r.get(name)
        t = v.__class__
        if t is t1 or t is t2:
            return v <= c  # a bool for these types
        return slow(v)

    return le


def _expr_vs_const(get: Evaluator, op: str, c: Any, src: str) -> Evaluator:
    """``expression <op> constant``: the constant is not re-evaluated and its type is checked once."""
    if op in ("==", "!="):
        negated = op == "!="
        if c is None or isinstance(c, bool):
            return lambda r: (get(r) is c) is not negated
        if isinstance(c, str) or (_is_num(c) and c != 0 and c != 1):
            return lambda r: (get(r) == c) is not negated
        return lambda r: _eq(get(r), c) is not negated
    if c is None:
        return lambda r: (get(r), False)[1]  # still evaluated: it may raise
    opfn = _ORDER_FNS[op]
    if _is_num(c):
        t1: type[Any] = int
        t2: type[Any] = float
    elif isinstance(c, str):
        t1 = t2 = str
    else:
        return lambda r: _order(op, get(r), c, src)

    def compare(r: Record) -> Any:
        v = get(r)
        t = v.__class__
        if t is t1 or t is t2:
            return opfn(v, c)
        return _order(op, v, c, src)

    return compare


_ORDER_FNS: dict[str, Callable[[Any, Any], Any]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}
_ARITH_FNS: dict[str, Callable[[Any, Any], Any]] = {
    "+": operator.add,
    "-": operator.sub,
    "*": operator.mul,
    "/": operator.truediv,
    "%": operator.mod,
}


def _like_matcher(pattern: str) -> Callable[[str], bool]:
    """SQL LIKE without backtracking: split at ``%`` and place the pieces greedily, leftmost first."""
    segments: list[list[str | None]] = [[]]  # None = '_' (any one character)
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "\\" and i + 1 < len(pattern):
            segments[-1].append(pattern[i + 1])
            i += 2
            continue
        if ch == "%":
            segments.append([])
        else:
            segments[-1].append(None if ch == "_" else ch)
        i += 1
    pieces = [_Piece(seg) for seg in segments]
    first, last = pieces[0], pieces[-1]
    if len(pieces) == 1:
        return lambda s: len(s) == first.length and first.match_at(s, 0)
    middle = [p for p in pieces[1:-1] if p.length]
    if not middle and first.literal is not None and last.literal is not None:
        a, b = first.literal, last.literal
        if not b:
            return lambda s: s.startswith(a)
        if not a:
            return lambda s: s.endswith(b)
        return lambda s: len(s) >= len(a) + len(b) and s.startswith(a) and s.endswith(b)
    if len(middle) == 1 and not first.length and not last.length and middle[0].literal is not None:
        sub = middle[0].literal
        return lambda s: sub in s
    head, tail = first.length, last.length

    def match(s: str) -> bool:
        n = len(s)
        if n < head + tail or not first.match_at(s, 0) or not last.match_at(s, n - tail):
            return False
        pos, end = head, n - tail
        for piece in middle:
            found = piece.find(s, pos, end)
            if found < 0:
                return False
            pos = found + piece.length
        return True

    return match


class _Piece:
    """A run of literal characters and ``_`` between two ``%`` of a LIKE pattern (fixed length)."""

    __slots__ = ("length", "literal", "regex")

    def __init__(self, items: list[str | None]) -> None:
        self.length = len(items)
        self.literal: str | None = None
        self.regex: re.Pattern[str] | None = None
        if all(c is not None for c in items):
            self.literal = "".join(c for c in items if c is not None)
        else:
            self.regex = re.compile("".join("." if c is None else re.escape(c) for c in items), re.DOTALL)

    def match_at(self, s: str, pos: int) -> bool:
        if self.literal is not None:
            return s.startswith(self.literal, pos)
        assert self.regex is not None
        return self.regex.match(s, pos) is not None

    def find(self, s: str, start: int, end: int) -> int:
        if self.literal is not None:
            return s.find(self.literal, start, end)
        assert self.regex is not None
        m = self.regex.search(s, start, end)
        return -1 if m is None else m.start()


_like_cache = lru_cache(maxsize=256)(_like_matcher)


def _like(value: Any, pattern: Any, matcher: Callable[[str], bool] | None, src: str) -> bool:
    if value is None or pattern is None:
        return False
    if not isinstance(value, str) or not isinstance(pattern, str):
        bad = value if not isinstance(value, str) else pattern
        raise EvaluationError(f"like needs strings, got {_describe(bad)} in {src!r}")
    return (matcher or _like_cache(pattern))(value)


def _arith(op: str, a: Any, b: Any, src: str) -> Any:
    if a is None or b is None:
        return None
    if _is_num(a) and _is_num(b):
        try:
            if op == "+":
                return a + b
            if op == "-":
                return a - b
            if op == "*":
                return a * b
            if op == "/":
                return a / b
            return a % b
        except ZeroDivisionError:
            raise EvaluationError(f"division by zero in {src!r}") from None
        except ArithmeticError as e:
            raise EvaluationError(f"{e} in {src!r}") from None
    if op == "+" and isinstance(a, str) and isinstance(b, str):
        return a + b
    raise EvaluationError(f"cannot apply '{op}' to {_describe(a)} and {_describe(b)} in {src!r}")


def _negate(v: Any, src: str) -> Any:
    if v is None:
        return None
    if _is_num(v):
        return -v
    raise EvaluationError(f"cannot negate {_describe(v)} in {src!r}")


# --------------------------------------------------------------------------------------- functions


def _need_str(fname: str, v: Any, src: str) -> str:
    if isinstance(v, str):
        return v
    raise EvaluationError(f"{fname}() expects a string, got {_describe(v)} in {src!r}")


def _need_num(fname: str, v: Any, src: str) -> Any:
    if _is_num(v):
        return v
    raise EvaluationError(f"{fname}() expects a number, got {_describe(v)} in {src!r}")


def _need_int(fname: str, v: Any, src: str) -> int:
    if isinstance(v, int) and not isinstance(v, bool):
        return v
    raise EvaluationError(f"{fname}() expects an integer, got {_describe(v)} in {src!r}")


def _f_lower(src: str, s: Any) -> Any:
    return None if s is None else _need_str("lower", s, src).lower()


def _f_upper(src: str, s: Any) -> Any:
    return None if s is None else _need_str("upper", s, src).upper()


def _f_trim(src: str, s: Any) -> Any:
    return None if s is None else _need_str("trim", s, src).strip()


def _f_length(src: str, s: Any) -> Any:
    if s is None:
        return None
    if isinstance(s, str | list | tuple | dict):
        return len(s)
    raise EvaluationError(f"length() expects a string, list or object, got {_describe(s)} in {src!r}")


def _f_substr(src: str, s: Any, start: Any, length: Any = _MISSING) -> Any:
    if s is None or start is None or length is None:
        return None
    text: str = _need_str("substr", s, src)
    begin: int = _need_int("substr", start, src)
    if begin < 0:
        begin = max(0, len(text) + begin)
    if length is _MISSING:
        return text[begin:]
    count: int = _need_int("substr", length, src)
    if count < 0:
        raise EvaluationError(f"substr() length must not be negative, got {count} in {src!r}")
    return text[begin : begin + count]


def _f_concat(src: str, *values: Any) -> Any:
    if any(v is None for v in values):
        return None
    return "".join(_to_string(v) for v in values)


def _f_contains(src: str, s: Any, sub: Any) -> Any:
    if s is None or sub is None:
        return None
    if isinstance(s, list | tuple):
        return any(_eq(item, sub) for item in s)
    if isinstance(s, str):
        return _need_str("contains", sub, src) in s
    raise EvaluationError(f"contains() expects a string or list, got {_describe(s)} in {src!r}")


def _f_starts_with(src: str, s: Any, p: Any) -> Any:
    if s is None or p is None:
        return None
    return _need_str("starts_with", s, src).startswith(_need_str("starts_with", p, src))


def _f_ends_with(src: str, s: Any, p: Any) -> Any:
    if s is None or p is None:
        return None
    return _need_str("ends_with", s, src).endswith(_need_str("ends_with", p, src))


def _f_abs(src: str, x: Any) -> Any:
    return None if x is None else abs(_need_num("abs", x, src))


_ROUND_CONTEXT = Context(prec=1000, rounding=ROUND_HALF_UP)


def _f_round(src: str, x: Any, n: Any = _MISSING) -> Any:
    if x is None or n is None:
        return None
    _need_num("round", x, src)
    digits: int = 0 if n is _MISSING else _need_int("round", n, src)
    if isinstance(x, float) and not math.isfinite(x):
        if n is _MISSING:
            raise EvaluationError(f"round() cannot make an integer of {x!r} in {src!r}")
        return x
    if isinstance(x, int) and digits >= 0:
        return x
    try:
        d = Decimal(repr(x)) if isinstance(x, float) else Decimal(x)
        exponent = d.as_tuple().exponent
        if isinstance(exponent, int) and exponent < -digits:
            d = _ROUND_CONTEXT.quantize(d, Decimal(1).scaleb(-digits))
    except ArithmeticError as e:
        raise EvaluationError(f"round() failed: {e} in {src!r}") from None
    if n is _MISSING or isinstance(x, int):
        return int(d)
    return float(d)


def _f_floor(src: str, x: Any) -> Any:
    if x is None:
        return None
    try:
        return math.floor(_need_num("floor", x, src))
    except (OverflowError, ValueError) as e:
        raise EvaluationError(f"floor() failed: {e} in {src!r}") from None


def _f_ceil(src: str, x: Any) -> Any:
    if x is None:
        return None
    try:
        return math.ceil(_need_num("ceil", x, src))
    except (OverflowError, ValueError) as e:
        raise EvaluationError(f"ceil() failed: {e} in {src!r}") from None


_INT_TEXT = re.compile(r"[+-]?[0-9]+")
_FLOAT_TEXT = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


def _f_to_number(src: str, x: Any) -> Any:
    if x is None or _is_num(x):
        return x
    if isinstance(x, str):
        text = x.strip()
        if _INT_TEXT.fullmatch(text):
            return int(text)
        if _FLOAT_TEXT.fullmatch(text):
            return float(text)
        raise EvaluationError(f"to_number() cannot read {_describe(x)} as a number in {src!r}")
    raise EvaluationError(f"to_number() expects a string or number, got {_describe(x)} in {src!r}")


def _f_to_string(src: str, x: Any) -> Any:
    return None if x is None else _to_string(x)


def _extreme(fname: str, pick: Callable[..., Any], src: str, values: Sequence[Any]) -> Any:
    if any(v is None for v in values):
        return None
    if all(_is_num(v) for v in values) or all(isinstance(v, str) for v in values):
        return pick(values)
    got = ", ".join(_describe(v) for v in values[:4])
    raise EvaluationError(f"{fname}() needs all numbers or all strings, got {got} in {src!r}")


def _f_min(src: str, *values: Any) -> Any:
    return _extreme("min", min, src, values)


def _f_max(src: str, *values: Any) -> Any:
    return _extreme("max", max, src, values)


_FUNCTIONS: dict[str, Callable[..., Any]] = {
    "lower": _f_lower,
    "upper": _f_upper,
    "length": _f_length,
    "len": _f_length,
    "trim": _f_trim,
    "substr": _f_substr,
    "concat": _f_concat,
    "contains": _f_contains,
    "starts_with": _f_starts_with,
    "ends_with": _f_ends_with,
    "abs": _f_abs,
    "round": _f_round,
    "floor": _f_floor,
    "ceil": _f_ceil,
    "to_number": _f_to_number,
    "to_string": _f_to_string,
    "min": _f_min,
    "max": _f_max,
}


# ------------------------------------------------------------------------------------------ compiler


class _Compiler:
    def __init__(self, text: str) -> None:
        self.text = text

    def src(self, node: _Node) -> str:
        """The node's text for error messages, cut to a bounded length (nodes nest, so quoting each
        one whole would copy a long expression once per level)."""
        if node.end - node.start <= _MAX_SNIPPET:
            return self.text[node.start : node.end]
        return self.text[node.start : node.start + _MAX_SNIPPET - 3] + "..."

    def build(self, node: _Node) -> _Compiled:
        kind = node.kind
        if kind == "lit":
            return _constant(node.value)
        if kind == "path":
            return _Compiled(_path_getter(node.value))
        children = [self.build(c) for c in node.children]
        result = getattr(self, "_c_" + kind)(node, children)
        assert isinstance(result, _Compiled)
        if not result.const and children and all(c.const for c in children):
            try:  # fold: every input is known, so the value is too (unless it raises at run time)
                return _constant(result.fn({}))
            except EvaluationError:
                pass
        return result

    def _c_index(self, node: _Node, ch: list[_Compiled]) -> _Compiled:
        base, key = ch[0].fn, ch[1].fn
        return _Compiled(lambda r: _index(base(r), key(r)))

    def _c_neg(self, node: _Node, ch: list[_Compiled]) -> _Compiled:
        operand, src = ch[0].fn, self.src(node)
        return _Compiled(lambda r: _negate(operand(r), src))

    def _c_not(self, node: _Node, ch: list[_Compiled]) -> _Compiled:
        operand = ch[0].fn
        return _Compiled(lambda r: not operand(r), boolean=True)

    def _c_and(self, node: _Node, ch: list[_Compiled]) -> _Compiled:
        fns = [c.fn for c in ch]
        if len(fns) == 2:
            a, b = fns
            if ch[0].boolean and ch[1].boolean:
                return _Compiled(lambda r: a(r) and b(r), boolean=True)
            return _Compiled(lambda r: bool(a(r) and b(r)), boolean=True)

        def all_of(r: Record) -> bool:
            return all(f(r) for f in fns)

        return _Compiled(all_of, boolean=True)

    def _c_or(self, node: _Node, ch: list[_Compiled]) -> _Compiled:
        fns = [c.fn for c in ch]
        if len(fns) == 2:
            a, b = fns
            if ch[0].boolean and ch[1].boolean:
                return _Compiled(lambda r: a(r) or b(r), boolean=True)
            return _Compiled(lambda r: bool(a(r) or b(r)), boolean=True)

        def any_of(r: Record) -> bool:
            return any(f(r) for f in fns)

        return _Compiled(any_of, boolean=True)

    def _c_arith(self, node: _Node, ch: list[_Compiled]) -> _Compiled:
        # number-number fast path; null, strings and arithmetic errors go through _arith
        a, b, op, src = ch[0].fn, ch[1].fn, node.value, self.src(node)
        opfn = _ARITH_FNS[op]
        if ch[1].const and _is_num(ch[1].value):
            c = ch[1].value

            def arith_const(r: Record) -> Any:
                x = a(r)
                t = x.__class__
                if t is int or t is float:
                    try:
                        return opfn(x, c)
                    except ArithmeticError:
                        pass
                return _arith(op, x, c, src)

            return _Compiled(arith_const)

        def arith(r: Record) -> Any:
            x, y = a(r), b(r)
            tx, ty = x.__class__, y.__class__
            if (tx is int or tx is float) and (ty is int or ty is float):
                try:
                    return opfn(x, y)
                except ArithmeticError:
                    pass
            return _arith(op, x, y, src)

        return _Compiled(arith)

    def _c_cmp(self, node: _Node, ch: list[_Compiled]) -> _Compiled:
        op, src = node.value, self.src(node)
        left, right = node.children
        if left.kind == "path" and len(left.value) == 1 and ch[1].const:
            return _Compiled(_field_vs_const(left.value[0], op, ch[1].value, src), boolean=True)
        if right.kind == "path" and len(right.value) == 1 and ch[0].const:
            return _Compiled(_field_vs_const(right.value[0], _FLIP[op], ch[0].value, src), boolean=True)
        if ch[1].const:
            return _Compiled(_expr_vs_const(ch[0].fn, op, ch[1].value, src), boolean=True)
        if ch[0].const:
            return _Compiled(_expr_vs_const(ch[1].fn, _FLIP[op], ch[0].value, src), boolean=True)
        a, b = ch[0].fn, ch[1].fn
        if op == "==":
            return _Compiled(lambda r: _eq(a(r), b(r)), boolean=True)
        if op == "!=":
            return _Compiled(lambda r: not _eq(a(r), b(r)), boolean=True)
        return _Compiled(lambda r: _order(op, a(r), b(r), src), boolean=True)

    def _c_isnull(self, node: _Node, ch: list[_Compiled]) -> _Compiled:
        operand = ch[0].fn
        if node.value:
            return _Compiled(lambda r: operand(r) is not None, boolean=True)
        return _Compiled(lambda r: operand(r) is None, boolean=True)

    def _c_in(self, node: _Node, ch: list[_Compiled]) -> _Compiled:
        operand, items, negated = ch[0].fn, ch[1:], bool(node.value)
        if all(c.const for c in items):
            values = tuple(c.value for c in items)
            hashable = all(v is None or isinstance(v, str | int | float) for v in values)
            if hashable and all(v == v for v in values):  # no NaN: set membership is equality
                members = frozenset(values)
                # a set lookup would let True match 1 and 1 match True; re-check with _eq then
                tricky = any(v.__class__ is bool or (_is_num(v) and (v == 0 or v == 1)) for v in values)

                def member(r: Record) -> bool:
                    v = operand(r)
                    try:
                        hit = v in members
                    except TypeError:  # unhashable list/object never equals a scalar
                        return negated
                    if hit and tricky:
                        hit = any(_eq(v, m) for m in values)
                    return hit is not negated

                return _Compiled(member, boolean=True)
        fns = [c.fn for c in items]

        def member_any(r: Record) -> bool:
            v = operand(r)
            for f in fns:
                if _eq(v, f(r)):
                    return not negated
            return negated

        return _Compiled(member_any, boolean=True)

    def _c_like(self, node: _Node, ch: list[_Compiled]) -> _Compiled:
        operand, pattern, negated, src = ch[0].fn, ch[1].fn, bool(node.value), self.src(node)
        matcher = _like_matcher(ch[1].value) if ch[1].const and isinstance(ch[1].value, str) else None

        if matcher is not None:
            match, text = matcher, ch[1].value

            def like_const(r: Record) -> bool:
                v = operand(r)
                if v.__class__ is str:
                    return match(v) is not negated
                if v is None:
                    return False
                return _like(v, text, match, src) is not negated

            return _Compiled(like_const, boolean=True)

        def like(r: Record) -> bool:
            v, p = operand(r), pattern(r)
            if v is None or p is None:
                return False
            return _like(v, p, None, src) is not negated

        return _Compiled(like, boolean=True)

    def _c_call(self, node: _Node, ch: list[_Compiled]) -> _Compiled:
        name, src = node.value, self.src(node)
        fns = [c.fn for c in ch]
        if name == "coalesce":

            def coalesce(r: Record) -> Any:
                for f in fns:
                    v = f(r)
                    if v is not None:
                        return v
                return None

            return _Compiled(coalesce)
        if name == "if":
            cond, then, other = fns
            return _Compiled(lambda r: then(r) if cond(r) else other(r))
        impl = _FUNCTIONS[name]
        if len(fns) == 1:
            a = fns[0]
            return _Compiled(lambda r: impl(src, a(r)))
        if len(fns) == 2:
            a, b = fns
            return _Compiled(lambda r: impl(src, a(r), b(r)))
        return _Compiled(lambda r: impl(src, *[f(r) for f in fns]))


# ------------------------------------------------------------------------------------------ public API


def _parse(text: str, *, limits: bool = True) -> _Node:
    return _parse_counted(text, limits=limits)[0]


def _parse_counted(text: str, *, limits: bool = True) -> tuple[_Node, int]:
    """The tree and its node count. Linear in ``len(text)``; with ``limits`` it refuses texts over
    the MAX_* bounds after reading at most that much of them."""
    if not isinstance(text, str):
        raise ExpressionError(f"expression must be a string, got {type(text).__name__}", 0)
    parser = _Parser(text, limits=limits)
    return parser.parse(), parser.nodes


@lru_cache(maxsize=1024)
def _compile_text(text: str) -> _Compiled:
    # closures are pure, so equal texts can share one compiled evaluator
    tree, nodes = _parse_counted(text)
    return dataclasses.replace(_Compiler(text).build(tree), cost=nodes)


def _compiled(text: str) -> _Compiled:
    if not isinstance(text, str):
        raise ExpressionError(f"expression must be a string, got {type(text).__name__}", 0)
    return _compile_text(text)


def compile_expression(text: str) -> Callable[[dict[str, Any]], Any]:
    """Compiles ``text`` once; the result evaluates it against a record (a dict).

    Raises :class:`ExpressionError` for bad text; the evaluator raises :class:`EvaluationError` for
    records whose values do not fit.
    """
    return _compiled(text).fn


def compile_condition(text: str) -> Callable[[dict[str, Any]], bool]:
    """Like :func:`compile_expression` but the result is a bool (truthiness; ``null`` is false)."""
    compiled = _compiled(text)
    if compiled.boolean:
        return compiled.fn
    if compiled.const:
        value = bool(compiled.value)
        return lambda r: value
    fn = compiled.fn
    return lambda r: bool(fn(r))


def validate_expression(text: str) -> None:
    """Raises :class:`ExpressionError` if ``text`` is not a valid expression (job checks at submit)."""
    _compiled(text)


def expression_cost(text: str) -> int:
    """The work ``text`` does per record, in nodes evaluated (a path counts one per part); validates
    it like :func:`validate_expression`. Jobs bound the sum over their expressions."""
    return _compiled(text).cost


def single_field(text: str) -> str | None:
    """The field name if ``text`` is a bare top-level field reference (``card_id``), else ``None``:
    hot loops then read ``record.get(name)`` inline instead of calling the compiled expression."""
    node = _parse(text)
    if node.kind == "path" and len(node.value) == 1 and isinstance(node.value[0], str):
        return str(node.value[0])
    return None


def field_names(text: str) -> set[str]:
    """The top-level record fields ``text`` reads (``payload.user.id`` -> ``payload``)."""
    names: set[str] = set()
    stack = [_parse(text)]
    while stack:
        node = stack.pop()
        if node.kind == "path":
            names.add(node.value[0])
        stack.extend(node.children)
    return names
