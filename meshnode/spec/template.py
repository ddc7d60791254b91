"""Render the subset of Go's ``text/template`` that Bacalhau job specs use.

The renderer is applied to the raw text of a YAML or JSON job spec before that
text is parsed.  It behaves like Go's ``text/template`` executing with
``Option("missingkey=error")`` on a ``map[string]string`` whose entries are the
given variables.

Rules of this module
--------------------
* Pure standard library, no I/O, no global mutable state: every render builds
  its own lexer, parser and executor.  Module-level tables are read-only.
* Written by hand.  No third-party template library reproduces Go's semantics
  (trim markers, ``missingkey=error``, ``index`` ignoring missing keys, Go's
  ``fmt`` verbs and its ``%!d(string=x)`` style diagnostics), so the lexer,
  parser and evaluator below mirror Go's ``text/template/parse``,
  ``text/template`` and ``fmt`` packages.
* Any input string yields either a ``str`` or a :class:`TemplateError`, never
  another exception.  Nesting depth is bounded (``_MAX_DEPTH`` levels of
  parentheses and ``{{if}}``/``{{with}}``) and so is the size of what a render
  may produce (``_MAX_OUTPUT`` characters), so hostile input cannot exhaust the
  stack or the memory.  Work is linear in the size of the input.
* Every error carries the 1-based line and column (in characters) of the
  action or token at fault in the original text.

Supported subset
----------------
* Text outside ``{{ }}`` is copied verbatim.  Trim markers ``{{- `` and
  `` -}}`` remove all adjacent spaces, tabs and newlines, exactly as Go does
  (the marker needs the space: ``{{-3}}`` is the number -3).  Comments
  ``{{/* ... */}}``, with or without trim markers.
* ``.``, ``.name``, ``.a.b`` (an error on a string), ``$`` and ``$.name``
  referring to the root data.  A missing key is an error (missingkey=error).
* Functions ``and`` and ``or`` (short-circuit, return an operand), ``not``,
  ``eq`` (``eq a b c`` is ``a == b || a == c``), ``ne``, ``lt``, ``le``,
  ``gt``, ``ge``, ``len``, ``index`` (a missing key gives ``""``), ``slice``,
  ``print``, ``printf`` and ``println`` with Go's ``fmt`` semantics (flags
  ``-+# 0``, width, precision, ``*`` and ``[n]`` argument indexes, verbs
  ``v s q d x X o O b c U e E f F g G t T %`` and Go's ``%!verb(type=value)``,
  ``%!verb(MISSING)`` and ``%!(EXTRA ...)`` diagnostics).
* Parenthesised sub-expressions, pipelines ``a | f b`` (the piped value is the
  last argument) and field access on a parenthesised value ``(x).f``.
* Literals: double-quoted strings with Go escapes, raw back-quoted strings,
  integers (decimal, ``0x``, ``0o``, ``0b``, leading-``0`` octal, ``_``
  separators), floats (decimal and hexadecimal), character constants,
  ``true``, ``false`` and ``nil``.
* ``{{if}}``/``{{else if}}``/``{{else}}``/``{{end}}`` and
  ``{{with}}``/``{{else with}}``/``{{else}}``/``{{end}}`` with Go's truth
  rules (false, 0, nil and empty strings and maps are false).

Left out on purpose: ``range``, ``break``, ``continue``, ``define``,
``template``, ``block``, variables other than ``$``, the ``html``, ``js``,
``urlquery`` and ``call`` functions, complex numbers and the ``%p`` verb; each
gives a TemplateError saying so (``%p`` prints Go's bad-verb diagnostic).
Strings follow Go's byte semantics: ``len`` counts UTF-8 bytes and escapes
such as ``"\\xff"`` that do not form valid UTF-8 are carried as
surrogate-escaped characters (``errors="surrogateescape"``).
"""

from __future__ import annotations

import math
import re
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final, NoReturn

from meshnode.errors import MeshnodeError

__all__ = ["TemplateError", "render_template"]

# Deepest nesting of parentheses plus {{if}}/{{with}} blocks accepted.
_MAX_DEPTH: Final = 100
# Most characters a render, or any one value computed during it, may hold.
_MAX_OUTPUT: Final = 64 * 1024 * 1024

_SPACE_CHARS: Final = " \t\r\n"
_MASK64: Final = (1 << 64) - 1
_MAX_RUNE: Final = 0x10FFFF
_LOWER_DIGITS: Final = "0123456789abcdefx"
_UPPER_DIGITS: Final = "0123456789ABCDEFX"

_SPACE_RUN: Final = re.compile(r"[ \t\r\n]*")
_QUOTE_STOP: Final = re.compile(r'[\\"\n]')
_CHAR_STOP: Final = re.compile(r"[\\'\n]")
_SURROGATE: Final = re.compile("[\ud800-\udfff]")
_DEC_FLOAT: Final = re.compile(r"(?:[0-9_]+\.?[0-9_]*|\.[0-9_]+)(?:[eE][+-]?[0-9_]+)?")
_HEX_FLOAT: Final = re.compile(
    r"0[xX](?:[0-9a-fA-F_]+\.?[0-9a-fA-F_]*|\.[0-9a-fA-F_]+)[pP][+-]?[0-9_]+"
)


class TemplateError(MeshnodeError):
    """A job-spec template could not be parsed or executed.

    ``line`` and ``column`` are 1-based and point at the offending action or
    token in the original text; ``reason`` says what is wrong.
    """

    def __init__(self, line: int, column: int, reason: str) -> None:
        self.line = line
        self.column = column
        self.reason = reason
        super().__init__(f"template line {line}, column {column}: {reason}")

    def __reduce__(self) -> tuple[type[TemplateError], tuple[int, int, str]]:
        return (type(self), (self.line, self.column, self.reason))


def render_template(text: str, variables: Mapping[str, str]) -> str:
    """Render ``text`` as a Go template executed on the map ``variables``.

    Raises :class:`TemplateError` when the template is malformed or cannot be
    executed (for instance when it names a variable that is not defined).
    """
    data = {
        str(key): value if isinstance(value, str) else str(value)
        for key, value in variables.items()
    }
    try:
        nodes = _Parser(text).parse()
        output = _Executor(text, data).run(nodes)
    except RecursionError:
        raise TemplateError(1, 1, "template is too deeply nested") from None
    if _SURROGATE.search(output):
        # Adjacent raw bytes may form valid UTF-8 once joined, as in Go.
        output = _go_bytes(output).decode("utf-8", "surrogateescape")
    return output


# --------------------------------------------------------------------------
# Positions and errors


def _line_col(text: str, pos: int) -> tuple[int, int]:
    pos = max(0, min(pos, len(text)))
    line = text.count("\n", 0, pos) + 1
    column = pos - (text.rfind("\n", 0, pos) + 1) + 1
    return line, column


def _fail(text: str, pos: int, reason: str) -> NoReturn:
    line, column = _line_col(text, pos)
    raise TemplateError(line, column, reason)


class _CallError(Exception):
    """A builtin function rejected its arguments (Go's returned error)."""


class _TooLargeError(Exception):
    """A value or the output grew beyond ``_MAX_OUTPUT`` characters."""


class _BadLiteralError(Exception):
    """A string or character literal is malformed."""


# --------------------------------------------------------------------------
# Go strings: bytes carried in a str with surrogate escapes


def _char_bytes(ch: str) -> bytes:
    code = ord(ch)
    if 0xDC80 <= code <= 0xDCFF:
        return bytes((code - 0xDC00,))
    if 0xD800 <= code <= 0xDFFF:
        return "\ufffd".encode()
    return ch.encode()


def _go_bytes(s: str) -> bytes:
    """The bytes of the Go string that ``s`` stands for."""
    try:
        return s.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return b"".join(_char_bytes(ch) for ch in s)


def _from_bytes(b: bytes) -> str:
    return b.decode("utf-8", "surrogateescape")


def _is_go_print(ch: str) -> bool:
    # Go's unicode.IsPrint: letters, marks, numbers, punctuation, symbols and
    # U+0020 -- the same set as Python's str.isprintable.
    return ch.isprintable()


def _is_alnum(ch: str) -> bool:
    # Go's isAlphaNumeric: '_', unicode.IsLetter (L*) or unicode.IsDigit (Nd).
    return ch == "_" or ch.isalpha() or ch.isdecimal()


