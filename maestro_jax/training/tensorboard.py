"""A TensorBoard event-file writer without TensorFlow (scalars and PNG images).

TensorBoard reads `events.out.tfevents.*` files: TFRecord framing around serialized `Event`
protobufs. Neither TensorFlow, `tensorboard` nor `tensorboardX` is a dependency of this project,
and the few messages needed here are small enough to encode by hand (wire format of
`tensorflow/core/util/event.proto` and `framework/summary.proto`):

    Event   { double wall_time = 1; int64 step = 2; string file_version = 3; Summary summary = 5; }
    Summary { repeated Value value = 1; }
    Value   { string tag = 1; float simple_value = 2; Image image = 4; }
    Image   { int32 height = 1; int32 width = 2; int32 colorspace = 3;
              bytes encoded_image_string = 4; }

    record  = uint64 length (LE) | uint32 masked_crc32c(length) | data | uint32 masked_crc32c(data)
    masked_crc32c(x) = ((c >> 15) | (c << 17)) + 0xa282ead8 (mod 2**32), c = CRC-32C(x)

`read_events` decodes the same subset back (tests, and a quick look without TensorBoard).
"""

from __future__ import annotations

import os
import socket
import struct
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

# ----------------------------------------------------------------------------- CRC-32C


def _crc_table() -> list[int]:
    poly = 0x82F63B78  # Castagnoli, reflected
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ poly if c & 1 else c >> 1
        table.append(c)
    return table


