#!/usr/bin/env python3
"""What s2dm's checkpoint converters share: an error for bad input, safetensors and an s2dm config
written atomically (nothing half-written when a conversion fails)."""
import json
import os
import struct
import sys


class ConversionError(Exception):
    """A checkpoint setting s2dm cannot represent; the message names it."""


def fail(message):
    """Bad input: the message, exit code 2, nothing written."""
    print(message, file=sys.stderr)
    sys.exit(2)


def safetensors_names():
    """safetensors' dtype names of the tensor types the converters write and read."""
    import torch

    return {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64",
            torch.int64: "I64", torch.int32: "I32", torch.uint8: "U8"}


def safetensors_bytes(state, metadata, float32=True):
    """A state_dict as safetensors bytes: in float32 (what s2dm computes in), or with
    float32=False in each tensor's own type."""
    import torch

    names = safetensors_names()
    header, blobs, offset = {"__metadata__": metadata}, [], 0
    for name, tensor in state.items():
        tensor = tensor.detach().cpu().contiguous()
        if float32:
            tensor = tensor.float()
        if tensor.dtype not in names:
            raise ConversionError(f"tensor {name} has dtype {tensor.dtype}, which safetensors files here do not hold")
        # Bytes through a uint8 view, which works for every type, bfloat16 included.
        raw = tensor.view(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b""
        header[name] = {"dtype": names[tensor.dtype], "shape": list(tensor.shape),
                        "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + b"".join(blobs)


def read_safetensors(path):
    """A safetensors file's tensors (needs only PyTorch, not the safetensors package)."""
    import torch

    dtypes = {name: dtype for dtype, name in safetensors_names().items() if dtype.is_floating_point}
    with open(path, "rb") as f:
        content = f.read()
    (length,) = struct.unpack("<Q", content[:8])
    header = json.loads(content[8:8 + length])
    out = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        if entry["dtype"] not in dtypes:
            raise ConversionError(f"{path}: tensor {name} has dtype {entry['dtype']} (expected float weights)")
        begin, end = entry["data_offsets"]
        raw = bytearray(content[8 + length + begin:8 + length + end])
        out[name] = torch.frombuffer(raw, dtype=dtypes[entry["dtype"]]).reshape(entry["shape"]) if raw else \
            torch.zeros(entry["shape"], dtype=dtypes[entry["dtype"]])
    return out


def yaml_text(config, origin, converter):
    """An s2dm config (nested dicts of plain values) as YAML, with a line naming its origin."""
    lines = [f"# Converted from {origin} by scripts/{converter}"]

    def emit(mapping, indent):
        for key, value in mapping.items():
            if isinstance(value, dict):
                lines.append(" " * indent + f"{key}:")
                emit(value, indent + 2)
            else:
                lines.append(" " * indent + f"{key}: {json.dumps(value)}")

    emit(config, 0)
    return "\n".join(lines) + "\n"


def write_atomically(path, content):
    partial = path + ".partial"
    with open(partial, "wb") as f:
        f.write(content)
    os.replace(partial, path)
