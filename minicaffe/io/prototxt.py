"""Protocol-buffer *text format* parser for Caffe prototxt files, with no protobuf dependency.

It turns text such as ``layer { name: "conv1" convolution_param { num_output: 96 } }`` into a
tree of :class:`Message` objects (an ordered multimap: every field may repeat). It knows no
schema: scalars become ``int``, ``float``, ``str`` (quoted strings) or :class:`Enum` (bare
identifiers such as ``MAX`` or ``true``); the net builder interprets them. Supported syntax:
``#`` comments, single and double quotes with C escapes, adjacent string concatenation,
``field: value``, ``field { ... }``, ``field: { ... }``, ``< ... >`` braces, ``[a, b]`` lists and
optional ``,``/``;`` separators. Errors are :class:`PrototxtError` with line and column.
Input is bounded before it can exhaust memory or the stack: file size, string length, field
count and nesting depth each have a cap (refused with line:col), tokens are produced lazily and
nesting is counted, so a hostile file never raises RecursionError. Field *names* are checked
against Caffe's schema separately (:mod:`minicaffe.io.caffe_schema`), since the parser has none.
It deliberately does not write text (the converters format their own prototxt).
"""
from __future__ import annotations

import os
import re

from ..errors import PrototxtError

__all__ = ["Enum", "Message", "parse", "parse_file"]


class Enum(str):
    """A bare identifier value (``MAX``, ``CONVOLUTION``, ``true``)."""


class Message:
    """Ordered multimap of field name -> values, as a protobuf message in text form."""

    __slots__ = ("fields", "line", "pos")

    def __init__(self, line=None):
        self.fields: list[tuple[str, object]] = []
        self.line = line
        self.pos: list[tuple[int, int] | None] = []  # (line, col) of each field's name, when parsed

    def add(self, key, value, pos=None):
        self.fields.append((key, value))
        self.pos.append(pos)

    def where(self, index):
        """(line, col) of field ``index`` when the parser recorded it, else (message line, None)."""
        if len(self.pos) == len(self.fields) and self.pos[index] is not None:
            return self.pos[index]
        return self.line, None

    def getall(self, key):
        return [v for k, v in self.fields if k == key]

    def get(self, key, default=None):
        """The last value of a field (protobuf semantics for non-repeated fields)."""
        for k, v in reversed(self.fields):
            if k == key:
                return v
        return default

    def has(self, key):
        return any(k == key for k, _ in self.fields)

    def keys(self):
        seen = []
        for k, _ in self.fields:
            if k not in seen:
                seen.append(k)
        return seen

    def __contains__(self, key):
        return self.has(key)

    def __repr__(self):
        return f"Message({self.fields!r})"

    def to_dict(self):
        """Plain nested dict; repeated fields become lists (for JSON dumps and debugging)."""
        out = {}
        for k in self.keys():
            vals = [v.to_dict() if isinstance(v, Message) else v for v in self.getall(k)]
            out[k] = vals[0] if len(vals) == 1 else vals
        return out


_TOKEN = re.compile(
    r"""
    (?P<ws>[ \t\r\f\v]+)
  | (?P<nl>\n)
  | (?P<comment>\#[^\n]*)
  | (?P<str>"[^"\\\n]*(?:\\.[^"\\\n]*)*"|'[^'\\\n]*(?:\\.[^'\\\n]*)*')
  | (?P<num>[-+]?(?:(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?[fF]?|0[xX][0-9a-fA-F]+|inf(?:inity)?|nan)(?![A-Za-z0-9_.]))
  | (?P<ident>[A-Za-z_][A-Za-z0-9_.]*)
  | (?P<punct>[{}<>:\[\],;])
    """,
    re.VERBOSE | re.IGNORECASE,
)

_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", "'": "'", '"': '"', "a": "\a",
            "b": "\b", "f": "\f", "v": "\v", "?": "?"}


#: deepest nesting of messages (protobuf's own text parser stops at 100 as well)
MAX_DEPTH = 100
#: longest quoted string literal, in characters (names and paths are far shorter)
MAX_STRING_CHARS = 1 << 20
#: largest prototxt file, in bytes (GoogLeNet's deploy file is ~40 KB)
MAX_TEXT_BYTES = 32 << 20
#: most fields in one file (each costs ~150 bytes of Python objects)
MAX_FIELDS = 1_000_000

_ESCAPE = re.compile(r"\\(?:([ntr\\'\"abfv?])|([0-7]{1,3})|[xX]([0-9a-fA-F]{1,2})|(.)|$)", re.DOTALL)


def _unescape(body, err):
    """C escapes -> characters, one regex pass (no per-character Python objects)."""
    if "\\" not in body:
        return body

    def sub(m):
        simple, octal, hexa, other = m.groups()
        if simple is not None:
            return _ESCAPES[simple]
        if octal is not None:
            return chr(int(octal, 8))
        if hexa is not None:
            return chr(int(hexa, 16))
        if other is not None:
            raise err("bad \\x escape in string" if other in "xX" else f"unknown escape \\{other} in string")
        raise err("dangling backslash in string")
    return _ESCAPE.sub(sub, body)


def _tokenize(text, path):
    """Yield (kind, value, line, col) lazily (memory ~ one token), ending with an 'eof' token."""
    pos, line, line_start = 0, 1, 0
    n = len(text)
    while pos < n:
        m = _TOKEN.match(text, pos)
        if m is None:
            raise PrototxtError(f"unexpected character {text[pos]!r}", path, line, pos - line_start + 1)
        kind = m.lastgroup
        col = pos - line_start + 1
        if kind == "nl":
            line += 1
            line_start = m.end()
        elif kind in ("ws", "comment"):
            pass
        else:
            if kind == "str" and m.end() - pos - 2 > MAX_STRING_CHARS:
                raise PrototxtError(f"quoted string of {m.end() - pos - 2:,} characters (at most "
                                    f"{MAX_STRING_CHARS:,} are allowed)", path, line, col)
            yield (kind, m.group(kind), line, col)
        pos = m.end()
    yield ("eof", "", line, pos - line_start + 1)