_QUOTE_ESCAPES: Final = MappingProxyType(
    {"\a": "\\a", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\v": "\\v"}
)


def _go_quote(s: str, ascii_only: bool = False, quote: str = '"') -> str:
    """Go's strconv.Quote (or QuoteToASCII, or QuoteRune with ``quote="'"``)."""
    out = [quote]
    for ch in s:
        code = ord(ch)
        if ch in (quote, "\\"):
            out.append("\\" + ch)
            continue
        if 0xDC80 <= code <= 0xDCFF:
            out.append(f"\\x{code - 0xDC00:02x}")
            continue
        rune = ch
        if 0xD800 <= code <= 0xDFFF:
            rune, code = "\ufffd", 0xFFFD
        if ascii_only:
            if code < 0x80 and _is_go_print(rune):
                out.append(rune)
                continue
        elif _is_go_print(rune):
            out.append(rune)
            continue
        escape = _QUOTE_ESCAPES.get(rune)
        if escape is not None:
            out.append(escape)
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\x{code:02x}")
        elif code < 0x10000:
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    out.append(quote)
    return "".join(out)


def _go_quote_trunc(s: str) -> str:
    """Go's ``%.10q`` followed by ``...`` for long strings, ``%q`` otherwise."""
    if len(s) > 10:
        return _go_quote(s[:10]) + "..."
    return _go_quote(s)


def _sharp_u(ch: str) -> str:
    """Go's ``%#U`` of a rune: ``U+0041 'A'``."""
    text = f"U+{ord(ch):04X}"
    if _is_go_print(ch) and not 0xD800 <= ord(ch) <= 0xDFFF:
        text += f" '{ch}'"
    return text


_SIMPLE_ESCAPES: Final = MappingProxyType(
    {"a": 7, "b": 8, "f": 12, "n": 10, "r": 13, "t": 9, "v": 11, "\\": 92}
)
_ESCAPE_WIDTH: Final = MappingProxyType({"x": 2, "u": 4, "U": 8})
_HEX_CHARS: Final = frozenset("0123456789abcdefABCDEF")


def _unquote_char(s: str, i: int, quote: str) -> tuple[int, bool, int]:
    """Go's strconv.UnquoteChar: (value, value is a raw byte, next index)."""
    ch = s[i]
    if ch == quote:
        raise _BadLiteralError(f"unescaped {ch} in literal")
    if ch != "\\":
        return ord(ch), False, i + 1
    if i + 1 >= len(s):
        raise _BadLiteralError("literal ends with a backslash")
    ch = s[i + 1]
    i += 2
    simple = _SIMPLE_ESCAPES.get(ch)
    if simple is not None:
        return simple, False, i
    width = _ESCAPE_WIDTH.get(ch)
    if width is not None:
        digits = s[i : i + width]
        if len(digits) < width or not all(d in _HEX_CHARS for d in digits):
            raise _BadLiteralError(f"invalid escape sequence \\{ch}{digits}")
        value = int(digits, 16)
        if ch == "x":
            return value, True, i + width
        if value > _MAX_RUNE or 0xD800 <= value <= 0xDFFF:
            raise _BadLiteralError(f"escape \\{ch}{digits} is not a valid Unicode code point")
        return value, False, i + width
    if "0" <= ch <= "7":
        digits = s[i : i + 2]
        if len(digits) < 2 or not all("0" <= d <= "7" for d in digits):
            raise _BadLiteralError(f"invalid octal escape \\{ch}{digits}")
        value = int(ch + digits, 8)
        if value > 255:
            raise _BadLiteralError(f"octal escape \\{ch}{digits} is larger than 255")
        return value, True, i + 2
    if ch in "'\"":
        if ch != quote:
            raise _BadLiteralError(f"invalid escape sequence \\{ch}")
        return ord(ch), False, i
    raise _BadLiteralError(f"invalid escape sequence \\{ch}")


def _unquote_string(literal: str) -> str:
    """Go's strconv.Unquote of a ``"..."`` or raw literal."""
    if literal[0] == "`":
        return literal[1:-1].replace("\r", "")
    body = literal[1:-1]
    if "\\" not in body:
        return body
    out = bytearray()
    i = 0
    while i < len(body):
        value, raw, i = _unquote_char(body, i, '"')
        if raw:
            out.append(value)
        else:
            out += _char_bytes(chr(value))
    return _from_bytes(bytes(out))


# --------------------------------------------------------------------------
# Numbers


def _underscore_ok(s: str) -> bool:
    """Go's strconv underscoreOK: '_' only between digits (or after a prefix)."""
    saw = "^"
    i = 0
    if s[:1] in ("+", "-") and s:
        s = s[1:]
    hexa = False
    if len(s) >= 2 and s[0] == "0" and s[1].lower() in "box":
        i = 2
        saw = "0"
        hexa = s[1].lower() == "x"
    while i < len(s):
        ch = s[i]
        if "0" <= ch <= "9" or (hexa and "a" <= ch.lower() <= "f"):
            saw = "0"
        elif ch == "_":
            if saw != "0":
                return False
            saw = "_"
        elif saw == "_":
            return False
        else:
            saw = "!"
        i += 1
    return saw != "_"


def _parse_go_integer(text: str) -> int | None:
    """strconv.ParseInt(text, 0, 64) without the range check."""
    s = text
    negative = False
    if s[:1] in ("+", "-") and s:
        negative = s[0] == "-"
        s = s[1:]
    if not s:
        return None
    base = 10
    body = s
    if s[0] == "0":
        prefix = s[1:2].lower()
        if len(s) >= 3 and prefix in ("b", "o", "x"):
            base = {"b": 2, "o": 8, "x": 16}[prefix]
            body = s[2:]
        else:
            base = 8
            body = s[1:]
    if "_" in s and not _underscore_ok(s):
        return None
    digits = body.replace("_", "")
    if not digits:
        return 0 if base == 8 and body == "" and s == "0" else None
    valid = "0123456789abcdefABCDEF"[: base if base <= 10 else 22]
    if any(ch not in valid for ch in digits):
        return None
    # A long decimal is far outside 64 bits; skip converting it (Python limits that).
    value = 1 << 70 if base == 10 and len(digits) > 40 else int(digits, base)
    return -value if negative else value


def _parse_go_float(text: str) -> float | None:
    """strconv.ParseFloat(text, 64), ``None`` on a syntax or range error."""
    s = text
    negative = False
    if s[:1] in ("+", "-") and s:
        negative = s[0] == "-"
        s = s[1:]
    if "_" in s and not _underscore_ok(s):
        return None
    try:
        if _HEX_FLOAT.fullmatch(s):
            value = float.fromhex(s.replace("_", ""))
        elif _DEC_FLOAT.fullmatch(s):
            value = float(s.replace("_", ""))
        else:
            return None
    except (ValueError, OverflowError):
        return None
    if math.isinf(value) or math.isnan(value):
        return None
    return -value if negative else value


def _looks_float(text: str) -> bool:
    return any(ch in text for ch in ".eEpP")


def _is_hex_int(text: str) -> bool:
    return (
        len(text) > 2 and text[0] == "0" and text[1] in "xX" and not any(ch in text for ch in "pP")
    )


def _parse_number(text: str) -> tuple[int | float | None, str | None]:
    """Go's parse.newNumber followed by exec's idealConstant.

    Returns ``(value, None)``, or ``(None, reason)`` for an error that Go only
    reports when the constant is evaluated.  Raises ``_BadLiteralError`` for errors
    Go reports while parsing.
    """
    if text.endswith("i"):
        raise _BadLiteralError("complex numbers are not supported")
    parsed = _parse_go_integer(text)
    is_int = parsed is not None and -(1 << 63) <= parsed < (1 << 63)
    is_uint = parsed is not None and text[0] not in "+-" and 0 <= parsed <= _MASK64
    int_value = parsed if parsed is not None else 0
    float_value = 0.0
    is_float = False
    if is_int or is_uint:
        is_float = True
        float_value = float(int_value)
    else:
        parsed_float = _parse_go_float(text)
        if parsed_float is not None:
            if not _looks_float(text):
                raise _BadLiteralError(f"integer overflow: {_go_quote(text)}")
            is_float = True
            float_value = parsed_float
            if -(2.0**63) <= parsed_float < 2.0**63 and float(int(parsed_float)) == parsed_float:
                is_int = True
                int_value = int(parsed_float)
    if not (is_int or is_uint or is_float):
        raise _BadLiteralError(f"illegal number syntax: {_go_quote(text)}")
    if is_float and not _is_hex_int(text) and _looks_float(text):
        return float_value, None
    if is_int:
        return int_value, None
    return None, f"{text} overflows int"


# --------------------------------------------------------------------------
# Lexer (text/template/parse/lex.go)

_T_EOF: Final = 0
_T_TEXT: Final = 1
_T_LEFT_DELIM: Final = 2
_T_RIGHT_DELIM: Final = 3
_T_SPACE: Final = 4
_T_FIELD: Final = 5
_T_IDENT: Final = 6
_T_BOOL: Final = 7
_T_NUMBER: Final = 8
_T_CHAR_CONST: Final = 9
_T_COMPLEX: Final = 10
_T_STRING: Final = 11
_T_RAW_STRING: Final = 12
_T_VARIABLE: Final = 13
_T_PIPE: Final = 14
_T_LPAREN: Final = 15
_T_RPAREN: Final = 16
_T_CHAR: Final = 17
_T_ASSIGN: Final = 18
_T_DECLARE: Final = 19
_T_KEYWORD: Final = 30  # kinds above this one are keywords
_T_DOT: Final = 31
_T_NIL: Final = 32
_T_IF: Final = 33
_T_ELSE: Final = 34
_T_END: Final = 35
_T_WITH: Final = 36
_T_RANGE: Final = 37
_T_DEFINE: Final = 38
_T_TEMPLATE: Final = 39
_T_BLOCK: Final = 40
_T_BREAK: Final = 41
_T_CONTINUE: Final = 42

_KEYWORDS: Final = MappingProxyType(
    {
        "block": _T_BLOCK,
        "break": _T_BREAK,
        "continue": _T_CONTINUE,
        "define": _T_DEFINE,
        "else": _T_ELSE,
        "end": _T_END,
        "if": _T_IF,
        "nil": _T_NIL,
        "range": _T_RANGE,
        "template": _T_TEMPLATE,
        "with": _T_WITH,
    }
)
_UNSUPPORTED_KEYWORDS: Final = frozenset(
    {_T_BLOCK, _T_BREAK, _T_CONTINUE, _T_DEFINE, _T_RANGE, _T_TEMPLATE}
)
_OPERAND_START: Final = frozenset(
    {
        _T_BOOL,
        _T_CHAR_CONST,
        _T_COMPLEX,
        _T_DOT,
        _T_FIELD,
        _T_IDENT,
        _T_NUMBER,
        _T_NIL,
        _T_RAW_STRING,
        _T_STRING,
        _T_VARIABLE,
        _T_LPAREN,
    }
)


@dataclass(slots=True, eq=False)
class _Token:
    kind: int
    pos: int
    val: str


def _token_desc(tok: _Token) -> str:
    """Go's item.String(), used in "unexpected ..." messages."""
    if tok.kind == _T_EOF:
        return "EOF"
    if tok.kind > _T_KEYWORD:
        return f"<{tok.val}>"
    return _go_quote_trunc(tok.val)


class _Lexer:
    """Pull lexer: tokens are produced on demand, so errors surface in Go's order."""

    __slots__ = ("_action_pos", "_inside", "_n", "_parens", "_pos", "_text")

    def __init__(self, text: str) -> None:
        self._text = text
        self._n = len(text)
        self._pos = 0
        self._inside = False
        self._parens: list[int] = []
        self._action_pos = 0

    def _error(self, pos: int, reason: str) -> NoReturn:
        _fail(self._text, pos, reason)

    def next_token(self) -> _Token:
        while True:
            if self._inside:
                return self._lex_inside()
            tok = self._lex_text()
            if tok is not None:
                return tok

    def _has_left_trim(self, i: int) -> bool:
        text = self._text
        return i + 1 < self._n and text[i] == "-" and text[i + 1] in _SPACE_CHARS

    def _at_right_delim(self, i: int) -> tuple[bool, bool]:
        text = self._text
        if (
            i + 1 < self._n
            and text[i] in _SPACE_CHARS
            and text[i + 1] == "-"
            and text.startswith("}}", i + 2)
        ):
            return True, True
        if text.startswith("}}", i):
            return True, False
        return False, False

    def _skip_space(self, i: int) -> int:
        match = _SPACE_RUN.match(self._text, i)
        return match.end() if match else i

    def _lex_text(self) -> _Token | None:
        text, pos = self._text, self._pos
        x = text.find("{{", pos)
        if x < 0:
            self._pos = self._n
            if pos < self._n:
                return _Token(_T_TEXT, pos, text[pos:])
            return _Token(_T_EOF, self._n, "")
        if x > pos:
            segment = text[pos:x]
            if self._has_left_trim(x + 2):
                segment = segment.rstrip(_SPACE_CHARS)
            self._pos = x
            if segment:
                return _Token(_T_TEXT, pos, segment)
        return self._lex_left_delim(x)

    def _lex_left_delim(self, x: int) -> _Token | None:
        after = x + 2
        if self._has_left_trim(after):
            after += 2
        if self._text.startswith("/*", after):
            self._lex_comment(x, after + 2)
            return None
        self._inside = True
        self._parens = []
        self._action_pos = x
        self._pos = after
        return _Token(_T_LEFT_DELIM, x, "{{")

    def _lex_comment(self, start: int, pos: int) -> None:
        end = self._text.find("*/", pos)
        if end < 0:
            self._error(start, "unclosed comment")
        pos = end + 2
        delim, trim = self._at_right_delim(pos)
        if not delim:
            self._error(pos, "comment ends before closing delimiter")
        if trim:
            pos += 2
        pos += 2
        if trim:
            pos = self._skip_space(pos)
        self._pos = pos

    def _lex_right_delim(self) -> _Token:
        pos = self._pos
        _, trim = self._at_right_delim(pos)
        if trim:
            pos += 2
        tok = _Token(_T_RIGHT_DELIM, pos, "}}")
        pos += 2
        if trim:
            pos = self._skip_space(pos)
        self._pos = pos
        self._inside = False
        return tok

    def _emit(self, kind: int, start: int, end: int) -> _Token:
        self._pos = end
        return _Token(kind, start, self._text[start:end])

    def _lex_inside(self) -> _Token:
        text, pos, n = self._text, self._pos, self._n
        delim, _ = self._at_right_delim(pos)
        if delim:
            if not self._parens:
                return self._lex_right_delim()
            self._error(self._parens[-1], "unclosed left paren")
        if pos >= n:
            self._error(self._action_pos, "unclosed action")
        ch = text[pos]
        if ch in _SPACE_CHARS:
            return self._lex_space(pos)
        if ch == "=":
            return self._emit(_T_ASSIGN, pos, pos + 1)
        if ch == ":":
            if pos + 1 < n and text[pos + 1] == "=":
                return self._emit(_T_DECLARE, pos, pos + 2)
            self._error(pos, "expected :=")
        if ch == "|":
            return self._emit(_T_PIPE, pos, pos + 1)
        if ch == '"':
            return self._lex_quoted(pos, _QUOTE_STOP, _T_STRING, "unterminated quoted string")
        if ch == "`":
            end = text.find("`", pos + 1)
            if end < 0:
                self._error(pos, "unterminated raw quoted string")
            return self._emit(_T_RAW_STRING, pos, end + 1)
        if ch == "$":
            if self._at_terminator(pos + 1):
                return self._emit(_T_VARIABLE, pos, pos + 1)
            return self._lex_field_or_variable(pos, _T_VARIABLE)
        if ch == "'":
            return self._lex_quoted(
                pos, _CHAR_STOP, _T_CHAR_CONST, "unterminated character constant"
            )
        if ch == ".":
            if pos + 1 < n and not "0" <= text[pos + 1] <= "9":
                return self._lex_field_or_variable(pos, _T_FIELD)
            return self._lex_number(pos)
        if ch in "+-" or "0" <= ch <= "9":
            return self._lex_number(pos)
        if _is_alnum(ch):
            return self._lex_identifier(pos)
        if ch == "(":
            self._parens.append(pos)
            return self._emit(_T_LPAREN, pos, pos + 1)
        if ch == ")":
            if not self._parens:
                self._error(pos, "unexpected right paren")
            self._parens.pop()
            return self._emit(_T_RPAREN, pos, pos + 1)
        if ch <= "\x7f" and ch.isprintable():
            return self._emit(_T_CHAR, pos, pos + 1)
        self._error(pos, f"unrecognized character in action: {_sharp_u(ch)}")

    def _lex_space(self, start: int) -> _Token:
        match = _SPACE_RUN.match(self._text, start)
        end = match.end() if match else start + 1
        if self._text.startswith("-}}", end):
            # The last space belongs to a " -}}" trim marker.
            end -= 1
            if end == start:
                self._pos = start
                return self._lex_right_delim()
        return self._emit(_T_SPACE, start, end)

    def _at_terminator(self, i: int) -> bool:
        if i >= self._n:
            return True
        ch = self._text[i]
        if ch in " \t\r\n.,|:)(":
            return True
        return self._text.startswith("}}", i)

    def _scan_alnum(self, i: int) -> int:
        text, n = self._text, self._n
        while i < n and _is_alnum(text[i]):
            i += 1
        return i

    def _lex_field_or_variable(self, start: int, kind: int) -> _Token:
        if self._at_terminator(start + 1):
            if kind == _T_VARIABLE:
                return self._emit(_T_VARIABLE, start, start + 1)
            return self._emit(_T_DOT, start, start + 1)
        end = self._scan_alnum(start + 1)
        if not self._at_terminator(end):
            self._error(end, f"bad character {_sharp_u(self._text[end])}")
        return self._emit(kind, start, end)

    def _lex_identifier(self, start: int) -> _Token:
        end = self._scan_alnum(start)
        if not self._at_terminator(end):
            self._error(end, f"bad character {_sharp_u(self._text[end])}")
        word = self._text[start:end]
        kind = _KEYWORDS.get(word)
        if kind is None:
            kind = _T_BOOL if word in ("true", "false") else _T_IDENT
        return self._emit(kind, start, end)

    def _lex_quoted(self, start: int, stop: re.Pattern[str], kind: int, reason: str) -> _Token:
        text, n = self._text, self._n
        quote = text[start]
        i = start + 1
        while True:
            match = stop.search(text, i)
            if match is None:
                self._error(start, reason)
            j = match.start()
            ch = text[j]
            if ch == quote:
                return self._emit(kind, start, j + 1)
            if ch == "\n" or j + 1 >= n or text[j + 1] == "\n":
                self._error(start, reason)
            i = j + 2

    def _lex_number(self, start: int) -> _Token:
        ok, end = self._scan_number(start)
        if not ok:
            self._error(start, f"bad number syntax: {_go_quote(self._text[start:end])}")
        if end < self._n and self._text[end] in "+-":
            ok, end = self._scan_number(end)
            if not ok or self._text[end - 1] != "i":
                self._error(start, f"bad number syntax: {_go_quote(self._text[start:end])}")
            return self._emit(_T_COMPLEX, start, end)
        return self._emit(_T_NUMBER, start, end)

    def _scan_number(self, i: int) -> tuple[bool, int]:
        text, n = self._text, self._n

        def accept(i: int, valid: str) -> int:
            return i + 1 if i < n and text[i] in valid else i

        def accept_run(i: int, valid: str) -> int:
            while i < n and text[i] in valid:
                i += 1
            return i

        i = accept(i, "+-")
        digits = "0123456789_"
        if i < n and text[i] == "0":
            i += 1
            if i < n and text[i] in "xX":
                digits = "0123456789abcdefABCDEF_"
                i += 1
            elif i < n and text[i] in "oO":
                digits = "01234567_"
                i += 1
            elif i < n and text[i] in "bB":
                digits = "01_"
                i += 1
        i = accept_run(i, digits)
        if i < n and text[i] == ".":
            i = accept_run(i + 1, digits)
        if len(digits) == 11 and i < n and text[i] in "eE":
            i = accept_run(accept(i + 1, "+-"), "0123456789_")
        if len(digits) == 23 and i < n and text[i] in "pP":
            i = accept_run(accept(i + 1, "+-"), "0123456789_")
        i = accept(i, "i")
        if i < n and _is_alnum(text[i]):
            return False, i + 1
        return True, i


# --------------------------------------------------------------------------
# Parse tree (text/template/parse/node.go)


@dataclass(slots=True, eq=False)
class _Text:
    pos: int
    text: str


@dataclass(slots=True, eq=False)
class _Dot:
    pos: int


@dataclass(slots=True, eq=False)
class _Nil:
    pos: int


@dataclass(slots=True, eq=False)
class _Bool:
    pos: int
    value: bool


@dataclass(slots=True, eq=False)
class _Number:
    pos: int
    src: str
    value: int | float | None
    error: str | None


@dataclass(slots=True, eq=False)
class _String:
    pos: int
    src: str
    value: str


@dataclass(slots=True, eq=False)
class _Field:
    """``.a.b``: ``names`` with the position of each segment."""

    pos: int
    names: list[str]
    name_pos: list[int]


@dataclass(slots=True, eq=False)
class _Variable:
    """``$`` optionally followed by fields, as in ``$.a.b``."""

    pos: int
    names: list[str]
    name_pos: list[int]


@dataclass(slots=True, eq=False)
class _Identifier:
    pos: int
    name: str


@dataclass(slots=True, eq=False)
class _Command:
    pos: int
    args: list[_Arg] = field(default_factory=list)


@dataclass(slots=True, eq=False)
class _Pipe:
    pos: int
    cmds: list[_Command] = field(default_factory=list)


@dataclass(slots=True, eq=False)
class _Chain:
    """``(pipeline).a.b`` or ``func.a``: fields applied to a computed value."""

    pos: int
    node: _Arg
    names: list[str]
    name_pos: list[int]


@dataclass(slots=True, eq=False)
class _Action:
    pos: int
    pipe: _Pipe


@dataclass(slots=True, eq=False)
class _Branch:
    pipe: _Pipe
    body: list[_Node]


@dataclass(slots=True, eq=False)
class _Cond:
    """An ``if`` or ``with`` block; ``else if``/``else with`` chains are flattened."""

    pos: int
    is_with: bool
    branches: list[_Branch]
    else_body: list[_Node] | None


@dataclass(slots=True, eq=False)
class _End:
    pos: int


@dataclass(slots=True, eq=False)
class _Else:
    pos: int


_Arg = _Field | _Chain | _Variable | _Dot | _Nil | _Bool | _Number | _String | _Identifier | _Pipe
_Node = _Text | _Action | _Cond


def _node_str(node: _Arg) -> str:
    """Go's Node.String(), for error messages."""
    if isinstance(node, _Dot):
        return "."
    if isinstance(node, _Nil):
        return "nil"
    if isinstance(node, _Bool):
        return "true" if node.value else "false"
    if isinstance(node, (_Number, _String)):
        return node.src
    if isinstance(node, _Field):
        return "".join("." + name for name in node.names)
    if isinstance(node, _Variable):
        return "$" + "".join("." + name for name in node.names)
    if isinstance(node, _Identifier):
        return node.name
    if isinstance(node, _Pipe):
        cmds = (" ".join(_node_str(arg) for arg in cmd.args) for cmd in node.cmds)
        return "(" + " | ".join(cmds) + ")"
    return _node_str(node.node) + "".join("." + name for name in node.names)


_FIXED_ARITY: Final = MappingProxyType(
    {"not": 1, "ne": 2, "lt": 2, "le": 2, "gt": 2, "ge": 2, "len": 1}
)
_VARIADIC_MIN: Final = MappingProxyType(
    {"and": 1, "or": 1, "eq": 1, "index": 1, "slice": 1, "print": 0, "printf": 1, "println": 0}
)
_UNSUPPORTED_FUNCS: Final = frozenset({"call", "html", "js", "urlquery"})
_SCALAR_NODES: Final = (_Bool, _Dot, _Nil, _Number, _String)


class _Parser:
    """Recursive-descent parser mirroring text/template/parse/parse.go."""

    __slots__ = ("_depth", "_lexer", "_pushed", "_text")

    def __init__(self, text: str) -> None:
        self._text = text
        self._lexer = _Lexer(text)
        self._pushed: list[_Token] = []
        self._depth = 0

    # Token stream.

    def _next(self) -> _Token:
        if self._pushed:
            return self._pushed.pop()
        return self._lexer.next_token()

    def _backup(self, tok: _Token) -> None:
        self._pushed.append(tok)

    def _peek(self) -> _Token:
        tok = self._next()
        self._backup(tok)
        return tok

    def _next_non_space(self) -> _Token:
        tok = self._next()
        while tok.kind == _T_SPACE:
            tok = self._next()
        return tok

    def _peek_non_space(self) -> _Token:
        tok = self._next_non_space()
        self._backup(tok)
        return tok

    def _fail(self, pos: int, reason: str) -> NoReturn:
        _fail(self._text, pos, reason)

    def _unexpected(self, tok: _Token, context: str) -> NoReturn:
        self._fail(tok.pos, f"unexpected {_token_desc(tok)} in {context}")

    def _expect(self, kind: int, context: str) -> _Token:
        tok = self._next_non_space()
        if tok.kind != kind:
            self._unexpected(tok, context)
        return tok

    def _enter(self, pos: int) -> None:
        self._depth += 1
        if self._depth > _MAX_DEPTH:
            self._fail(
                pos,
                f"template is nested too deeply (more than {_MAX_DEPTH} levels of "
                "parentheses and {{if}}/{{with}} blocks)",
            )

    # Grammar.

    def parse(self) -> list[_Node]:
        root: list[_Node] = []
        while self._peek().kind != _T_EOF:
            node = self._text_or_action()
            if isinstance(node, _End):
                self._fail(node.pos, "unexpected {{end}}: there is no open {{if}} or {{with}}")
            if isinstance(node, _Else):
                self._fail(node.pos, "unexpected {{else}}: there is no open {{if}} or {{with}}")
            root.append(node)
        return root

    def _text_or_action(self) -> _Node | _End | _Else:
        tok = self._next_non_space()
        if tok.kind == _T_TEXT:
            return _Text(tok.pos, tok.val)
        if tok.kind == _T_LEFT_DELIM:
            return self._action(tok)
        self._unexpected(tok, "input")

    def _action(self, delim: _Token) -> _Node | _End | _Else:
        tok = self._next_non_space()
        kind = tok.kind
        if kind in _UNSUPPORTED_KEYWORDS:
            self._fail(tok.pos, f"{_go_quote(tok.val)} is not supported")
        if kind == _T_ELSE:
            peek = self._peek_non_space()
            if peek.kind not in (_T_IF, _T_WITH):
                self._expect(_T_RIGHT_DELIM, "else")
            return _Else(delim.pos)
        if kind == _T_END:
            self._expect(_T_RIGHT_DELIM, "end")
            return _End(delim.pos)
        if kind in (_T_IF, _T_WITH):
            return self._control(delim, tok)
        self._backup(tok)
        return _Action(delim.pos, self._pipeline("command", _T_RIGHT_DELIM))

    def _control(self, delim: _Token, keyword: _Token) -> _Cond:
        self._enter(keyword.pos)
        is_with = keyword.kind == _T_WITH
        context = "with" if is_with else "if"
        branches: list[_Branch] = []
        else_body: list[_Node] | None = None
        pipe = self._pipeline(context, _T_RIGHT_DELIM)
        while True:
            body, ending = self._item_list(context, delim.pos)
            branches.append(_Branch(pipe, body))
            if isinstance(ending, _End):
                break
            if self._peek().kind == keyword.kind:  # {{else if ...}} / {{else with ...}}
                self._next()
                pipe = self._pipeline(context, _T_RIGHT_DELIM)
                continue
            else_body, ending = self._item_list(context, delim.pos)
            if not isinstance(ending, _End):
                self._fail(ending.pos, "expected {{end}}; found a second {{else}}")
            break
        self._depth -= 1
        return _Cond(delim.pos, is_with, branches, else_body)

    def _item_list(self, context: str, open_pos: int) -> tuple[list[_Node], _End | _Else]:
        body: list[_Node] = []
        while True:
            tok = self._peek_non_space()
            if tok.kind == _T_EOF:
                line, _ = _line_col(self._text, open_pos)
                self._fail(
                    tok.pos,
                    f"unexpected EOF, missing {{{{end}}}} for {{{{{context}}}}} at line {line}",
                )
            node = self._text_or_action()
            if isinstance(node, (_End, _Else)):
                return body, node
            body.append(node)

    def _pipeline(self, context: str, end: int) -> _Pipe:
        pipe = _Pipe(self._peek_non_space().pos)
        first = self._peek_non_space()
        if first.kind == _T_VARIABLE:
            self._next()
            after = self._peek()
            following = self._peek_non_space()
            if following.kind in (_T_ASSIGN, _T_DECLARE) or (
                following.kind == _T_CHAR and following.val == ","
            ):
                self._fail(first.pos, "variables are not supported")
            if after.kind == _T_SPACE:
                self._backup(after)
            self._backup(first)
        while True:
            tok = self._next_non_space()
            if tok.kind == end:
                self._check_pipeline(pipe, context, tok)
                return pipe
            if tok.kind not in _OPERAND_START:
                self._unexpected(tok, context)
            self._backup(tok)
            pipe.cmds.append(self._command())

    def _check_pipeline(self, pipe: _Pipe, context: str, end: _Token) -> None:
        if not pipe.cmds:
            self._fail(end.pos, f"missing value for {context}")
        for stage, cmd in enumerate(pipe.cmds[1:], start=2):
            head = cmd.args[0]
            if isinstance(head, _SCALAR_NODES):
                self._fail(head.pos, f"non executable command in pipeline stage {stage}")

    def _command(self) -> _Command:
        cmd = _Command(self._peek_non_space().pos)
        while True:
            self._peek_non_space()
            operand = self._operand()
            if operand is not None:
                cmd.args.append(operand)
            tok = self._next()
            if tok.kind == _T_SPACE:
                continue
            if tok.kind in (_T_RIGHT_DELIM, _T_RPAREN):
                self._backup(tok)
            elif tok.kind != _T_PIPE:
                self._unexpected(tok, "operand")
            break
        if not cmd.args:
            self._fail(cmd.pos, "empty command")
        return cmd

    def _operand(self) -> _Arg | None:
        node = self._term()
        if node is None or self._peek().kind != _T_FIELD:
            return node
        names: list[str] = []
        positions: list[int] = []
        while self._peek().kind == _T_FIELD:
            tok = self._next()
            names.append(tok.val[1:])
            positions.append(tok.pos)
        if isinstance(node, (_Field, _Variable)):
            node.names.extend(names)
            node.name_pos.extend(positions)
            return node
        if isinstance(node, _SCALAR_NODES):
            self._fail(positions[0], f"unexpected . after term {_go_quote(_node_str(node))}")
        return _Chain(node.pos, node, names, positions)

    def _term(self) -> _Arg | None:
        tok = self._next_non_space()
        kind = tok.kind
        if kind == _T_IDENT:
            name = tok.val
            if name not in _FIXED_ARITY and name not in _VARIADIC_MIN:
                if name in _UNSUPPORTED_FUNCS:
                    self._fail(tok.pos, f"function {_go_quote(name)} is not supported")
                self._fail(tok.pos, f"function {_go_quote(name)} not defined")
            return _Identifier(tok.pos, name)
        if kind == _T_DOT:
            return _Dot(tok.pos)
        if kind == _T_NIL:
            return _Nil(tok.pos)
        if kind == _T_VARIABLE:
            if tok.val != "$":
                self._fail(
                    tok.pos,
                    f"undefined variable {_go_quote(tok.val)} (variables are not supported)",
                )
            return _Variable(tok.pos, [], [])
        if kind == _T_FIELD:
            return _Field(tok.pos, [tok.val[1:]], [tok.pos])
        if kind == _T_BOOL:
            return _Bool(tok.pos, tok.val == "true")
        if kind in (_T_NUMBER, _T_CHAR_CONST, _T_COMPLEX):
            return self._number(tok)
        if kind == _T_LPAREN:
            self._enter(tok.pos)
            pipe = self._pipeline("parenthesized pipeline", _T_RPAREN)
            self._depth -= 1
            return pipe
        if kind in (_T_STRING, _T_RAW_STRING):
            try:
                value = _unquote_string(tok.val)
            except _BadLiteralError as exc:
                self._fail(tok.pos, f"invalid string {_go_quote_trunc(tok.val)}: {exc}")
            return _String(tok.pos, tok.val, value)
        self._backup(tok)
        return None

    def _number(self, tok: _Token) -> _Number:
        try:
            if tok.kind == _T_CHAR_CONST:
                if tok.val == "''":
                    raise _BadLiteralError("empty character constant ''")
                value, _, end = _unquote_char(tok.val, 1, "'")
                if tok.val[end:] != "'":
                    raise _BadLiteralError(f"malformed character constant: {tok.val}")
                return _Number(tok.pos, tok.val, value, None)
            if tok.kind == _T_COMPLEX:
                raise _BadLiteralError("complex numbers are not supported")
            number, error = _parse_number(tok.val)
        except _BadLiteralError as exc:
            self._fail(tok.pos, str(exc))
        except IndexError:  # a character constant such as '' or '\'
            self._fail(tok.pos, f"malformed character constant: {tok.val}")
        return _Number(tok.pos, tok.val, number, error)


# --------------------------------------------------------------------------
# Values


@dataclass(frozen=True, slots=True)
class _Byte:
    """A Go ``uint8``, as returned by ``index`` on a string."""

    value: int


_Value = str | int | float | bool | None | _Byte | Mapping[str, str]


class _Missing:
    """Marks "no value piped in" (Go's missingVal)."""


_MISSING: Final = _Missing()


def _type_name(value: _Value) -> str:
    if value is None:
        return "<nil>"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float64"
    if isinstance(value, str):
        return "string"
    if isinstance(value, _Byte):
        return "uint8"
    return "map[string]string"


def _truth(value: _Value) -> bool:
    if value is None:
        return False
    if isinstance(value, (bool, int, float)):
        return value != 0
    if isinstance(value, _Byte):
        return value.value != 0
    return len(value) > 0


# --------------------------------------------------------------------------
# fmt (fmt/print.go and fmt/format.go)


def _shortest_digits(a: float) -> tuple[str, int]:
    """Shortest round-trip decimal digits of ``a >= 0`` and the decimal point position."""
    if a == 0:
        return "", 0
    text = repr(a)
    mantissa, _, exponent = text.partition("e")
    int_part, _, frac_part = mantissa.partition(".")
    digits = int_part + frac_part
    point = len(int_part) + (int(exponent) if exponent else 0)
    stripped = digits.lstrip("0")
    point -= len(digits) - len(stripped)
    return stripped.rstrip("0"), point


def _fmt_e(digits: str, point: int, prec: int, letter: str) -> str:
    out = digits[0] if digits else "0"
    if prec > 0:
        out += "." + digits[1 : 1 + prec].ljust(prec, "0")
    exp = point - 1 if digits else 0
    sign = "-" if exp < 0 else "+"
    return f"{out}{letter}{sign}{abs(exp):02d}"


def _fmt_f(digits: str, point: int, prec: int) -> str:
    out = digits[:point].ljust(point, "0") if point > 0 else "0"
    if prec > 0:
        frac = "".join(
            digits[j] if 0 <= j < len(digits) else "0" for j in range(point, point + prec)
        )
        out += "." + frac
    return out


def _float_parts(a: float) -> tuple[int, int]:
    """Mantissa and unbiased exponent of ``a >= 0`` as in Go's FormatFloat."""
    bits: int = struct.unpack("<Q", struct.pack("<d", a))[0]
    exp = (bits >> 52) & 0x7FF
    mant = bits & ((1 << 52) - 1)
    if exp == 0:
        exp = 1
    else:
        mant |= 1 << 52
    return mant, exp - 1023


def _fmt_hex_float(a: float, prec: int, verb: str) -> str:
    mant, exp = _float_parts(a)
    if mant == 0:
        exp = 0
    mant <<= 60 - 52
    while mant != 0 and mant & (1 << 60) == 0:
        mant <<= 1
        exp -= 1
    if 0 <= prec < 15:
        shift = prec * 4
        extra = (mant << shift) & ((1 << 60) - 1)
        mant >>= 60 - shift
        if extra | (mant & 1) > 1 << 59:
            mant += 1
        mant <<= 60 - shift
        if mant & (1 << 61):
            mant >>= 1
            exp += 1
    digits = _LOWER_DIGITS if verb == "x" else _UPPER_DIGITS
    out = ["0", verb, "1" if (mant >> 60) & 1 else "0"]
    mant = (mant << 4) & _MASK64
    if prec < 0 and mant != 0:
        out.append(".")
        while mant != 0:
            out.append(digits[(mant >> 60) & 15])
            mant = (mant << 4) & _MASK64
    elif prec > 0:
        out.append(".")
        for _ in range(prec):
            out.append(digits[(mant >> 60) & 15])
            mant = (mant << 4) & _MASK64
    out.append("p" if verb == "x" else "P")
    out.append("-" if exp < 0 else "+")
    out.append(f"{abs(exp):02d}")
    return "".join(out)


def _format_float(v: float, verb: str, prec: int) -> str:
    """Go's strconv.FormatFloat(v, verb, prec, 64)."""
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    sign = "-" if math.copysign(1.0, v) < 0 else ""
    a = abs(v)
    if verb == "b":
        mant, exp = _float_parts(a)
        exp -= 52
        return f"{sign}{mant}p{'+' if exp >= 0 else ''}{exp}"
    if verb in "xX":
        return sign + _fmt_hex_float(a, prec, verb)
    if prec < 0:
        digits, point = _shortest_digits(a)
        if verb in "eE":
            body = _fmt_e(digits, point, len(digits) - 1, verb)
        elif verb == "f":
            body = _fmt_f(digits, point, max(len(digits) - point, 0))
        else:
            exp = point - 1 if digits else -1
            if exp < -4 or exp >= 6:  # shortest %g switches to %e at 1e+06
                body = _fmt_e(digits, point, len(digits) - 1, "e" if verb == "g" else "E")
            else:
                body = _fmt_f(digits, point, max(len(digits) - point, 0))
        return sign + body
    if verb in "gG" and prec == 0:
        prec = 1
    return sign + format(a, f".{prec}{verb}")


class _Printer:
    """One Go ``pp`` printer with its ``fmt`` flags."""

    __slots__ = (
        "buf",
        "close_at",
        "close_from",
        "good_arg_num",
        "minus",
        "plus",
        "plus_v",
        "prec",
        "prec_present",
        "reordered",
        "sharp",
        "sharp_v",
        "size",
        "space",
        "wid",
        "wid_present",
        "zero",
    )

    def __init__(self) -> None:
        self.buf: list[str] = []
        self.size = 0
        self.reordered = False
        self.good_arg_num = True
        self.close_from = 1 << 62  # no search done yet
        self.close_at = -1
        self.clear_flags()

    def clear_flags(self) -> None:
        self.wid = 0
        self.prec = 0
        self.wid_present = False
        self.prec_present = False
        self.minus = False
        self.plus = False
        self.sharp = False
        self.space = False
        self.zero = False
        self.plus_v = False
        self.sharp_v = False

    def result(self) -> str:
        return "".join(self.buf)

    def write(self, s: str) -> None:
        self.size += len(s)
        if self.size > _MAX_OUTPUT:
            raise _TooLargeError
        self.buf.append(s)

    def write_padding(self, n: int) -> None:
        if n > 0:
            self.write(("0" if self.zero and not self.minus else " ") * n)

    def pad(self, s: str) -> None:
        if not self.wid_present or self.wid == 0:
            self.write(s)
        elif self.minus:
            self.write(s)
            self.write_padding(self.wid - len(s))
        else:
            self.write_padding(self.wid - len(s))
            self.write(s)

    def pad_no_zero(self, s: str) -> None:
        zero = self.zero
        self.zero = False
        self.pad(s)
        self.zero = zero

    # Arguments.

    def print_arg(self, arg: _Value, verb: str) -> None:
        if arg is None:
            if verb in ("T", "v"):
                self.pad("<nil>")
            else:
                self.bad_verb(verb, arg)
            return
        if verb == "T":
            self.fmt_s(_type_name(arg))
        elif verb == "p":
            self.bad_verb(verb, arg)
        elif isinstance(arg, bool):
            if verb in ("t", "v"):
                self.pad("true" if arg else "false")
            else:
                self.bad_verb(verb, arg)
        elif isinstance(arg, int):
            self.fmt_int(arg, True, verb, arg)
        elif isinstance(arg, _Byte):
            self.fmt_int(arg.value, False, verb, arg)
        elif isinstance(arg, float):
            self.fmt_float(arg, verb)
        elif isinstance(arg, str):
            self.fmt_string(arg, verb)
        else:
            self.fmt_map(arg, verb)

    def bad_verb(self, verb: str, arg: _Value) -> None:
        self.write("%!" + verb + "(")
        if arg is None:
            self.write("<nil>")
        else:
            self.write(_type_name(arg) + "=")
            self.print_arg(arg, "v")
        self.write(")")

    def fmt_map(self, m: Mapping[str, str], verb: str) -> None:
        self.write("map[string]string{" if self.sharp_v else "map[")
        for i, key in enumerate(sorted(m)):
            if i > 0:
                self.write(", " if self.sharp_v else " ")
            self.fmt_string(key, verb)
            self.write(":")
            self.fmt_string(m[key], verb)
        self.write("}" if self.sharp_v else "]")

    # Integers.

    def fmt_int(self, value: int, signed: bool, verb: str, arg: _Value) -> None:
        if verb == "v":
            if self.sharp_v and not signed:
                sharp = self.sharp
                self.sharp = True
                self.fmt_integer(value, 16, False, "v", _LOWER_DIGITS)
                self.sharp = sharp
            else:
                self.fmt_integer(value, 10, signed, verb, _LOWER_DIGITS)
        elif verb == "d":
            self.fmt_integer(value, 10, signed, verb, _LOWER_DIGITS)
        elif verb == "b":
            self.fmt_integer(value, 2, signed, verb, _LOWER_DIGITS)
        elif verb in ("o", "O"):
            self.fmt_integer(value, 8, signed, verb, _LOWER_DIGITS)
        elif verb == "x":
            self.fmt_integer(value, 16, signed, verb, _LOWER_DIGITS)
        elif verb == "X":
            self.fmt_integer(value, 16, signed, verb, _UPPER_DIGITS)
        elif verb == "c":
            self.pad(chr(_valid_rune(value & _MASK64)))
        elif verb == "q":
            code = value & _MASK64
            if code <= _MAX_RUNE:
                self.pad(_go_quote(chr(_valid_rune(code)), self.plus, "'"))
            else:
                self.bad_verb(verb, arg)
        elif verb == "U":
            self.fmt_unicode(value & _MASK64)
        else:
            self.bad_verb(verb, arg)

    def fmt_integer(self, value: int, base: int, signed: bool, verb: str, digits: str) -> None:
        negative = signed and value < 0
        u = -value if negative else value
        prec = 0
        if self.prec_present:
            prec = self.prec
            if prec == 0 and u == 0:
                zero = self.zero
                self.zero = False
                self.write_padding(self.wid)
                self.zero = zero
                return
        elif self.zero and not self.minus and self.wid_present:
            prec = self.wid
            if negative or self.plus or self.space:
                prec -= 1
        if base == 10:
            text = str(u)
        elif base == 16:
            text = format(u, "x" if digits is _LOWER_DIGITS else "X")
        elif base == 8:
            text = format(u, "o")
        else:
            text = format(u, "b")
        if len(text) < prec:
            text = "0" * (prec - len(text)) + text
        if self.sharp:
            if base == 2:
                text = "0b" + text
            elif base == 8 and text[0] != "0":
                text = "0" + text
            elif base == 16:
                text = "0" + digits[16] + text
        if verb == "O":
            text = "0o" + text
        if negative:
            text = "-" + text
        elif self.plus:
            text = "+" + text
        elif self.space:
            text = " " + text
        self.pad_no_zero(text)

    def fmt_unicode(self, u: int) -> None:
        prec = self.prec if self.prec_present and self.prec > 4 else 4
        text = "U+" + format(u, "X").rjust(prec, "0")
        if self.sharp and u <= _MAX_RUNE and _is_go_print(chr(u)) and not 0xD800 <= u <= 0xDFFF:
            text += " '" + chr(u) + "'"
        self.pad_no_zero(text)

    # Floats.

    def fmt_float(self, v: float, verb: str) -> None:
        if verb == "v":
            self.fmt_float_verb(v, "g", -1)
        elif verb in ("b", "g", "G", "x", "X"):
            self.fmt_float_verb(v, verb, -1)
        elif verb in ("f", "e", "E"):
            self.fmt_float_verb(v, verb, 6)
        elif verb == "F":
            self.fmt_float_verb(v, "f", 6)
        else:
            self.bad_verb(verb, v)

    def fmt_float_verb(self, v: float, verb: str, prec: int) -> None:
        if self.prec_present:
            prec = self.prec
        num = _format_float(v, verb, prec)
        if num[0] in "+-":
            sign, body = num[0], num[1:]
        else:
            sign, body = "+", num
        if self.space and sign == "+" and not self.plus:
            sign = " "
        if body[0] in "IN":
            if body[0] == "N" and not self.space and not self.plus:
                self.pad_no_zero(body)
            else:
                self.pad_no_zero(sign + body)
            return
        if self.sharp and verb != "b":
            body = self._sharp_float(body, verb, prec)
        if self.plus or sign != "+":
            if self.zero and not self.minus and self.wid_present and self.wid > len(body) + 1:
                self.write(sign)
                self.write_padding(self.wid - len(body) - 1)
                self.write(body)
            else:
                self.pad(sign + body)
            return
        self.pad(body)

    @staticmethod
    def _sharp_float(body: str, verb: str, prec: int) -> str:
        digits = 0
        if verb in ("v", "g", "G", "x"):
            digits = 6 if prec == -1 else prec
        head, tail = body, ""
        for i, ch in enumerate(body):
            if ch in "pP" or (ch in "eE" and verb not in ("x", "X")):
                head, tail = body[:i], body[i:]
                break
        saw_nonzero = False
        for ch in head:
            if ch == ".":
                continue
            if ch != "0":
                saw_nonzero = True
            if saw_nonzero:
                digits -= 1
        if "." not in head:
            if head == "0":
                digits -= 1
            head += "."
        if digits > 0:
            head += "0" * digits
        return head + tail

    # Strings.

    def truncate(self, s: str) -> str:
        if self.prec_present and self.prec < len(s):
            return s[: self.prec]
        return s

    def fmt_s(self, s: str) -> None:
        self.pad(self.truncate(s))

    def fmt_string(self, s: str, verb: str) -> None:
        if verb == "v":
            if self.sharp_v:
                self.fmt_q(s)
            else:
                self.fmt_s(s)
        elif verb == "s":
            self.fmt_s(s)
        elif verb == "x":
            self.fmt_sx(s, _LOWER_DIGITS)
        elif verb == "X":
            self.fmt_sx(s, _UPPER_DIGITS)
        elif verb == "q":
            self.fmt_q(s)
        else:
            self.bad_verb(verb, s)

    def fmt_sx(self, s: str, digits: str) -> None:
        data = _go_bytes(s)
        length = len(data)
        if self.prec_present and self.prec < length:
            length = self.prec
        width = 2 * length
        if width <= 0:
            if self.wid_present:
                self.write_padding(self.wid)
            return
        if self.space:
            if self.sharp:
                width *= 2
            width += length - 1
        elif self.sharp:
            width += 2
        if self.wid_present and self.wid > width and not self.minus:
            self.write_padding(self.wid - width)
        prefix = "0" + digits[16]
        out: list[str] = [prefix] if self.sharp else []
        for i in range(length):
            if self.space and i > 0:
                out.append(" " + prefix if self.sharp else " ")
            byte = data[i]
            out.append(digits[byte >> 4] + digits[byte & 15])
        self.write("".join(out))
        if self.wid_present and self.wid > width and self.minus:
            self.write_padding(self.wid - width)

    def fmt_q(self, s: str) -> None:
        s = self.truncate(s)
        if self.sharp and _can_backquote(s):
            self.pad("`" + s + "`")
        else:
            self.pad(_go_quote(s, self.plus))

    # Printf helpers.

    def arg_number(self, arg_num: int, fmt: str, i: int, num_args: int) -> tuple[int, int, bool]:
        if i >= len(fmt) or fmt[i] != "[":
            return arg_num, i, False
        self.reordered = True
        index, width, ok = self._parse_arg_number(fmt, i)
        if ok and 0 <= index < num_args:
            return index, i + width, True
        self.good_arg_num = False
        return arg_num, i + width, ok

    def _parse_arg_number(self, fmt: str, start: int) -> tuple[int, int, bool]:
        if len(fmt) - start < 3:
            return 0, 1, False
        # Positions only move forward, so one search serves every later call.
        if not (self.close_from <= start + 1 and (self.close_at < 0 or self.close_at > start)):
            self.close_from = start + 1
            self.close_at = fmt.find("]", start + 1)
        close = self.close_at
        if close < 0:
            return 0, 1, False
        num, ok, end = _parsenum(fmt, start + 1, close)
        if not ok or end != close:
            return 0, close - start + 1, False
        return num - 1, close - start + 1, True


def _valid_rune(code: int) -> int:
    if code > _MAX_RUNE or 0xD800 <= code <= 0xDFFF:
        return 0xFFFD
    return code


def _can_backquote(s: str) -> bool:
    for ch in s:
        code = ord(ch)
        if code == 0xFEFF or 0xD800 <= code <= 0xDFFF:
            return False
        if (code < 0x20 and ch != "\t") or ch == "`" or code == 0x7F:
            return False
    return True


def _parsenum(s: str, start: int, end: int) -> tuple[int, bool, int]:
    if start >= end:
        return 0, False, end
    num = 0
    isnum = False
    i = start
    while i < end and "0" <= s[i] <= "9":
        if num > 1_000_000:
            return 0, False, end
        num = num * 10 + ord(s[i]) - 48
        isnum = True
        i += 1
    return num, isnum, i


def _int_from_arg(args: Sequence[_Value], arg_num: int) -> tuple[int, bool, int]:
    if arg_num >= len(args):
        return 0, False, arg_num
    arg = args[arg_num]
    num = 0
    is_int = False
    if isinstance(arg, int) and not isinstance(arg, bool):
        num, is_int = arg, True
    elif isinstance(arg, _Byte):
        num, is_int = arg.value, True
    if num > 1_000_000 or num < -1_000_000:
        num, is_int = 0, False
    return num, is_int, arg_num + 1


def _sprint(args: Sequence[_Value]) -> str:
    printer = _Printer()
    prev_string = False
    for i, arg in enumerate(args):
        is_string = isinstance(arg, str)
        if i > 0 and not is_string and not prev_string:
            printer.write(" ")
        printer.print_arg(arg, "v")
        prev_string = is_string
    return printer.result()


def _sprintln(args: Sequence[_Value]) -> str:
    printer = _Printer()
    for i, arg in enumerate(args):
        if i > 0:
            printer.write(" ")
        printer.print_arg(arg, "v")
    printer.write("\n")
    return printer.result()


def _sprintf(fmt: str, args: Sequence[_Value]) -> str:
    """Go's fmt.Sprintf (doPrintf)."""
    p = _Printer()
    end = len(fmt)
    arg_num = 0
    after_index = False
    i = 0
    while i < end:
        p.good_arg_num = True
        j = fmt.find("%", i)
        if j < 0:
            j = end
        if j > i:
            p.write(fmt[i:j])
        i = j
        if i >= end:
            break
        i += 1
        p.clear_flags()
        simple = False
        while i < end:
            ch = fmt[i]
            if ch == "#":
                p.sharp = True
            elif ch == "0":
                p.zero = not p.minus
            elif ch == "+":
                p.plus = True
            elif ch == "-":
                p.minus = True
                p.zero = False
            elif ch == " ":
                p.space = True
            else:
                if "a" <= ch <= "z" and arg_num < len(args):
                    if ch == "v":
                        p.sharp_v, p.sharp = p.sharp, False
                        p.plus_v, p.plus = p.plus, False
                    p.print_arg(args[arg_num], ch)
                    arg_num += 1
                    i += 1
                    simple = True
                break
            i += 1
        if simple:
            continue
        arg_num, i, after_index = p.arg_number(arg_num, fmt, i, len(args))
        if i < end and fmt[i] == "*":
            i += 1
            p.wid, p.wid_present, arg_num = _int_from_arg(args, arg_num)
            if not p.wid_present:
                p.write("%!(BADWIDTH)")
            if p.wid < 0:
                p.wid = -p.wid
                p.minus = True
                p.zero = False
            after_index = False
        else:
            p.wid, p.wid_present, i = _parsenum(fmt, i, end)
            if after_index and p.wid_present:
                p.good_arg_num = False
        if i + 1 < end and fmt[i] == ".":
            i += 1
            if after_index:
                p.good_arg_num = False
            arg_num, i, after_index = p.arg_number(arg_num, fmt, i, len(args))
            if i < end and fmt[i] == "*":
                i += 1
                p.prec, p.prec_present, arg_num = _int_from_arg(args, arg_num)
                if p.prec < 0:
                    p.prec = 0
                    p.prec_present = False
                if not p.prec_present:
                    p.write("%!(BADPREC)")
                after_index = False
            else:
                p.prec, p.prec_present, i = _parsenum(fmt, i, end)
                if not p.prec_present:
                    p.prec = 0
                    p.prec_present = True
        if not after_index:
            arg_num, i, after_index = p.arg_number(arg_num, fmt, i, len(args))
        if i >= end:
            p.write("%!(NOVERB)")
            break
        verb = fmt[i]
        i += 1
        if verb == "%":
            p.write("%")
        elif not p.good_arg_num:
            p.write("%!" + verb + "(BADINDEX)")
        elif arg_num >= len(args):
            p.write("%!" + verb + "(MISSING)")
        else:
            if verb == "v":
                p.sharp_v, p.sharp = p.sharp, False
                p.plus_v, p.plus = p.plus, False
            p.print_arg(args[arg_num], verb)
            arg_num += 1
    if not p.reordered and arg_num < len(args):
        p.clear_flags()
        p.write("%!(EXTRA ")
        for k, arg in enumerate(args[arg_num:]):
            if k > 0:
                p.write(", ")
            if arg is None:
                p.write("<nil>")
            else:
                p.write(_type_name(arg) + "=")
                p.print_arg(arg, "v")
        p.write(")")
    return p.result()


# --------------------------------------------------------------------------
# Builtin functions (text/template/funcs.go)


def _basic_kind(value: _Value) -> str | None:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, _Byte):
        return "uint"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "string"
    return None


