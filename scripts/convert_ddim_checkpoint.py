#!/usr/bin/env python3
"""Convert a PyTorch checkpoint of the DDPM/DDIM UNet (ermongroup/ddim `models/diffusion.py`
`Model`, and the S²-DMs code built on it) into safetensors weights that `s2dm sample --weights`
loads unchanged.

Accepted inputs:
  * ermongroup/ddim training checkpoints `ckpt.pth`: a list
    [model_state, optimizer_state, epoch, step(, ema_state)]; --ema takes the EMA weights;
  * a plain state_dict (e.g. the DDPM CIFAR10/CelebA weights converted to PyTorch).
A `module.` prefix (DataParallel) is removed. Needs only PyTorch (no safetensors package).

Usage: convert_ddim_checkpoint.py ckpt.pth out.safetensors [--ema]
"""
import argparse
import json
import struct
import sys

import torch

DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64",
          torch.int64: "I64", torch.int32: "I32", torch.uint8: "U8"}


def pick_state_dict(obj, ema):
    if isinstance(obj, (list, tuple)):
        if ema:
            if len(obj) < 5:
                sys.exit("error: this checkpoint holds no EMA weights (a list of %d entries)" % len(obj))
            return obj[-1]
        return obj[0]
    if isinstance(obj, dict) and "state_dict" in obj:
        return obj["state_dict"]
    if isinstance(obj, dict):
        if ema:
            sys.exit("error: a plain state_dict has no separate EMA weights; drop --ema")
        return obj
    sys.exit("error: unrecognised checkpoint layout (%s)" % type(obj).__name__)


def save_safetensors(tensors, path, metadata):
    header, offset, blobs = {"__metadata__": metadata}, 0, []
    for name, t in tensors.items():
        t = t.detach().cpu().contiguous()
        if t.dtype not in DTYPES:
            sys.exit("error: tensor %s has unsupported dtype %s" % (name, t.dtype))
        # Bytes through a uint8 view, which works for every dtype including bfloat16.
        data = t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
        header[name] = {"dtype": DTYPES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
        blobs.append(data)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for b in blobs:
            f.write(b)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint")
    p.add_argument("out")
    p.add_argument("--ema", action="store_true", help="take the EMA weights of a training checkpoint")
    a = p.parse_args()
    obj = torch.load(a.checkpoint, map_location="cpu")
    sd = pick_state_dict(obj, a.ema)
    out = {}
    for k, v in sd.items():
        if not torch.is_tensor(v):
            continue
        name = k[len("module."):] if k.startswith("module.") else k
        if name == "logvar":  # the 'bayesian' model variant's extra parameter
            continue
        out[name] = v
    if "conv_in.weight" not in out or "temb.dense.0.weight" not in out:
        sys.exit("error: %s does not look like a DDPM/DDIM UNet (no conv_in / temb.dense weights)" % a.checkpoint)
    save_safetensors(out, a.out, {"format": "pt", "source": a.checkpoint})
    print("wrote %s: %d tensors, %d parameters" % (a.out, len(out), sum(v.numel() for v in out.values())))


if __name__ == "__main__":
    main()
