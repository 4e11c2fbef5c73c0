"""The `--where` filter language: conditions on the metadata of each row (`siglip.tools.metadata.SCHEMA`).

    year >= 2023 and orientation = 'landscape' and not screenshot
    camera ~ 'iphone' or (has_gps and date >= '2024-06')
    path ~ 'holiday/' and media in ('image') and width is not null

- comparisons `field OP value` with `=`, `!=`, `<`, `<=`, `>`, `>=` (numbers and dates), `~` (text contains,
  ignoring case), `in (v, ...)` and `not in (...)` (text and numbers); `field is null`, `is not null`;
- a bool field alone (`screenshot`, `has_gps`) or compared with `true` / `false`;
- `and`, `or`, `not` (in that order of precedence, lowest last) and parentheses;
- strings in single or double quotes (a quote doubled inside), numbers, `true`, `false`; keywords and field
  names in any case.

A date is compared at the precision written: `date = '2023-06'` is all of June 2023, `date < '2024'` is before
2024, `date >= '2023-06-01 18:00'` from that minute. A comparison on a missing value (no EXIF camera, a video
frame's size) is false, and `not` turns it true: `not camera ~ 'canon'` keeps photos without a camera.

A filter is parsed by a tokenizer and a recursive-descent parser, typed against the schema, and compiled to an
SQL condition whose values are all bound parameters (no text of the filter enters the SQL). Every mistake is a
`UsageError` of one line naming the filter and the problem.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ...errors import UsageError
from ..metadata import SCHEMA

_TOKEN = re.compile(
    r"""\s*(?:
    (?P<number>-?\d+(?:\.\d+)?(?![\w.]))
    |(?P<string>'(?:[^']|'')*'|"(?:[^"]|"")*")
    |(?P<word>[A-Za-z_][A-Za-z0-9_]*)
    |(?P<op>!=|<=|>=|=|<|>|~)
    |(?P<punct>[(),])
    )""",
    re.VERBOSE,
)
_KEYWORDS = {"and", "or", "not", "in", "is", "null", "true", "false"}
_ORDERED = ("<", "<=", ">", ">=")
_OPERATORS = {  # field type -> the comparison operators it takes
    "text": ("=", "!=", "~", "in"),
    "int": ("=", "!=", *_ORDERED, "in"),
    "float": ("=", "!=", *_ORDERED, "in"),
    "bool": ("=", "!="),
    "date": ("=", "!=", *_ORDERED),
}
MAX_LENGTH = 2000  # characters: a filter is written by a person; this bounds the SQL
MAX_DEPTH = 100  # nested parentheses and `not`s: counted, since the recursion limit is not ours to rely on
_DATE = re.compile(r"^\d{4}(-\d{2}(-\d{2}([ T]\d{2}:\d{2}(:\d{2})?)?)?)?$")


@dataclass(frozen=True)
class _Token:
    kind: str  # number, string, word, keyword, op, punct, end
    text: str
    at: int  # character position in the filter


@dataclass(frozen=True)
class Filter:
    """A parsed filter: its text, the SQL condition it compiles to (over `i.path` and `m.<field>`, as
    `VectorStore.matching_ids` runs it) and the values bound to its placeholders, in order."""

    text: str
    sql: str
    params: tuple[Any, ...]


def parse_filter(text: str) -> Filter:
    """Parse and type-check a filter (see the module doc); a `UsageError` of one line when it is wrong."""
    if not isinstance(text, str) or not text.strip():
        raise UsageError(f'filter {text!r}: it is empty; write a condition such as "year >= 2023"')
    if len(text) > MAX_LENGTH:
        raise UsageError(
            f"filter {text[:40]!r}...: {len(text)} characters, more than the {MAX_LENGTH} allowed"
        )
    parser = _Parser(text)
    sql = parser.expression()
    parser.expect_end()
    return Filter(text, sql, tuple(parser.params))


def as_filter(where: str | Filter | None) -> Filter | None:
    """`where` parsed (`parse_filter`) when it is text; a `Filter` or None as given."""
    return where if where is None or isinstance(where, Filter) else parse_filter(where)


def _tokens(text: str) -> list[_Token]:
    tokens, at = [], 0
    while at < len(text):
        match = _TOKEN.match(text, at)
        if match is None or match.end() == at:
            if text[at:].strip() == "":
                break
            position = at + len(text[at:]) - len(text[at:].lstrip())
            raise _error(text, position, f"unexpected character {text[position]!r}")
        kind = match.lastgroup
        if kind is None:  # only blanks were left
            break
        value, start = match[kind], match.start(kind)
        if kind == "word" and value.casefold() in _KEYWORDS:
            kind, value = "keyword", value.casefold()
        tokens.append(_Token(kind, value, start))
        at = match.end()
    tokens.append(_Token("end", "", len(text)))
    return tokens


def _error(text: str, at: int, problem: str) -> UsageError:
    return UsageError(f"filter {text!r}: {problem} at character {at + 1}")


class _Parser:
    """Recursive descent over the tokens: expression := and ('or' and)*; and := unary ('and' unary)*;
    unary := 'not' unary | '(' expression ')' | condition. Each method returns SQL and appends its values
    to `params`."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = _tokens(text)
        self.pos = 0
        self.depth = 0  # parentheses and `not`s open around the current token
        self.params: list[Any] = []

    def peek(self) -> _Token:
        return self.tokens[self.pos]

    def take(self) -> _Token:
        token = self.tokens[self.pos]
        self.pos += 1
        return token

    def accept(self, kind: str, text: str) -> bool:
        token = self.peek()
        if token.kind == kind and token.text == text:
            self.pos += 1
            return True
        return False

    def fail(self, problem: str, token: _Token | None = None) -> UsageError:
        token = token or self.peek()
        found = "the end" if token.kind == "end" else repr(token.text)
        return _error(self.text, token.at, f"{problem}, found {found}")

    def expect_end(self) -> None:
        if self.peek().kind != "end":
            raise self.fail("expected 'and', 'or' or the end")

    def expression(self) -> str:
        parts = [self.conjunction()]
        while self.accept("keyword", "or"):
            parts.append(self.conjunction())
        return parts[0] if len(parts) == 1 else "(" + " OR ".join(parts) + ")"

    def conjunction(self) -> str:
        parts = [self.unary()]
        while self.accept("keyword", "and"):
            parts.append(self.unary())
        return parts[0] if len(parts) == 1 else "(" + " AND ".join(parts) + ")"

    def unary(self) -> str:
        opening = self.peek()
        if self.accept("keyword", "not"):
            return f"(NOT {self.nested(opening, self.unary)})"
        if self.accept("punct", "("):
            inner = self.nested(opening, self.expression)
            if not self.accept("punct", ")"):
                raise self.fail("expected ')'")
            return inner
        return self.condition()

    def nested(self, opening: _Token, parse: Callable[[], str]) -> str:
        """`parse()` one level deeper; refused past MAX_DEPTH, before the recursion could be."""
        if self.depth >= MAX_DEPTH:
            raise UsageError(
                f"filter {self.text[:40]!r}...: parentheses and 'not's nested too deeply (more than "
                f"{MAX_DEPTH}) at character {opening.at + 1}"
            )
        self.depth += 1
        try:
            return parse()
        finally:
            self.depth -= 1

    def condition(self) -> str:
        token = self.take()
        if token.kind != "word":
            raise self.fail("expected a field name", token)
        name = token.text.casefold()
        if name not in SCHEMA:
            raise _error(self.text, token.at, f"unknown field {token.text!r} (fields: {', '.join(SCHEMA)})")
        kind = SCHEMA[name]
        column = "i.path" if name == "path" else f"m.{name}"
        following = self.peek()
        if self.accept("keyword", "is"):
            negated = self.accept("keyword", "not")
            if not self.accept("keyword", "null"):
                raise self.fail("expected 'null' after 'is'")
            return f"({column} IS {'NOT ' if negated else ''}NULL)"
        if following.kind == "keyword" and following.text in ("in", "not"):
            negated = self.accept("keyword", "not")
            if not self.accept("keyword", "in"):
                raise self.fail("expected 'in' after 'not'")
            self.check_operator(name, kind, "in", following)
            values = self.value_list(name, kind)
            marks = ", ".join("?" * len(values))
            self.params.extend(values)
            return f"COALESCE({column} {'NOT ' if negated else ''}IN ({marks}), 0)"
        if following.kind != "op":
            if kind == "bool":  # a bool field alone
                return f"COALESCE({column} = 1, 0)"
            raise self.fail(f"expected an operator after {name} (one of {', '.join(_OPERATORS[kind])})")
        op = self.take().text
        self.check_operator(name, kind, op, following)
        value = self.value(name, kind)
        if op == "~":
            self.params.append(value.casefold())
            return f"COALESCE(instr(casefold({column}), ?) > 0, 0)"
        if kind == "date":
            self.params.append(value)
            width = len(value)  # compared at the precision written
            return f"COALESCE(substr({column}, 1, {width}) {op} ?, 0)"
        self.params.append(value)
        return f"COALESCE({column} {op} ?, 0)"

    def check_operator(self, name: str, kind: str, op: str, token: _Token) -> None:
        if op not in _OPERATORS[kind]:
            raise _error(
                self.text,
                token.at,
                f"{name} is {_a(kind)} field: '{op}' does not apply (use {', '.join(_OPERATORS[kind])})",
            )

    def value_list(self, name: str, kind: str) -> list[Any]:
        if not self.accept("punct", "("):
            raise self.fail("expected '(' and a list of values after 'in'")
        values = [self.value(name, kind)]
        while self.accept("punct", ","):
            values.append(self.value(name, kind))
        if not self.accept("punct", ")"):
            raise self.fail("expected ',' or ')' in the list of values")
        return values

    def value(self, name: str, kind: str) -> Any:
        """The next token as a value of `kind`, for the field `name` (a type error names both)."""
        token = self.take()
        if token.kind == "number" and kind in ("int", "float"):
            return float(token.text) if "." in token.text else int(token.text)
        if token.kind == "keyword" and token.text in ("true", "false") and kind == "bool":
            return int(token.text == "true")
        if token.kind == "string" and kind in ("text", "date"):
            value = token.text[1:-1].replace(token.text[0] * 2, token.text[0])
            return _date(self, token, value) if kind == "date" else value
        if token.kind in ("end", "op", "punct") or (
            token.kind == "keyword" and token.text not in ("true", "false")
        ):
            raise self.fail("expected a value", token)
        wanted = {
            "text": "a quoted text",
            "date": "a quoted date such as '2023-06-01'",
            "int": "a number",
            "float": "a number",
            "bool": "true or false",
        }[kind]
        raise _error(
            self.text, token.at, f"{name} is {_a(kind)} field: compare it with {wanted}, not {token.text}"
        )


def _a(kind: str) -> str:
    return f"an {kind}" if kind == "int" else f"a {kind}"


def _date(parser: _Parser, token: _Token, value: str) -> str:
    """A date literal, checked, in the stored form (ISO 8601 with 'T'): '2023', '2023-06', '2023-06-01',
    '2023-06-01 18:00', '2023-06-01T18:00:00'."""
    if _DATE.match(value):
        full = value.replace(" ", "T")
        padded = full + "-01-01T00:00:00"[len(full) - 4 :] if len(full) < 19 else full
        try:
            dt.datetime.fromisoformat(padded)
            return full
        except ValueError:
            pass
    raise _error(
        parser.text,
        token.at,
        f"{value!r} is not a date: write 'YYYY', 'YYYY-MM', 'YYYY-MM-DD' or 'YYYY-MM-DD HH:MM[:SS]'",
    )