def _int_of(value: _Value) -> int:
    if isinstance(value, _Byte):
        return value.value
    if isinstance(value, int):
        return value
    return 0


def _same_string(a: str, b: str) -> bool:
    if _SURROGATE.search(a) or _SURROGATE.search(b):
        return _go_bytes(a) == _go_bytes(b)
    return a == b


def _less_string(a: str, b: str) -> bool:
    if _SURROGATE.search(a) or _SURROGATE.search(b):
        return _go_bytes(a) < _go_bytes(b)
    return a < b


def _incompatible(a: _Value, b: _Value) -> _CallError:
    return _CallError(f"incompatible types for comparison: {_type_name(a)} and {_type_name(b)}")


def _builtin_eq(a: _Value, others: Sequence[_Value]) -> bool:
    if not others:
        raise _CallError("missing argument for comparison")
    k1 = _basic_kind(a)
    for b in others:
        k2 = _basic_kind(b)
        if k1 != k2:
            if {k1, k2} == {"int", "uint"}:
                truth = _int_of(a) == _int_of(b)
            elif a is not None and b is not None:
                raise _incompatible(a, b)
            else:
                truth = False
        elif isinstance(a, str) and isinstance(b, str):
            truth = _same_string(a, b)
        elif k1 is not None:
            truth = a == b
        elif a is None or b is None:
            truth = a is None and b is None
        else:
            raise _CallError(f"non-comparable type {_sprint([b])}: {_type_name(b)}")
        if truth:
            return True
    return False


