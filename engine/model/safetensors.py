"""Reading a safetensors header (no tensor data): cheap checks of weight files before MLX or
rustymimi loads them, so a truncated or foreign file is named in one line."""

from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path

_DTYPE_SIZES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4,
    "I64": 8, "U64": 8, "F64": 8,
}  # fmt: skip


_MAX_HEADER = 100 * 1024 * 1024


class SafetensorsError(ValueError):
    """The file is not a complete, well-formed safetensors file (message says why)."""


@dataclass(frozen=True)
class SafetensorsInfo:
    path: Path
    tensors: dict[str, dict]  # name -> {"dtype": str, "shape": [int], "data_offsets": [b, e]}
    metadata: dict[str, str]
    file_size: int

    @property
    def is_quantized(self) -> bool:
        """MLX-quantized weights come as `X.weight` (uint32) + `X.scales` + `X.biases`."""
        return any(name.endswith(".scales") for name in self.tensors)

    @property
    def float_kind(self) -> str:
        """The floating point type of most tensors: "bf16", "f16", "f32"."""
        counts: dict[str, int] = {}
        for entry in self.tensors.values():
            counts[entry["dtype"]] = counts.get(entry["dtype"], 0) + 1
        floats = {k: v for k, v in counts.items() if k in ("BF16", "F16", "F32", "F64")}
        if not floats:
            return "unknown dtype"
        return max(floats, key=lambda k: floats[k]).lower()


def read_safetensors_header(path: Path | str) -> SafetensorsInfo:
    """Parse and check the header of a safetensors file (reads only the header)."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            prefix = fh.read(8)
            if len(prefix) < 8:
                raise SafetensorsError(f"not a safetensors file ({size} bytes)")
            (header_len,) = struct.unpack("<Q", prefix)
            if header_len > min(_MAX_HEADER, size - 8) or header_len < 2:
                if header_len < _MAX_HEADER and header_len > size - 8:
                    raise SafetensorsError("truncated file (its header is cut off)")
                raise SafetensorsError("not a safetensors file (no valid header)")
            raw = fh.read(header_len)
    except OSError as exc:
        raise SafetensorsError(f"cannot read it: {exc.strerror or exc}") from exc
    if not raw.lstrip().startswith(b"{"):
        raise SafetensorsError("not a safetensors file (no valid header)")
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise SafetensorsError("not a safetensors file (header is not valid JSON)") from None
    if not isinstance(header, dict):
        raise SafetensorsError("not a safetensors file (header is not a JSON object)")
    metadata = header.pop("__metadata__", None) or {}
    end = 0
    for name, entry in header.items():
        try:
            dtype, shape, (begin, stop) = entry["dtype"], entry["shape"], entry["data_offsets"]
            valid = (
                isinstance(begin, int)
                and isinstance(stop, int)
                and 0 <= begin <= stop
                and all(isinstance(d, int) and d >= 0 for d in shape)
            )
        except (TypeError, KeyError, ValueError):
            valid = False
        if not valid:
            raise SafetensorsError(f"corrupt header entry for tensor {name!r}")
        itemsize = _DTYPE_SIZES.get(dtype)
        if itemsize is not None and (stop - begin) != math.prod(shape) * itemsize:
            raise SafetensorsError(f"corrupt header entry for tensor {name!r} (size mismatch)")
        end = max(end, stop)
    expected = 8 + header_len + end
    if size < expected:
        raise SafetensorsError(f"truncated file ({size} bytes, its header describes {expected})")
    return SafetensorsInfo(path=path, tensors=header, metadata=metadata, file_size=size)
