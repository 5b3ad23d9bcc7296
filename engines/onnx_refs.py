"""The external-data files an ONNX model refers to, read from its protobuf without onnx or onnxruntime.

A tensor stored outside the model file (``TensorProto.data_location = EXTERNAL``) names its file in
``external_data`` (key ``location``, relative to the model's directory); onnxruntime opens that file when the
session is created. The manifest must list every such file with its sha256 (``models.<role>.external_data``)
so that the bundle hash covers it and the loader can refuse a file that is unlisted, changed, or a symlink
out of the bundle -- which needs the list of references BEFORE onnxruntime sees the model. This module walks
the protobuf wire format (initializers, sparse initializers, Constant-style tensor attributes, subgraphs of
If/Loop/Scan, functions and training graphs) and skips everything else, raw tensor data included, so it is
fast on large models and reads nothing beyond the file.
"""

from __future__ import annotations

from typing import Any, Iterator, Union

Buffer = Union[bytes, bytearray, memoryview]
Span = tuple[int, int]

__all__ = ["external_data_locations", "OnnxParseError"]

MAX_DEPTH = 64  # nested subgraphs; a real model has a handful


class OnnxParseError(ValueError):
    """The bytes are not a well-formed ONNX protobuf."""


def _varint(b: memoryview, i: int, end: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        if i >= end:
            raise OnnxParseError("truncated varint")
        c = b[i]
        i += 1
        result |= (c & 0x7F) << shift
        if not c & 0x80:
            return result, i
        shift += 7
        if shift > 63:
            raise OnnxParseError("varint too long")


def _fields(b: memoryview, start: int, end: int) -> Iterator[tuple[int, int, Any]]:
    """(field number, wire type, value) for each field of the message in ``b[start:end]``; a length-delimited
    value is given as its (start, end) span."""
    i = start
    while i < end:
        key, i = _varint(b, i, end)
        field, wt = key >> 3, key & 7
        if field == 0:
            raise OnnxParseError("field number 0")
        if wt == 0:
            v, i = _varint(b, i, end)
            yield field, wt, v
        elif wt == 2:
            n, i = _varint(b, i, end)
            if n > end - i:
                raise OnnxParseError("length-delimited field runs past its message")
            yield field, wt, (i, i + n)
            i += n
        elif wt == 1:
            i += 8
        elif wt == 5:
            i += 4
        else:
            raise OnnxParseError(f"unsupported wire type {wt}")
        if i > end:
            raise OnnxParseError("field runs past its message")


def _string(b: memoryview, span) -> str:
    try:
        return bytes(b[span[0] : span[1]]).decode("utf-8")
    except UnicodeDecodeError as e:
        raise OnnxParseError("a string field is not UTF-8") from e


def _tensor(b: memoryview, span: Span, out: list[str]) -> None:
    for f, wt, v in _fields(b, *span):
        if f == 13 and wt == 2:  # external_data: StringStringEntryProto
            key = val = None
            for f2, wt2, v2 in _fields(b, *v):
                if wt2 == 2 and f2 == 1:
                    key = _string(b, v2)
                elif wt2 == 2 and f2 == 2:
                    val = _string(b, v2)
            if key == "location":
                if val is None:
                    raise OnnxParseError("external_data 'location' without a value")
                out.append(val)


def _sparse(b: memoryview, span: Span, out: list[str]) -> None:
    for f, wt, v in _fields(b, *span):
        if f in (1, 2) and wt == 2:
            _tensor(b, v, out)


def _attribute(b: memoryview, span: Span, out: list[str], depth: int) -> None:
    for f, wt, v in _fields(b, *span):
        if wt != 2:
            continue
        if f in (5, 10):  # t, tensors
            _tensor(b, v, out)
        elif f in (6, 11):  # g, graphs
            _graph(b, v, out, depth + 1)
        elif f in (22, 23):  # sparse_tensor, sparse_tensors
            _sparse(b, v, out)


def _node(b: memoryview, span: Span, out: list[str], depth: int) -> None:
    for f, wt, v in _fields(b, *span):
        if f == 5 and wt == 2:
            _attribute(b, v, out, depth)


def _graph(b: memoryview, span: Span, out: list[str], depth: int) -> None:
    if depth > MAX_DEPTH:
        raise OnnxParseError(f"subgraphs nested deeper than {MAX_DEPTH}")
    for f, wt, v in _fields(b, *span):
        if wt != 2:
            continue
        if f == 1:
            _node(b, v, out, depth)
        elif f == 5:
            _tensor(b, v, out)
        elif f == 15:
            _sparse(b, v, out)


def _function(b: memoryview, span: Span, out: list[str], depth: int) -> None:
    for f, wt, v in _fields(b, *span):
        if wt == 2 and f == 7:
            _node(b, v, out, depth)


def _training(b: memoryview, span: Span, out: list[str], depth: int) -> None:
    for f, wt, v in _fields(b, *span):
        if wt == 2 and f in (1, 2):
            _graph(b, v, out, depth + 1)


def external_data_locations(data: Any) -> list[str]:
    """Every ``location`` an ONNX model's tensors refer to, in order of appearance, duplicates removed.
    Raises :class:`OnnxParseError` on bytes that are not a well-formed ONNX ModelProto."""
    b = memoryview(data)
    try:
        if b.ndim != 1 or b.itemsize != 1:
            b = b.cast("B")
        out: list[str] = []
        seen_graph = False
        for f, wt, v in _fields(b, 0, len(b)):
            if wt != 2:
                continue
            if f == 7:
                seen_graph = True
                _graph(b, v, out, 0)
            elif f == 25:
                _function(b, v, out, 0)
            elif f == 20:
                _training(b, v, out, 0)
        if not seen_graph:
            raise OnnxParseError("no graph")
        return list(dict.fromkeys(out))
    finally:
        b.release()  # a caller's mmap can be closed even while a traceback holds these frames