def _builtin_lt(a: _Value, b: _Value) -> bool:
    k1 = _basic_kind(a)
    k2 = _basic_kind(b)
    if k1 is None or k2 is None:
        raise _CallError("invalid type for comparison")
    if k1 != k2:
        if {k1, k2} == {"int", "uint"}:
            return _int_of(a) < _int_of(b)
        raise _incompatible(a, b)
    if k1 == "bool":
        raise _CallError("invalid type for comparison")
    if isinstance(a, str) and isinstance(b, str):
        return _less_string(a, b)
    if isinstance(a, float) and isinstance(b, float):
        return a < b
    return _int_of(a) < _int_of(b)


def _builtin_len(value: _Value) -> int:
    if isinstance(value, str):
        return len(_go_bytes(value))
    if isinstance(value, Mapping):
        return len(value)
    raise _CallError(f"len of type {_type_name(value)}")


def _index_arg(index: _Value, limit: int, allow_end: bool) -> int:
    if isinstance(index, bool) or not isinstance(index, (int, _Byte)):
        if index is None:
            raise _CallError("cannot index slice/array with nil")
        raise _CallError(f"cannot index slice/array with type {_type_name(index)}")
    x = _int_of(index)
    if x < 0 or x > limit or (x == limit and not allow_end):
        raise _CallError(f"index out of range: {x}")
    return x


