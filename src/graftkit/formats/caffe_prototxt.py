"""Caffe's `.prototxt` files: protobuf text format, parsed against the caffe.proto schema.

`parse(text_or_path)` returns a NetParameter as the same plain dict the binary
decoder (`protowire`) gives for a caffemodel, so the net builder sees one
representation. The text format handled is protobuf's: `name: value` and
`name { ... }` (also `name: { ... }` and `< ... >`), repeated fields given
several times or as `[a, b]`, strings in single or double quotes with C
escapes (adjacent strings concatenated), enums by name or number, integers
(decimal, hex, octal), floats (exponents, `inf`, `nan`, an `f` suffix), `#`
comments and optional `;` / `,` separators. Field types come from the schema,
so `kernel_size: 3` becomes `[3]` (it is repeated in caffe.proto) and float
fields hold Caffe's float32 value.

Errors name the place: `path:line:column: expected ..., found ...`.
"""
from __future__ import annotations

import math
import os
import re
import struct
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import GraftError, reading
from .caffe_proto import Field, Message, message

_TOKEN = re.compile(r"""
    (?P<skip>[ \t\r\n\f\v]+|\#[^\n]*)
  | (?P<str>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')
  | (?P<num>-?(?:0[xX][0-9a-fA-F]++|(?:\d++(?:\.\d*+)?+|\.\d++)(?:[eE][-+]?\d++)?+[fF]?+)(?![\w.]))
  | (?P<id>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<sym>[-{}<>\[\]:;,])
  | (?P<bad>\d[\w.]*+|["']|.)
""", re.X)
# Possessive quantifiers, and a malformed number taken whole as one bad token: tokenizing is linear
# in the text's length (a backtracking number pattern took minutes on 1,500 digits and a letter).
# The same tokens without positions or kinds, ordered by frequency, possessive: 4x faster than
# _TOKEN.finditer. Group 1 is a token, group 2 a character no token starts with. Positions are
# only needed for error messages; they are recomputed with _TOKEN then.
_FAST_TOKEN = re.compile(r"""(?:[ \t\r\n\f\v]++|\#[^\n]*+)*+
    (?:( [{}<>\[\]:;,]
       | [A-Za-z_][A-Za-z0-9_]*+
       | "(?:[^"\\\n]++|\\.)*+"|'(?:[^'\\\n]++|\\.)*+'
       | -?(?:0[xX][0-9a-fA-F]++|(?:\d++(?:\.\d*+)?+|\.\d++)(?:[eE][-+]?\d++)?+[fF]?+)(?![\w.])
       | - )
      |(\d[\w.]*+|.))""", re.X)