_TABLE = _crc_table()


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli) of `data`; crc32c(b'123456789') == 0xE3069283."""
    c = 0xFFFFFFFF
    t = _TABLE
    for b in data:
        c = t[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
    c = crc32c(data)
    return (((c >> 15) | (c << 17)) + 0xA282EAD8) & 0xFFFFFFFF


# ----------------------------------------------------------------------------- protobuf wire


def _varint(n: int) -> bytes:
    n &= (1 << 64) - 1  # negative int64 -> two's complement, as protobuf does
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _key(field: int, wire: int) -> bytes:
    return _varint(field << 3 | wire)


def _f_varint(field: int, n: int) -> bytes:
    return _key(field, 0) + _varint(int(n))


def _f_double(field: int, x: float) -> bytes:
    return _key(field, 1) + struct.pack("<d", float(x))


def _f_float(field: int, x: float) -> bytes:
    return _key(field, 5) + struct.pack("<f", float(x))


def _f_bytes(field: int, b: bytes | str) -> bytes:
    if isinstance(b, str):
        b = b.encode("utf-8")
    return _key(field, 2) + _varint(len(b)) + b


def _event(step: int, summary: bytes | None = None, file_version: str | None = None) -> bytes:
    out = _f_double(1, time.time()) + _f_varint(2, step)
    if file_version is not None:
        out += _f_bytes(3, file_version)
    if summary is not None:
        out += _f_bytes(5, summary)
    return out


def _record(data: bytes) -> bytes:
    n = struct.pack("<Q", len(data))
    return n + struct.pack("<I", masked_crc32c(n)) + data + struct.pack("<I", masked_crc32c(data))


# ----------------------------------------------------------------------------- writer


class SummaryWriter:
    """Appends events to a new `events.out.tfevents.<time>.<host>.<pid>` file in `logdir`.

    Writes go to an in-memory buffer; `flush()` appends it to the file (call it every few steps
    and at the end). Not thread-safe; one writer per process (write from process 0 only).
    """

    def __init__(self, logdir: str | os.PathLike, filename_suffix: str = ""):
        self.logdir = Path(logdir)
        self.logdir.mkdir(parents=True, exist_ok=True)
        name = f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}.{os.getpid()}"
        self.path = self.logdir / (name + filename_suffix)
        n = 0
        while self.path.exists():  # two writers in one second in one process
            n += 1
            self.path = self.logdir / f"{name}.{n}{filename_suffix}"
        self._buf: list[bytes] = [_record(_event(0, file_version="brain.Event:2"))]
        self.flush()

    def scalar(self, tag: str, value: float, step: int) -> None:
        value_msg = _f_bytes(1, tag) + _f_float(2, value)
        self._buf.append(_record(_event(step, _f_bytes(1, value_msg))))

    def scalars(self, values: Mapping[str, float], step: int) -> None:
        """Several scalars in one event (one Summary with one Value per tag)."""
        summary = b"".join(_f_bytes(1, _f_bytes(1, k) + _f_float(2, v)) for k, v in values.items())
        self._buf.append(_record(_event(step, summary)))

    def image(self, tag: str, png: bytes, height: int, width: int, step: int) -> None:
        """A PNG-encoded RGB image (colorspace 3)."""
        img = _f_varint(1, height) + _f_varint(2, width) + _f_varint(3, 3) + _f_bytes(4, png)
        value_msg = _f_bytes(1, tag) + _f_bytes(4, img)
        self._buf.append(_record(_event(step, _f_bytes(1, value_msg))))

    def flush(self) -> None:
        if not self._buf:
            return
        with open(self.path, "ab") as f:
            f.write(b"".join(self._buf))
            f.flush()
        self._buf.clear()

    def close(self) -> None:
        self.flush()


# ----------------------------------------------------------------------------- reader


def _parse(data: bytes) -> Iterator[tuple[int, int, Any]]:
    """(field, wire type, value) of a protobuf message; length-delimited values as bytes."""
    i = 0
    while i < len(data):
        key, i = _read_varint(data, i)
        field, wire = key >> 3, key & 7
        if wire == 0:
            v, i = _read_varint(data, i)
        elif wire == 1:
            v = data[i : i + 8]
            i += 8
        elif wire == 2:
            n, i = _read_varint(data, i)
            v = data[i : i + n]
            i += n
        elif wire == 5:
            v = data[i : i + 4]
            i += 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        yield field, wire, v


def _read_varint(data: bytes, i: int) -> tuple[int, int]:
    n = shift = 0
    while True:
        b = data[i]
        i += 1
        n |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return n, i


def read_records(path: str | os.PathLike) -> Iterator[bytes]:
    """The TFRecord payloads of `path`, checking both CRCs."""
    data = Path(path).read_bytes()
    i = 0
    while i < len(data):
        head = data[i : i + 8]
        (n,) = struct.unpack("<Q", head)
        (hc,) = struct.unpack("<I", data[i + 8 : i + 12])
        if hc != masked_crc32c(head):
            raise ValueError(f"{path}: bad length CRC at offset {i}")
        payload = data[i + 12 : i + 12 + n]
        (dc,) = struct.unpack("<I", data[i + 12 + n : i + 16 + n])
        if dc != masked_crc32c(payload):
            raise ValueError(f"{path}: bad data CRC at offset {i}")
        yield payload
        i += 16 + n


def read_events(path: str | os.PathLike) -> list[dict]:
    """Decode events written by `SummaryWriter`: dicts with `wall_time`, `step` and either
    `file_version` or `values` ({tag: float} for scalars, {tag: {'height','width','png'}} for
    images)."""
    out = []
    for rec in read_records(path):
        ev: dict[str, Any] = {"step": 0}
        for field, _, v in _parse(rec):
            if field == 1:
                ev["wall_time"] = struct.unpack("<d", v)[0]
            elif field == 2:
                ev["step"] = v
            elif field == 3:
                ev["file_version"] = v.decode()
            elif field == 5:
                values = ev.setdefault("values", {})
                for _, _, val in _parse(v):
                    tag, x = None, None
                    for vf, _, vv in _parse(val):
                        if vf == 1:
                            tag = vv.decode()
                        elif vf == 2:
                            x = struct.unpack("<f", vv)[0]
                        elif vf == 4:
                            img = {}
                            for imf, _, imv in _parse(vv):
                                img[{1: "height", 2: "width", 3: "colorspace", 4: "png"}[imf]] = imv
                            x = img
                    values[tag] = x
        out.append(ev)
    return out