def _builtin_index(item: _Value, indexes: Sequence[_Value]) -> _Value:
    if item is None:
        raise _CallError("index of untyped nil")
    for index in indexes:
        if isinstance(item, str):
            data = _go_bytes(item)
            item = _Byte(data[_index_arg(index, len(data), False)])
        elif isinstance(item, Mapping):
            if not isinstance(index, str):
                if index is None:
                    raise _CallError("value is nil; should be of type string")
                raise _CallError(f"value has type {_type_name(index)}; should be string")
            item = item.get(index, "")
        else:
            raise _CallError(f"can't index item of type {_type_name(item)}")
    return item


def _builtin_slice(item: _Value, indexes: Sequence[_Value]) -> _Value:
    if item is None:
        raise _CallError("slice of untyped nil")
    if len(indexes) > 3:
        raise _CallError(f"too many slice indexes: {len(indexes)}")
    if not isinstance(item, str):
        raise _CallError(f"can't slice item of type {_type_name(item)}")
    if len(indexes) == 3:
        raise _CallError("cannot 3-index slice a string")
    data = _go_bytes(item)
    bounds = [0, len(data)]
    for i, index in enumerate(indexes):
        bounds[i] = _index_arg(index, len(data), True)
    if bounds[0] > bounds[1]:
        raise _CallError(f"invalid slice index: {bounds[0]} > {bounds[1]}")
    return _from_bytes(data[bounds[0] : bounds[1]])


