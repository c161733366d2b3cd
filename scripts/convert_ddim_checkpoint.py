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
import pickle

import torch

from convert_common import ConversionError, fail, safetensors_bytes, write_atomically


def pick_state_dict(obj, ema):
    if isinstance(obj, (list, tuple)):
        if ema:
            if len(obj) < 5:
                fail("error: this checkpoint holds no EMA weights (a list of %d entries)" % len(obj))
            return obj[-1]
        return obj[0]
    if isinstance(obj, dict) and "state_dict" in obj:
        return obj["state_dict"]
    if isinstance(obj, dict):
        if ema:
            fail("error: a plain state_dict has no separate EMA weights; drop --ema")
        return obj
    fail("error: unrecognised checkpoint layout (%s)" % type(obj).__name__)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint")
    p.add_argument("out")
    p.add_argument("--ema", action="store_true", help="take the EMA weights of a training checkpoint")
    a = p.parse_args()
    try:
        obj = torch.load(a.checkpoint, map_location="cpu")
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as e:
        fail(f"error: {a.checkpoint}: cannot read ({e})")
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
        fail("error: %s does not look like a DDPM/DDIM UNet (no conv_in / temb.dense weights)" % a.checkpoint)
    try:  # (in the checkpoint's own types)
        content = safetensors_bytes(out, {"format": "pt", "source": a.checkpoint}, float32=False)
    except ConversionError as e:
        fail(f"error: {e}")
    write_atomically(a.out, content)
    print("wrote %s: %d tensors, %d parameters" % (a.out, len(out), sum(v.numel() for v in out.values())))


if __name__ == "__main__":
    main()
