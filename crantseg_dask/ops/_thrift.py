"""Thrift's compact protocol, read and written back exactly: every field kept with its own wire
type (parquet's footer is a compact-protocol ``FileMetaData``).

A struct is a ``Struct``: field number -> ``Field(type, value)``; a list is a ``List(type,
items)``. Reading then writing gives the same bytes back, whatever the fields (fastparquet's
implementation writes back fields 1-13 only, integers as 32 or 64 bits: not an 8-bit
``IntType.bitWidth``, which a strict reader then refuses).
"""
from __future__ import annotations

import struct
from typing import NamedTuple

__all__ = ["Field", "List", "Struct", "dumps", "loads"]

TRUE, FALSE, I8, I16, I32, I64, DOUBLE, BINARY, LIST, SET, MAP, STRUCT = 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12


class Field(NamedTuple):
    type: int
    value: object


class List(NamedTuple):
    type: int
    items: list


class Struct(dict):
    """Field number -> ``Field``; ``s.value(n)``: the value of field ``n`` (None: absent)."""

    def value(self, n: int, default=None):
        f = self.get(n)
        return default if f is None else f.value


class _Reader:
    def __init__(self, data: bytes, at: int = 0):
        self.data, self.at = memoryview(data), at

    def byte(self) -> int:
        b = self.data[self.at]
        self.at += 1
        return b

    def varint(self) -> int:
        out = shift = 0
        while True:
            b = self.byte()
            out |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                return out

    def zigzag(self) -> int:
        n = self.varint()
        return (n >> 1) ^ -(n & 1)

    def value(self, typ: int):
        if typ in (TRUE, FALSE):  # in a list: one byte, 1 true
            return self.byte() == TRUE
        if typ == I8:
            return struct.unpack("b", bytes([self.byte()]))[0]
        if typ in (I16, I32, I64):
            return self.zigzag()
        if typ == DOUBLE:
            self.at += 8
            return struct.unpack("<d", self.data[self.at - 8: self.at])[0]
        if typ == BINARY:
            n = self.varint()
            self.at += n
            return bytes(self.data[self.at - n: self.at])
        if typ in (LIST, SET):
            head = self.byte()
            size, elem = head >> 4, head & 0x0F
            if size == 15:
                size = self.varint()
            return List(elem, [self.value(elem) for _ in range(size)])
        if typ == STRUCT:
            out, last = Struct(), 0
            while True:
                head = self.byte()
                if head == 0:
                    return out
                kind, delta = head & 0x0F, head >> 4
                last = last + delta if delta else self.zigzag()
                out[last] = Field(kind, (kind == TRUE) if kind in (TRUE, FALSE) else self.value(kind))
        raise ValueError(f"thrift: unsupported compact type {typ} at byte {self.at}")


def loads(data: bytes) -> Struct:
    """The struct serialized at the start of ``data``."""
    return _Reader(data).value(STRUCT)


def _varint(n: int, out: bytearray) -> None:
    while True:
        if n < 0x80:
            out.append(n)
            return
        out.append((n & 0x7F) | 0x80)
        n >>= 7


def _write(typ: int, value, out: bytearray) -> None:
    if typ in (TRUE, FALSE):
        out.append(TRUE if value else FALSE)
    elif typ == I8:
        out += struct.pack("b", value)
    elif typ in (I16, I32, I64):
        _varint((value << 1) ^ (value >> 63), out)
    elif typ == DOUBLE:
        out += struct.pack("<d", value)
    elif typ == BINARY:
        _varint(len(value), out)
        out += value
    elif typ in (LIST, SET):
        n = len(value.items)
        out.append((n << 4 | value.type) if n < 15 else (0xF0 | value.type))
        if n >= 15:
            _varint(n, out)
        for item in value.items:
            _write(value.type, item, out)
    elif typ == STRUCT:
        last = 0
        for n in sorted(value):
            kind, v = value[n]
            if kind in (TRUE, FALSE):
                kind = TRUE if v else FALSE
            if 0 < n - last <= 15:
                out.append((n - last) << 4 | kind)
            else:
                out.append(kind)
                _varint((n << 1) ^ (n >> 63), out)
            last = n
            if kind not in (TRUE, FALSE):
                _write(kind, v, out)
        out.append(0)
    else:
        raise ValueError(f"thrift: unsupported compact type {typ}")


def dumps(value: Struct) -> bytes:
    """``value`` serialized (the bytes ``loads`` read it from, for a struct read by ``loads``)."""
    out = bytearray()
    _write(STRUCT, value, out)
    return bytes(out)