# --------------------------------------------------------------------------
# Executor (text/template/exec.go)


class _Executor:
    __slots__ = ("_out", "_root", "_size", "_text")

    def __init__(self, text: str, root: dict[str, str]) -> None:
        self._text = text
        self._root = root
        self._out: list[str] = []
        self._size = 0

    def _fail(self, pos: int, reason: str) -> NoReturn:
        _fail(self._text, pos, reason)

    def run(self, nodes: list[_Node]) -> str:
        self._walk(nodes, self._root)
        return "".join(self._out)

    def _write(self, pos: int, s: str) -> None:
        self._size += len(s)
        if self._size > _MAX_OUTPUT:
            self._fail(pos, f"rendered output is larger than {_MAX_OUTPUT} characters")
        self._out.append(s)

    def _walk(self, nodes: list[_Node], dot: _Value) -> None:
        for node in nodes:
            if isinstance(node, _Text):
                self._write(node.pos, node.text)
            elif isinstance(node, _Action):
                value = self._eval_pipeline(dot, node.pipe)
                text = "<no value>" if value is None else self._format(node.pos, value)
                self._write(node.pos, text)
            else:
                for branch in node.branches:
                    value = self._eval_pipeline(dot, branch.pipe)
                    if _truth(value):
                        self._walk(branch.body, value if node.is_with else dot)
                        break
                else:
                    if node.else_body is not None:
                        self._walk(node.else_body, dot)

    def _format(self, pos: int, value: _Value) -> str:
        if isinstance(value, str):
            return value
        try:
            return _sprint([value])
        except _TooLargeError:
            self._fail(pos, f"value is larger than {_MAX_OUTPUT} characters")

    def _eval_pipeline(self, dot: _Value, pipe: _Pipe) -> _Value:
        value: _Value | _Missing = _MISSING
        for cmd in pipe.cmds:
            value = self._eval_command(dot, cmd, value)
        return None if isinstance(value, _Missing) else value

    def _not_a_function(self, cmd: _Command, final: _Value | _Missing) -> None:
        if len(cmd.args) > 1 or not isinstance(final, _Missing):
            head = cmd.args[0]
            self._fail(head.pos, f"can't give argument to non-function {_node_str(head)}")

    def _eval_command(self, dot: _Value, cmd: _Command, final: _Value | _Missing) -> _Value:
        head = cmd.args[0]
        has_args = len(cmd.args) > 1 or not isinstance(final, _Missing)
        if isinstance(head, _Field):
            return self._eval_fields(dot, head.names, head.name_pos, has_args)
        if isinstance(head, _Chain):
            receiver = self._eval_arg(dot, head.node)
            return self._eval_fields(receiver, head.names, head.name_pos, has_args)
        if isinstance(head, _Identifier):
            return self._eval_function(dot, head, cmd.args[1:], final)
        if isinstance(head, _Variable) and head.names:
            return self._eval_fields(self._root, head.names, head.name_pos, has_args)
        self._not_a_function(cmd, final)
        if isinstance(head, _Pipe):
            return self._eval_pipeline(dot, head)
        if isinstance(head, _Nil):
            self._fail(head.pos, "nil is not a command")
        return self._eval_arg(dot, head)

    def _eval_fields(
        self, receiver: _Value, names: list[str], positions: list[int], has_args: bool
    ) -> _Value:
        last = len(names) - 1
        for i, name in enumerate(names):
            receiver = self._eval_field(receiver, name, positions[i], has_args and i == last)
        return receiver

    def _eval_field(self, receiver: _Value, name: str, pos: int, has_args: bool) -> _Value:
        if isinstance(receiver, Mapping):
            if has_args:
                self._fail(pos, f"{name} is not a method but has arguments")
            if name in receiver:
                value: str = receiver[name]
                return value
            key = _go_quote(name)
            self._fail(pos, f"no value for variable {key} (map has no entry for key {key})")
        if receiver is None:
            self._fail(pos, f"nil data; no entry for key {_go_quote(name)}")
        self._fail(pos, f"can't evaluate field {name} in type {_type_name(receiver)}")

    def _eval_arg(self, dot: _Value, node: _Arg) -> _Value:
        if isinstance(node, _Dot):
            return dot
        if isinstance(node, _Field):
            return self._eval_fields(dot, node.names, node.name_pos, False)
        if isinstance(node, _Variable):
            return self._eval_fields(self._root, node.names, node.name_pos, False)
        if isinstance(node, _Pipe):
            return self._eval_pipeline(dot, node)
        if isinstance(node, _Identifier):
            return self._eval_function(dot, node, [], _MISSING)
        if isinstance(node, _Chain):
            receiver = self._eval_arg(dot, node.node)
            return self._eval_fields(receiver, node.names, node.name_pos, False)
        if isinstance(node, (_Bool, _String)):
            return node.value
        if isinstance(node, _Number):
            if node.error is not None:
                self._fail(node.pos, node.error)
            return node.value
        return None

    def _eval_value_arg(self, dot: _Value, node: _Arg, name: str) -> _Value:
        if isinstance(node, _Nil):
            self._fail(node.pos, f"cannot use nil as an argument to {name}")
        return self._eval_arg(dot, node)

    def _eval_format_arg(self, dot: _Value, node: _Arg) -> str:
        if isinstance(node, _Nil):
            self._fail(node.pos, "cannot use nil as the format of printf")
        if isinstance(node, (_Bool, _Number)):
            self._fail(node.pos, f"expected string; found {_node_str(node)}")
        value = self._eval_arg(dot, node)
        if not isinstance(value, str):
            self._fail(node.pos, f"wrong type for value; expected string; got {_type_name(value)}")
        return value

    def _eval_function(
        self, dot: _Value, ident: _Identifier, args: list[_Arg], final: _Value | _Missing
    ) -> _Value:
        name = ident.name
        piped = not isinstance(final, _Missing)
        num_in = len(args) + (1 if piped else 0)
        fixed = _FIXED_ARITY.get(name)
        if fixed is not None and num_in != fixed:
            self._fail(ident.pos, f"wrong number of args for {name}: want {fixed} got {num_in}")
        least = _VARIADIC_MIN.get(name, 0)
        if num_in < least:
            self._fail(
                ident.pos, f"wrong number of args for {name}: want at least {least} got {len(args)}"
            )
        if name in ("and", "or"):
            value: _Value = None
            for node in args:
                value = self._eval_value_arg(dot, node, name)
                if _truth(value) == (name == "or"):
                    return value
            return value if isinstance(final, _Missing) else final
        values: list[_Value] = []
        if name == "printf":
            if args:
                values.append(self._eval_format_arg(dot, args[0]))
            elif not isinstance(final, str):
                got = _type_name(None if isinstance(final, _Missing) else final)
                self._fail(ident.pos, f"wrong type for value; expected string; got {got}")
        for node in args[len(values) :]:
            if name in ("print", "printf", "println"):
                values.append(None if isinstance(node, _Nil) else self._eval_arg(dot, node))
            else:
                values.append(self._eval_value_arg(dot, node, name))
        if not isinstance(final, _Missing):
            values.append(final)
        try:
            return self._call(name, values)
        except _CallError as exc:
            self._fail(ident.pos, f"error calling {name}: {exc}")
        except _TooLargeError:
            self._fail(ident.pos, f"result of {name} is larger than {_MAX_OUTPUT} characters")

    @staticmethod
    def _call(name: str, values: list[_Value]) -> _Value:
        if name == "not":
            return not _truth(values[0])
        if name == "eq":
            return _builtin_eq(values[0], values[1:])
        if name == "ne":
            return not _builtin_eq(values[0], values[1:])
        if name == "lt":
            return _builtin_lt(values[0], values[1])
        if name == "le":
            return _builtin_lt(values[0], values[1]) or _builtin_eq(values[0], values[1:])
        if name == "gt":
            return not (_builtin_lt(values[0], values[1]) or _builtin_eq(values[0], values[1:]))
        if name == "ge":
            return not _builtin_lt(values[0], values[1])
        if name == "len":
            return _builtin_len(values[0])
        if name == "index":
            return _builtin_index(values[0], values[1:])
        if name == "slice":
            return _builtin_slice(values[0], values[1:])
        if name == "print":
            return _sprint(values)
        if name == "println":
            return _sprintln(values)
        fmt = values[0]
        assert isinstance(fmt, str)
        return _sprintf(fmt, values[1:])