_KINDS = {**{c: "sym" for c in "{}<>[]:;,-"}, **{c: "str" for c in "\"'"}, **{c: "num" for c in "0123456789."},
          **{c: "id" for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_"}}


def _kind(tok: str) -> str:
    """A token's kind (sym, str, num, id; eof for ""), from its first character."""
    if not tok:
        return "eof"
    return "num" if tok[0] == "-" and len(tok) > 1 else _KINDS[tok[0]]

_INT_RANGES = {"int32": (-2**31, 2**31 - 1), "sint32": (-2**31, 2**31 - 1), "sfixed32": (-2**31, 2**31 - 1),
               "uint32": (0, 2**32 - 1), "fixed32": (0, 2**32 - 1),
               "int64": (-2**63, 2**63 - 1), "sint64": (-2**63, 2**63 - 1), "sfixed64": (-2**63, 2**63 - 1),
               "uint64": (0, 2**64 - 1), "fixed64": (0, 2**64 - 1)}
_FLT_MAX = 3.4028234663852886e38
_INTEGER = re.compile(r"-?(0[xX][0-9a-fA-F]+|\d+)")
_DECIMAL = re.compile(r"-?\d+")
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "a": "\a", "b": "\b", "f": "\f", "v": "\v", "\\": "\\",
            "'": "'", '"': '"', "?": "?"}


def parse(text_or_path: str | os.PathLike, message_name: str = "NetParameter") -> dict[str, Any]:
    """Parse a prototxt file (a path, or a one-line str naming a file) or prototxt text (any other str)."""
    if isinstance(text_or_path, os.PathLike):
        return parse_file(text_or_path, message_name)
    one_line = "\n" not in text_or_path and 0 < len(text_or_path.strip()) < 4096
    if one_line and (os.path.isfile(text_or_path) or not any(c in text_or_path for c in "{:")):
        return parse_file(text_or_path, message_name)
    return parse_text(text_or_path, message_name)


def parse_file(path: str | os.PathLike, message_name: str = "NetParameter") -> dict[str, Any]:
    path = Path(path)
    with reading(path, "prototxt file"):
        data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise GraftError(f"{path}:{line}: not a text file (invalid UTF-8 at byte {e.start})",
                         "a prototxt is text; did you pass a binary .caffemodel?") from None
    return parse_text(text, message_name, source=str(path))


def parse_text(text: str, message_name: str = "NetParameter", source: str = "<prototxt>") -> dict[str, Any]:
    return _Parser(text, source).parse(message(message_name))


class _Parser:
    def __init__(self, text: str, source: str):
        self.text, self.source = text, source
        found = _FAST_TOKEN.findall(text)
        self.toks: list[str] = [tok for tok, _ in found]  # "" (never a token) at the end of the text
        if "" in self.toks:  # a character no token starts with: report the first one
            self._positions()
            raise AssertionError("the two tokenizers disagree")  # (_positions raised already)
        self.toks.append("")
        self.i = 0
        self._pos: list[int] | None = None

    # -- helpers
    def _positions(self) -> list[int]:
        """Each token's offset in the text (computed for error messages only)."""
        pos = []
        for m in _TOKEN.finditer(self.text):
            kind = m.lastgroup
            if kind == "skip":
                continue
            if kind == "bad":
                bad = m.group()
                what = ("a string that does not end on its line" if bad in "\"'" else
                        f"a malformed number '{bad[:24]}{'...' if len(bad) > 24 else ''}'" if bad[0].isdigit() else
                        f"'{bad}'")
                raise GraftError(f"{self._where(m.start())}: unexpected character: {what}")
            pos.append(m.start())
        return pos + [len(self.text)]

    def _where(self, pos: int) -> str:
        line = self.text.count("\n", 0, pos) + 1
        col = pos - (self.text.rfind("\n", 0, pos) + 1) + 1
        return f"{self.source}:{line}:{col}"

    def _fail(self, at: int, what: str, hint: str | None = None, offset: int = 0):
        """Raise for token `at` (an index; `offset` characters into it)."""
        if self._pos is None:
            self._pos = self._positions()
        raise GraftError(f"{self._where(self._pos[at] + offset)}: {what}", hint)

    def _expected(self, what: str):
        val = self.toks[self.i]
        found = f"'{val}'" if val else "the end of the file"
        self._fail(self.i, f"expected {what}, found {found}")

    def _take(self, sym: str) -> bool:
        if self.toks[self.i] == sym:  # (no other kind of token can equal a symbol)
            self.i += 1
            return True
        return False

    # -- grammar
    def parse(self, msg: Message) -> dict[str, Any]:
        out = self._fields(msg, closer=None)
        return out

    def _fields(self, msg: Message, closer: str | None) -> dict[str, Any]:
        out: dict[str, Any] = {}
        arrays: set[str] = set()
        toks = self.toks
        while True:
            pos = self.i
            val = toks[pos]
            if val == closer:
                self.i += 1
                break
            if not val:
                if closer is not None:
                    self._expected(f"'{closer}' to close the {msg.name} block")
                break
            f = msg.fields.get(val)
            if f is None and _kind(val) != "id":
                self._expected(f"a field name of {msg.name}" + (f" or '{closer}'" if closer else ""))
            if f is None:
                self._fail(pos, f"unknown field '{val}' in {msg.name}",
                           "check the spelling; graftkit knows the fields of BVLC caffe.proto")
            self.i += 1
            if f.message is not None:
                self._message_field(f, out)
            else:
                if toks[self.i] != ":":
                    self._expected(f"':' after '{f.name}'")
                self.i += 1
                if f.repeated and self._take("["):
                    values = out.setdefault(f.name, [])
                    if not self._take("]"):
                        while True:
                            values.append(self._scalar(f))
                            if self._take("]"):
                                break
                            if not self._take(","):
                                self._expected("',' or ']'")
                elif f.repeated:
                    out.setdefault(f.name, []).append(self._scalar(f))
                else:
                    if f.name in out:
                        self._fail(pos, f"field '{f.name}' of {msg.name} is given twice",
                                   "it is not a repeated field; keep one value")
                    out[f.name] = self._scalar(f)
                if f.is_array:
                    arrays.add(f.name)
            if toks[self.i] in (";", ","):  # an optional separator
                self.i += 1
        for name in arrays:   # blob data is a numpy array, as from a caffemodel
            out[name] = np.asarray(out[name], dtype=np.float32 if msg.fields[name].type == "float" else np.float64)
        return out

    def _message_field(self, f: Field, out: dict[str, Any]) -> None:
        colon = self._take(":")
        if colon and f.repeated and self._take("["):
            while not self._take("]"):
                out.setdefault(f.name, []).append(self._block(f))
                if not self._take(","):
                    if self._take("]"):
                        break
                    self._expected("',' or ']'")
            return
        sub = self._block(f)
        if f.repeated:
            out.setdefault(f.name, []).append(sub)
        elif f.name in out:   # a singular message given twice is merged, as protobuf does
            out[f.name].update(sub)
        else:
            out[f.name] = sub

    def _block(self, f: Field) -> dict[str, Any]:
        if self._take("{"):
            return self._fields(f.message, "}")
        if self._take("<"):
            return self._fields(f.message, ">")
        self._expected(f"'{{' to open '{f.name}' ({f.message.name})")

    def _scalar(self, f: Field):
        pos = self.i
        val = self.toks[pos]
        kind = _kind(val)
        t = f.type
        if f.enum is not None:
            if kind == "id":
                if val not in f.enum.values:
                    self._fail(pos, f"'{val}' is not a value of {f.enum.name} (field '{f.name}')",
                               f"use one of {', '.join(f.enum.values)}")
                self.i += 1
                return val
            if kind == "num" and _DECIMAL.fullmatch(val):
                self.i += 1
                n = int(val)
                if n not in f.enum.names:
                    self._fail(pos, f"{n} is not a value of {f.enum.name} (field '{f.name}')")
                return f.enum.names[n]
            self._expected(f"a {f.enum.name} value for '{f.name}'")
        if t in ("string", "bytes"):
            if kind != "str":
                self._expected(f"a quoted string for '{f.name}'")
            data = self._unescape(val, pos)
            self.i += 1
            while _kind(self.toks[self.i]) == "str":  # adjacent strings are concatenated
                data += self._unescape(self.toks[self.i], self.i)
                self.i += 1
            if t == "bytes":
                return data
            try:
                return data.decode("utf-8")
            except UnicodeDecodeError:
                self._fail(pos, f"the string for '{f.name}' is not valid UTF-8")
        if t == "bool":
            self.i += 1
            if val in ("true", "True", "t", "1"):
                return True
            if val in ("false", "False", "f", "0"):
                return False
            self.i -= 1
            self._expected(f"true or false for '{f.name}'")
        if t in ("float", "double"):
            return self._float(f)
        return self._int(f)

    def _float(self, f: Field) -> float:
        pos = self.i
        val = self.toks[pos]
        neg = False
        if val == "-":   # -inf / -nan
            neg, pos = True, pos + 1
            val = self.toks[pos]
            self.i += 1
        kind = _kind(val)
        if kind == "num":
            x = float(int(val, 16)) if val.lower().lstrip("-").startswith("0x") else float(val.rstrip("fF"))
        elif kind == "id" and val.lower() in ("inf", "infinity", "inff", "infinityf"):
            x = math.inf
        elif kind == "id" and val.lower() in ("nan", "nanf"):
            x = math.nan
        else:
            self._expected(f"a number for '{f.name}'")
        self.i += 1
        x = -x if neg else x
        if f.type == "float":   # Caffe stores float32: keep exactly that value
            if math.isfinite(x) and abs(x) > _FLT_MAX:
                self._fail(pos, f"{val} is out of range for the float field '{f.name}'")
            x = struct.unpack("<f", struct.pack("<f", x))[0]
        return x

    def _int(self, f: Field) -> int:
        pos = self.i
        val = self.toks[pos]
        if _kind(val) != "num" or not _INTEGER.fullmatch(val):
            self._expected(f"an integer for '{f.name}'")
        self.i += 1
        body = val.lstrip("-")
        if body[:2] in ("0x", "0X"):
            n = int(body, 16)
        elif len(body) > 1 and body[0] == "0":
            if not re.fullmatch(r"[0-7]+", body):
                self._fail(pos, f"'{val}' is not a valid octal integer for '{f.name}'")
            n = int(body, 8)
        else:
            n = int(body)
        n = -n if val.startswith("-") else n
        lo, hi = _INT_RANGES.get(f.type, (-2**63, 2**64 - 1))
        if not lo <= n <= hi:
            self._fail(pos, f"{val} is out of range for the {f.type} field '{f.name}'")
        return n

    def _unescape(self, raw: str, at: int) -> bytes:
        """The bytes a quoted string stands for (escapes give raw bytes, as in protobuf)."""
        body, out, k = raw[1:-1], bytearray(), 0
        if "\\" not in body:
            return body.encode("utf-8")
        while k < len(body):
            c = body[k]
            if c != "\\":
                out += c.encode("utf-8")
                k += 1
                continue
            e = body[k + 1]
            if e in _ESCAPES:
                out += _ESCAPES[e].encode()
                k += 2
            elif e in "xX":
                m = re.match(r"[0-9a-fA-F]{1,2}", body[k + 2:])
                if not m:
                    self._fail(at, "invalid \\x escape in string", offset=1 + k)
                out.append(int(m.group(), 16))
                k += 2 + len(m.group())
            elif e in "01234567":
                m = re.match(r"[0-7]{1,3}", body[k + 1:])
                out.append(int(m.group(), 8) & 0xFF)
                k += 1 + len(m.group())
            else:
                self._fail(at, f"invalid escape '\\{e}' in string", offset=1 + k)
        return bytes(out)