def _number(tok, path, line, col):
    s = tok.lower()
    try:
        if s.lstrip("+-") in ("inf", "infinity", "inff", "infinityf"):
            return float("-inf") if s.startswith("-") else float("inf")
        if s.lstrip("+-") == "nan":
            return float("nan")
        if s.startswith(("0x", "-0x", "+0x")):
            return int(s, 16)
        if re.fullmatch(r"[-+]?\d+", s):
            return int(s)
        return float(s.rstrip("f"))
    except ValueError:
        raise PrototxtError(f"bad number {tok!r}", path, line, col) from None


class _Parser:
    def __init__(self, text, path):
        self.path = path
        self.toks = _tokenize(text, path)
        self.cur = next(self.toks)
        self.n_fields = 0

    def err(self, msg, tok=None):
        tok = tok or self.cur
        return PrototxtError(msg, self.path, tok[2], tok[3])

    def peek(self):
        return self.cur

    def next(self):
        t = self.cur
        if t[0] != "eof":
            self.cur = next(self.toks)
        return t

    def add(self, msg, key, value, tok):
        self.n_fields += 1
        if self.n_fields > MAX_FIELDS:
            raise self.err(f"more than {MAX_FIELDS:,} fields (not a net definition?)", tok)
        msg.add(key, value, (tok[2], tok[3]))

    def open_message(self, t, depth):
        if depth >= MAX_DEPTH:
            raise self.err(f"messages nested deeper than {MAX_DEPTH} levels", t)
        return self.message("}" if t[1] == "{" else ">", t[2], depth + 1)

    def message(self, closer, line, depth=0):
        msg = Message(line)
        while True:
            t = self.peek()
            if t[0] == "eof":
                if closer is None:
                    return msg
                raise self.err(f"unexpected end of file: missing {closer!r} for the message opened on line {line}")
            if t[0] == "punct" and t[1] in "}>":
                if closer is None:
                    raise self.err(f"unmatched {t[1]!r}")
                if t[1] != closer:
                    raise self.err(f"expected {closer!r}, found {t[1]!r}")
                self.next()
                return msg
            if t[0] == "punct" and t[1] in ",;":
                self.next()
                continue
            if t[0] != "ident":
                raise self.err(f"expected a field name, found {t[1]!r}")
            ktok = self.next()
            key = ktok[1]
            colon = False
            if self.peek()[0] == "punct" and self.peek()[1] == ":":
                self.next()
                colon = True
            t = self.peek()
            if t[0] == "punct" and t[1] in "{<":
                self.next()
                self.add(msg, key, self.open_message(t, depth), ktok)
            elif t[0] == "punct" and t[1] == "[" and colon:
                self.next()
                self.list_into(msg, key, ktok, depth)
            elif not colon:
                raise self.err(f"expected ':' or '{{' after field {key!r}, found {t[1]!r}" if t[0] != "eof"
                               else f"unexpected end of file after field {key!r}")
            else:
                self.add(msg, key, self.scalar(), ktok)

    def list_into(self, msg, key, ktok, depth):
        if self.peek()[0] == "punct" and self.peek()[1] == "]":
            self.next()
            return
        while True:
            t = self.peek()
            if t[0] == "punct" and t[1] in "{<":
                self.next()
                self.add(msg, key, self.open_message(t, depth), ktok)
            else:
                self.add(msg, key, self.scalar(), ktok)
            t = self.peek()
            if t[0] == "punct" and t[1] == "]":
                self.next()
                return
            if not (t[0] == "punct" and t[1] == ","):
                raise self.err(f"expected ',' or ']' in list, found {t[1]!r}" if t[0] != "eof"
                               else "unexpected end of file in list")
            self.next()

    def scalar(self):
        t = self.peek()
        kind, val, line, col = t
        if kind in ("str", "num", "ident"):
            self.next()
        if kind == "str":
            parts, total = [], 0
            while True:
                parts.append(_unescape(val[1:-1], lambda m, line=line, col=col: PrototxtError(m, self.path, line, col)))
                total += len(parts[-1])
                if total > MAX_STRING_CHARS:
                    raise PrototxtError(f"concatenated string longer than {MAX_STRING_CHARS:,} characters",
                                        self.path, line, col)
                if self.peek()[0] != "str":
                    break
                kind, val, line, col = self.next()
            return "".join(parts)
        if kind == "num":
            return _number(val, self.path, line, col)
        if kind == "ident":
            if val.lower() in ("inf", "infinity", "nan"):
                return _number(val, self.path, line, col)
            return Enum(val)
        raise self.err(f"expected a value, found {val!r}" if kind != "eof"
                       else "unexpected end of file, expected a value")


def parse(text: str, path: str | None = None) -> Message:
    """Parse prototxt text into a :class:`Message`; raises :class:`PrototxtError`."""
    if len(text) > MAX_TEXT_BYTES:
        raise PrototxtError(f"{len(text):,} bytes is too large for a net definition (at most "
                            f"{MAX_TEXT_BYTES:,})", path)
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as e:
            raise PrototxtError(f"not UTF-8 text ({e.reason} at byte {e.start})", path) from None
    return _Parser(text, path).message(None, 1)


def parse_file(path: str | os.PathLike) -> Message:
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_TEXT_BYTES + 1)
    except OSError as e:
        raise PrototxtError(f"cannot read file: {e.strerror}", path) from None
    return parse(data, path)
