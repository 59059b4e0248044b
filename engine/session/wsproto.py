"""Kyutai's Moshi websocket protocol (`/api/chat`): message encoding and strict decoding.

Every websocket message is binary; its first byte is the kind, the rest the payload
(kyutai-labs/moshi rust/protocol.md, client/src/protocol/encoder.ts, moshi/server.py):

    0x00 handshake  server -> client once, when the conversation starts.  protocol.md and the
                    Rust backend send two u32 LE (protocol version 0, model version); the Python
                    servers (moshi.server, moshi_mlx.local_web) send the single byte b"\\x00";
                    the web client's encoder writes two bytes.  All three forms are accepted.
    0x01 audio      Ogg pages of an Opus stream, 24 kHz mono, one continuous Ogg stream per
                    connection and direction (the first message carries OpusHead/OpusTags).
    0x02 text       a UTF-8 piece of Moshi's text stream (a sentencepiece token, U+2581 -> " ").
    0x03 control    one byte: 0 start, 1 endTurn, 2 pause, 3 restart (unused in full streaming).
    0x04 metadata   UTF-8 JSON (the Rust backend sends its sampling parameters and build info).
    0x05 error      UTF-8 description.
    0x06 ping       no payload in the spec ("currently unused"); a short opaque payload is allowed.
    0x07 colored text (web client decoder only: one colour byte, then UTF-8); accepted only when
                    asked for, never part of what a server must understand.

`decode()` validates everything a peer could get wrong -- unknown kind, empty message, size,
UTF-8, JSON, control values, and the Ogg framing of audio (capture pattern, version, header and
body lengths, CRC, no trailing bytes) -- and raises `ProtocolError` with a one-line reason, so a
malformed message can be rejected *before* it reaches the Opus decoder (whose stream state a
truncated page would corrupt for the rest of the connection).
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from typing import Any

HANDSHAKE = 0x00
AUDIO = 0x01
TEXT = 0x02
CONTROL = 0x03
METADATA = 0x04
ERROR = 0x05
PING = 0x06
COLORED_TEXT = 0x07
KIND_NAMES = {
    HANDSHAKE: "handshake",
    AUDIO: "audio",
    TEXT: "text",
    CONTROL: "control",
    METADATA: "metadata",
    ERROR: "error",
    PING: "ping",
    COLORED_TEXT: "coloredtext",
}


SPEC_KINDS = frozenset(range(HANDSHAKE, PING + 1))  # what protocol.md defines
CLIENT_KINDS = SPEC_KINDS | {COLORED_TEXT}  # what a client accepts from a server
CONTROL_ACTIONS = {"start": 0, "endTurn": 1, "pause": 2, "restart": 3}
CONTROL_NAMES = {v: k for k, v in CONTROL_ACTIONS.items()}

# Limits.  80 ms of Opus at its maximum bitrate (510 kb/s) is ~5 KB; a second of it is 64 KB.
MAX_MESSAGE = 64 * 1024  # application limit: larger messages are rejected one by one
MAX_TRANSPORT = 1024 * 1024  # websocket limit: larger frames close the connection (1009)
MAX_PING_PAYLOAD = 125  # what a websocket control frame may carry; plenty for a nonce


class ProtocolError(ValueError):
    """A message that does not follow the protocol; `reason` is one line for logs and peers."""

    def __init__(self, reason: str, kind: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.kind = kind


@dataclass(frozen=True)
class OggPage:
    flags: int  # 0x01 continued packet, 0x02 beginning of stream, 0x04 end of stream
    granule: int
    serial: int
    sequence: int
    segments: int
    body_len: int
    size: int  # header + body

    @property
    def bos(self) -> bool:
        return bool(self.flags & 0x02)

    @property
    def eos(self) -> bool:
        return bool(self.flags & 0x04)


@dataclass(frozen=True)
class Message:
    kind: int
    payload: bytes
    text: str | None = None  # text, coloredtext, error
    data: Any = None  # metadata: the JSON value; control: the action name; handshake: (version, model)
    pages: tuple[OggPage, ...] = field(default=(), repr=False)  # audio
    color: int | None = None  # coloredtext

    @property
    def name(self) -> str:
        return KIND_NAMES.get(self.kind, f"0x{self.kind:02x}")


def _crc_table() -> list[int]:
    table = []
    for i in range(256):
        r = i << 24
        for _ in range(8):
            r = ((r << 1) ^ 0x04C11DB7) if r & 0x80000000 else (r << 1)
        table.append(r & 0xFFFFFFFF)
    return table


_CRC_TABLE = _crc_table()
_OGG_HEADER = struct.Struct("<4sBBqIIIB")  # capture, version, flags, granule, serial, seq, crc, nseg


def ogg_crc(data: bytes | bytearray | memoryview) -> int:
    """The Ogg page checksum: CRC-32, polynomial 0x04C11DB7, no reflection, init 0, no xor."""
    crc = 0
    table = _CRC_TABLE
    for b in bytes(data):
        crc = ((crc << 8) & 0xFFFFFFFF) ^ table[(crc >> 24) ^ b]
    return crc


def parse_ogg_pages(data: bytes) -> tuple[OggPage, ...]:
    """Split `data` into whole, checksum-valid Ogg pages; ProtocolError on anything else."""
    if not data:
        raise ProtocolError("audio message without Ogg data", AUDIO)
    pages = []
    pos, n = 0, len(data)
    while pos < n:
        head = data[pos: pos + 4]
        if head != b"OggS"[: len(head)]:
            raise ProtocolError(f"not an Ogg page at byte {pos} (capture pattern {head!r})", AUDIO)
        if n - pos < _OGG_HEADER.size:
            raise ProtocolError(f"truncated Ogg page header at byte {pos} ({n - pos} bytes left)", AUDIO)
        capture, version, flags, granule, serial, seq, crc, nseg = _OGG_HEADER.unpack_from(data, pos)
        if capture != b"OggS":
            raise ProtocolError(f"not an Ogg page at byte {pos} (capture pattern {capture!r})", AUDIO)
        if version != 0:
            raise ProtocolError(f"unsupported Ogg version {version}", AUDIO)
        if flags & ~0x07:
            raise ProtocolError(f"invalid Ogg page flags 0x{flags:02x}", AUDIO)
        head_len = _OGG_HEADER.size + nseg
        if n - pos < head_len:
            raise ProtocolError("truncated Ogg segment table", AUDIO)
        body_len = sum(data[pos + _OGG_HEADER.size: pos + head_len])
        size = head_len + body_len
        if n - pos < size:
            raise ProtocolError(
                f"truncated Ogg page: {n - pos} of {size} bytes", AUDIO
            )
        page = bytearray(data[pos: pos + size])
        page[22:26] = b"\0\0\0\0"
        if ogg_crc(page) != crc:
            raise ProtocolError(f"Ogg page checksum mismatch (page {seq})", AUDIO)
        pages.append(OggPage(flags, granule, serial, seq, nseg, body_len, size))
        pos += size
    return tuple(pages)


def encode_handshake(version: int = 0, model: int = 0) -> bytes:
    """The handshake as protocol.md and the Rust backend write it: 0x00, u32 version, u32 model."""
    return bytes([HANDSHAKE]) + struct.pack("<II", version, model)


def encode_audio(ogg: bytes, *, validate: bool = False) -> bytes:
    if not ogg:
        raise ValueError("empty audio payload")
    if validate:
        parse_ogg_pages(ogg)
    return bytes([AUDIO]) + bytes(ogg)


def encode_text(text: str) -> bytes:
    return bytes([TEXT]) + text.encode("utf-8")


def encode_control(action: str | int) -> bytes:
    value = CONTROL_ACTIONS[action] if isinstance(action, str) else int(action)
    if value not in CONTROL_NAMES:
        raise ValueError(f"unknown control action {action!r}")
    return bytes([CONTROL, value])


def encode_metadata(obj: Any) -> bytes:
    return bytes([METADATA]) + json.dumps(obj, separators=(",", ":"), allow_nan=False).encode("utf-8")


def encode_error(message: str) -> bytes:
    return bytes([ERROR]) + message.encode("utf-8")


def encode_ping(payload: bytes = b"") -> bytes:
    if len(payload) > MAX_PING_PAYLOAD:
        raise ValueError(f"ping payload over {MAX_PING_PAYLOAD} bytes")
    return bytes([PING]) + bytes(payload)


def _utf8(payload: bytes, kind: int) -> str:
    try:
        return payload.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ProtocolError(f"{KIND_NAMES[kind]} message is not valid UTF-8 ({e.reason} at byte {e.start})",
                            kind) from None


def _reject_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def decode(data: bytes | bytearray | memoryview, *, kinds=SPEC_KINDS, max_size: int = MAX_MESSAGE) -> Message:
    """Validate and decode one websocket message; ProtocolError when it breaks the protocol."""
    data = bytes(data)
    if not data:
        raise ProtocolError("empty message")
    kind = data[0]
    if kind not in KIND_NAMES or kind not in kinds:
        raise ProtocolError(f"unknown message kind 0x{kind:02x}", kind)
    if len(data) > max_size:
        raise ProtocolError(
            f"{KIND_NAMES[kind]} message of {len(data)} bytes is over the {max_size}-byte limit", kind
        )
    payload = data[1:]
    if kind == HANDSHAKE:
        if len(payload) == 0:
            return Message(kind, payload, data=(0, 0))
        if len(payload) == 2:
            return Message(kind, payload, data=(payload[0], payload[1]))
        if len(payload) == 8:
            return Message(kind, payload, data=struct.unpack("<II", payload))
        raise ProtocolError(f"handshake payload of {len(payload)} bytes (expected 0, 2 or 8)", kind)
    if kind == AUDIO:
        return Message(kind, payload, pages=parse_ogg_pages(payload))
    if kind == TEXT:
        return Message(kind, payload, text=_utf8(payload, kind))
    if kind == COLORED_TEXT:
        if not payload:
            raise ProtocolError("coloredtext message without a colour byte", kind)
        return Message(kind, payload, text=_utf8(payload[1:], kind), color=payload[0])
    if kind == CONTROL:
        if len(payload) != 1:
            raise ProtocolError(f"control payload of {len(payload)} bytes (expected 1)", kind)
        if payload[0] not in CONTROL_NAMES:
            raise ProtocolError(f"unknown control action {payload[0]}", kind)
        return Message(kind, payload, data=CONTROL_NAMES[payload[0]])
    if kind == METADATA:
        text = _utf8(payload, kind)
        try:
            value = json.loads(text, parse_constant=_reject_constant)
        except ValueError as e:
            raise ProtocolError(f"metadata is not valid JSON: {e}", kind) from None
        return Message(kind, payload, text=text, data=value)
    if kind == ERROR:
        return Message(kind, payload, text=_utf8(payload, kind))
    # PING
    if len(payload) > MAX_PING_PAYLOAD:
        raise ProtocolError(f"ping payload of {len(payload)} bytes (at most {MAX_PING_PAYLOAD})", kind)
    return Message(kind, payload)
