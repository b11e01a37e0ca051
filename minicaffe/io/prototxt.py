"""Protocol-buffer *text format* parser for Caffe prototxt files, with no protobuf dependency.

It turns text such as ``layer { name: "conv1" convolution_param { num_output: 96 } }`` into a
tree of :class:`Message` objects (an ordered multimap: every field may repeat). It knows no
schema: scalars become ``int``, ``float``, ``str`` (quoted strings) or :class:`Enum` (bare
identifiers such as ``MAX`` or ``true``); the net builder interprets them. Supported syntax:
``#`` comments, single and double quotes with C escapes, adjacent string concatenation,
``field: value``, ``field { ... }``, ``field: { ... }``, ``< ... >`` braces, ``[a, b]`` lists and
optional ``,``/``;`` separators. Errors are :class:`PrototxtError` with line and column.
It deliberately does not write text (the converters format their own prototxt).
"""
from __future__ import annotations

import re

from ..errors import PrototxtError

__all__ = ["Enum", "Message", "parse", "parse_file"]


class Enum(str):
    """A bare identifier value (``MAX``, ``CONVOLUTION``, ``true``)."""


class Message:
    """Ordered multimap of field name -> values, as a protobuf message in text form."""

    __slots__ = ("fields", "line")

    def __init__(self, line=None):
        self.fields: list[tuple[str, object]] = []
        self.line = line

    def add(self, key, value):
        self.fields.append((key, value))

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
  | (?P<str>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')
  | (?P<num>[-+]?(?:(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?[fF]?|0[xX][0-9a-fA-F]+|inf(?:inity)?|nan)(?![A-Za-z0-9_.]))
  | (?P<ident>[A-Za-z_][A-Za-z0-9_.]*)
  | (?P<punct>[{}<>:\[\],;])
    """,
    re.VERBOSE | re.IGNORECASE,
)

_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", "'": "'", '"': '"', "a": "\a",
            "b": "\b", "f": "\f", "v": "\v", "?": "?"}


def _unescape(body, err):
    out, i = [], 0
    while i < len(body):
        c = body[i]
        if c != "\\":
            out.append(c)
            i += 1
            continue
        i += 1
        if i >= len(body):
            raise err("dangling backslash in string")
        c = body[i]
        if c in _ESCAPES:
            out.append(_ESCAPES[c])
            i += 1
        elif c in "01234567":
            j = i
            while j < len(body) and j < i + 3 and body[j] in "01234567":
                j += 1
            out.append(chr(int(body[i:j], 8)))
            i = j
        elif c in "xX":
            j = i + 1
            while j < len(body) and j < i + 3 and body[j] in "0123456789abcdefABCDEF":
                j += 1
            if j == i + 1:
                raise err("bad \\x escape in string")
            out.append(chr(int(body[i + 1:j], 16)))
            i = j
        else:
            raise err(f"unknown escape \\{c} in string")
    return "".join(out)


def _tokenize(text, path):
    toks = []  # (kind, value, line, col)
    pos, line, line_start = 0, 1, 0
    n = len(text)
    while pos < n:
        m = _TOKEN.match(text, pos)
        if m is None:
            raise PrototxtError(f"unexpected character {text[pos]!r}", path, line, pos - line_start + 1)
        kind = m.lastgroup
        val = m.group(kind)
        col = pos - line_start + 1
        if kind == "nl":
            line += 1
            line_start = m.end()
        elif kind in ("ws", "comment"):
            pass
        else:
            toks.append((kind, val, line, col))
        pos = m.end()
    toks.append(("eof", "", line, pos - line_start + 1))
    return toks


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
        self.i = 0

    def err(self, msg, tok=None):
        tok = tok or self.toks[self.i]
        return PrototxtError(msg, self.path, tok[2], tok[3])

    def peek(self):
        return self.toks[self.i]

    def next(self):
        t = self.toks[self.i]
        self.i += 1
        return t

    def message(self, closer, line):
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
            key = self.next()[1]
            colon = False
            if self.peek()[0] == "punct" and self.peek()[1] == ":":
                self.next()
                colon = True
            t = self.peek()
            if t[0] == "punct" and t[1] in "{<":
                self.next()
                msg.add(key, self.message("}" if t[1] == "{" else ">", t[2]))
            elif t[0] == "punct" and t[1] == "[" and colon:
                self.next()
                self.list_into(msg, key)
            elif not colon:
                raise self.err(f"expected ':' or '{{' after field {key!r}, found {t[1]!r}" if t[0] != "eof"
                               else f"unexpected end of file after field {key!r}")
            else:
                msg.add(key, self.scalar())

    def list_into(self, msg, key):
        if self.peek()[0] == "punct" and self.peek()[1] == "]":
            self.next()
            return
        while True:
            t = self.peek()
            if t[0] == "punct" and t[1] in "{<":
                self.next()
                msg.add(key, self.message("}" if t[1] == "{" else ">", t[2]))
            else:
                msg.add(key, self.scalar())
            t = self.next()
            if t[0] == "punct" and t[1] == "]":
                return
            if not (t[0] == "punct" and t[1] == ","):
                self.i -= 1
                raise self.err(f"expected ',' or ']' in list, found {t[1]!r}" if t[0] != "eof"
                               else "unexpected end of file in list")

    def scalar(self):
        t = self.next()
        kind, val, line, col = t
        if kind == "str":
            parts = []
            while True:
                parts.append(_unescape(val[1:-1], lambda m: PrototxtError(m, self.path, line, col)))
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
        self.i -= 1
        raise self.err(f"expected a value, found {val!r}" if kind != "eof" else "unexpected end of file, expected a value")


def parse(text: str, path=None) -> Message:
    """Parse prototxt text into a :class:`Message`; raises :class:`PrototxtError`."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as e:
            raise PrototxtError(f"not UTF-8 text ({e.reason} at byte {e.start})", path) from None
    return _Parser(text, path).message(None, 1)


def parse_file(path) -> Message:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise PrototxtError(f"cannot read file: {e.strerror}", path) from None
    return parse(data, path)
