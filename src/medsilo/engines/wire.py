"""medsilo's messages as Flower ``RecordDict`` contents (the ``flower`` engines' wire format).

A message becomes a tree of plain values (dicts, lists, str, int, float, bool, None, bytes,
numpy arrays). Every array and every ``bytes`` value travels in one byte buffer; the rest
of the tree is a JSON skeleton in a ``ConfigRecord`` that names their slices. A buffer
that fits in one Flower chunk (``FLWR_PRIVATE_MAX_ARRAY_CHUNK_SIZE``, 5 MiB, with the
skeleton) is a ``bytes`` value of that same ``ConfigRecord``: the message is three Flower
objects (message, record dict, record), each pushed and pulled with its own HTTP request.
A larger buffer is a ``uint8`` Flower ``Array`` in an ``ArrayRecord``, which Flower 1.41
splits into ``ArrayChunk`` objects of at most 5 MiB pushed and pulled one by one, so a
large model never has to fit in one gRPC/HTTP message (flower#3006). Nothing is pickled: a
peer can only send data, never code.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import Any, cast

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict
from flwr.common.constant import FLWR_PRIVATE_MAX_ARRAY_CHUNK_SIZE

from medsilo.fed.messages import (
    EvaluateRequest,
    Evaluation,
    Refusal,
    RoundPlan,
    TrainConfig,
    Update,
)
from medsilo.fed.secure import SecAggRound
from medsilo.secagg import messages as secagg_messages
from medsilo.secagg.quantize import Quantizer

ARRAYS = "arrays"
BUFFER = "buffer"
SKELETON = "skeleton"
INLINE_LIMIT = FLWR_PRIVATE_MAX_ARRAY_CHUNK_SIZE
"""The largest skeleton + buffer carried in the ``ConfigRecord`` itself (one Flower
chunk's worth); a larger buffer is a chunked ``Array``."""


class WireError(ValueError):
    """A received record is not a medsilo message."""


def pack(value: object) -> RecordDict:
    """A plain-value tree as a RecordDict: every array and ``bytes`` value side by side
    in one buffer, the rest a JSON skeleton naming each one's offset, length, dtype and
    shape; the buffer is a ``bytes`` value next to the skeleton up to ``INLINE_LIMIT``,
    past it one Flower ``Array`` (chunked by Flower). One buffer instead of one ``Array``
    per value, and no ``Array`` at all for a message that fits in one chunk: Flower
    pushes and pulls every object of a message (record, array, chunk) with its own HTTP
    request, and a secure-aggregation stage carries dozens of small ``bytes`` values."""
    parts: list[bytes] = []
    size = 0

    def put(data: bytes) -> list[int]:
        nonlocal size
        parts.append(data)
        size += len(data)
        return [size - len(data), len(data)]

    def walk(item: object) -> object:
        if isinstance(item, np.ndarray):
            array = np.ascontiguousarray(item)
            if array.dtype.hasobject:
                raise TypeError("cannot put an object array on the wire")
            return {"$a": put(array.tobytes()), "dtype": array.dtype.str, "shape": item.shape}
        if isinstance(item, bytes):
            return {"$b": put(item)}
        if isinstance(item, Mapping):
            return {"$d": [[str(k), walk(v)] for k, v in item.items()]}
        if isinstance(item, list | tuple):
            return [walk(v) for v in item]
        if isinstance(item, np.generic):
            return item.item()
        if item is None or isinstance(item, str | int | float | bool):
            return item
        raise TypeError(f"cannot put a {type(item).__name__} on the wire")

    skeleton = json.dumps(walk(value))
    buffer = b"".join(parts)
    if len(buffer) + len(skeleton) <= INLINE_LIMIT:
        return RecordDict({SKELETON: ConfigRecord({SKELETON: skeleton, BUFFER: buffer})})
    arrays = {BUFFER: Array(np.frombuffer(buffer, dtype=np.uint8))}
    return RecordDict(
        {SKELETON: ConfigRecord({SKELETON: skeleton}), ARRAYS: ArrayRecord(array_dict=arrays)}
    )


def unpack(content: RecordDict) -> Any:
    """The tree :func:`pack` made; raises :class:`WireError` on anything else (a slice
    outside the buffer, an object dtype, a shape that does not fit its bytes)."""
    try:
        config = content.config_records[SKELETON]
        skeleton = config[SKELETON]
        inline = BUFFER in config
        buffer = config[BUFFER] if inline else content.array_records[ARRAYS][BUFFER]
    except KeyError as exc:
        raise WireError(f"not a medsilo message (missing {exc})") from None
    if not isinstance(skeleton, str):
        raise WireError("not a medsilo message (skeleton is not text)")
    if isinstance(buffer, Array):
        buffer = buffer.numpy().tobytes()
    if not isinstance(buffer, bytes):
        raise WireError("not a medsilo message (its buffer is not bytes)")

    def cut(where: Any) -> bytes:
        start, length = (int(v) for v in where)
        if start < 0 or length < 0 or start + length > len(buffer):
            raise WireError(f"malformed medsilo message: slice {where} outside the buffer")
        return buffer[start : start + length]

    def walk(item: Any) -> Any:
        if isinstance(item, dict):
            if "$a" in item:
                dtype = np.dtype(item["dtype"])
                if dtype.hasobject:
                    raise WireError("malformed medsilo message: object dtype")
                shape = tuple(int(d) for d in item["shape"])
                return np.frombuffer(cut(item["$a"]), dtype=dtype).reshape(shape).copy()
            if "$b" in item:
                return cut(item["$b"])
            return {k: walk(v) for k, v in item["$d"]}
        if isinstance(item, list):
            return [walk(v) for v in item]
        return item

    try:
        return walk(json.loads(skeleton))
    except (KeyError, TypeError, ValueError) as exc:
        raise WireError(f"malformed medsilo message: {exc}") from None


# --- medsilo's round messages as plain trees ------------------------------------------


def encode(message: object) -> dict[str, Any]:
    """A round message (plan, update, refusal, evaluation) or a secure-aggregation stage
    message as a plain tree with its kind."""
    if isinstance(message, RoundPlan):
        secagg = message.secagg
        return {
            "kind": "RoundPlan",
            "round": message.round,
            "weights": dict(message.weights),
            "config": dataclasses.asdict(message.config),
            "secagg": (
                None
                if not isinstance(secagg, SecAggRound)
                else {
                    "quantizer": dataclasses.asdict(secagg.quantizer),
                    "keys": list(secagg.keys),
                    "mask_keys": list(secagg.mask_keys),
                }
            ),
            "sparse": message.sparse,
        }
    if isinstance(message, Update | Refusal | EvaluateRequest | Evaluation):
        fields = {f.name: getattr(message, f.name) for f in dataclasses.fields(message)}
        return {"kind": type(message).__name__, **fields}
    return {
        "kind": "SecAgg",
        "body": secagg_messages.to_dict(cast(secagg_messages.Message, message)),
    }


def decode(tree: Any) -> Any:
    """The message :func:`encode` made (secure-aggregation messages are validated by
    :func:`medsilo.secagg.messages.from_dict`)."""
    if not isinstance(tree, dict):
        raise WireError(f"expected a message, got {type(tree).__name__}")
    kind = tree.get("kind")
    if kind == "SecAgg":
        return secagg_messages.from_dict(tree.get("body") or {})
    body = {k: v for k, v in tree.items() if k != "kind"}
    try:
        if kind == "RoundPlan":
            secagg = body["secagg"]
            return RoundPlan(
                round=int(body["round"]),
                weights=body["weights"],
                config=TrainConfig(**body["config"]),
                secagg=(
                    None
                    if secagg is None
                    else SecAggRound(
                        Quantizer(**secagg["quantizer"]),
                        tuple(secagg["keys"]),
                        tuple(secagg["mask_keys"]),
                    )
                ),
                sparse=body["sparse"],
            )
        if kind == "Update":
            return Update(**body)
        if kind == "Refusal":
            return Refusal(**body)
        if kind == "EvaluateRequest":
            return EvaluateRequest(**body)
        if kind == "Evaluation":
            return Evaluation(**body)
    except (KeyError, TypeError) as exc:
        raise WireError(f"malformed {kind} message: {exc}") from None
    raise WireError(f"unknown message kind {kind!r}")
