"""The file format of ``hvae compress``: a header that names the model, the data and the coder settings,
the ANS words, and a checksum over everything before it.

    magic (8 bytes) | format version (uint16 LE) | header length (uint32 LE) | header (UTF-8 JSON)
    | payload length (uint64 LE) | payload (the coder's uint32 words, LE) | SHA-256 of all the above (32 bytes)

Nothing in a file is unpickled: the header is JSON, the payload plain integers.
"""

from __future__ import annotations

import hashlib
import json
import struct

import torch

MAGIC = b"\x89HVAEZ\r\n"
VERSION = 1
_DIGEST = 32


class FormatError(ValueError):
    """A file that is not a compressed hvae file, or one this version cannot read."""


def model_id(model) -> str:
    """SHA-256 (hex) of the model's config and of every weight and buffer (names, dtypes, shapes, bytes):
    a file decodes only with the model that wrote it."""
    h = hashlib.sha256(model.config.to_json().encode())
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def pack(header: dict, payload: bytes) -> bytes:
    head = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    body = MAGIC + struct.pack("<HI", VERSION, len(head)) + head + struct.pack("<Q", len(payload)) + payload
    return body + hashlib.sha256(body).digest()


def unpack(data: bytes) -> tuple[dict, bytes]:
    """(header, payload) of a file written by :func:`pack`; a clear :class:`FormatError` otherwise."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"expected the bytes of a compressed file, got {type(data).__name__}")
    data = bytes(data)
    if len(data) < len(MAGIC) or data[: len(MAGIC)] != MAGIC:
        raise FormatError("not an hvae compressed file (its first bytes are not hvae's magic number)")
    fixed = len(MAGIC) + 6
    if len(data) < fixed:
        raise FormatError("the file is truncated (it ends inside its header)")
    version, head_len = struct.unpack_from("<HI", data, len(MAGIC))
    if version > VERSION:
        raise FormatError(
            f"the file has format version {version}, written by a newer hvae; this one reads versions up to "
            f"{VERSION}: upgrade hvae to decompress it"
        )
    body, digest = data[:-_DIGEST], data[-_DIGEST:]
    if len(data) < fixed + head_len + 8 + _DIGEST or hashlib.sha256(body).digest() != digest:
        raise FormatError("the file is truncated or corrupted (its SHA-256 checksum does not match); nothing decoded")
    header = json.loads(data[fixed : fixed + head_len].decode())
    (n,) = struct.unpack_from("<Q", data, fixed + head_len)
    start = fixed + head_len + 8
    if start + n != len(body):
        raise FormatError("the file is truncated or corrupted (payload length does not match)")
    return header, data[start : start + n]
