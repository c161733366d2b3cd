#!/usr/bin/env python3
"""Checks that `s2dm export` weights load into the reference PyTorch architecture
(bench/reference_unet.py, the ermongroup/ddim Model's module tree) and that both compute the same ε.

  s2dm export --checkpoint C --out w.safetensors
  s2dm sample --checkpoint C --raw --steps 1 --timesteps 999 --set sample.clip_denoised=false \
      --noise x.npy --save-float x0.npy --out DIR
  check_export.py w.safetensors x.npy x0.npy --ch 32 --ch-mult 1,2,2 --blocks 1 --attn "" --channels 1

With one DDIM step from t = 999 to ᾱ = 1, x0 = (x - √(1-a) ε)/√a, so s2dm's ε is recovered from x0 and
compared with the PyTorch model's ε(x, 999). Needs only PyTorch and numpy.
"""
import argparse
import json
import struct

import numpy as np
import torch

from reference_unet import UNet

DTYPES = {"F32": torch.float32, "F64": torch.float64, "F16": torch.float16, "BF16": torch.bfloat16, "I64": torch.int64}


def load_safetensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        lo, hi = info["data_offsets"]
        t = torch.frombuffer(bytearray(data[lo:hi]), dtype=DTYPES[info["dtype"]]) if hi > lo else torch.empty(0)
        out[name] = t.reshape(info["shape"])
    return out


def main():
    p = argparse.ArgumentParser()
    p.add_argument("weights")
    p.add_argument("noise")
    p.add_argument("x0")
    p.add_argument("--ch", type=int, default=128)
    p.add_argument("--ch-mult", default="1,2,2,2")
    p.add_argument("--blocks", type=int, default=2)
    p.add_argument("--attn", default="16")
    p.add_argument("--channels", type=int, default=3)
    p.add_argument("--res", type=int, default=32)
    a = p.parse_args()
    net = UNet(ch=a.ch, ch_mult=tuple(int(c) for c in a.ch_mult.split(",")), blocks=a.blocks,
               attn_res=tuple(int(r) for r in a.attn.split(",") if r), dropout=0.0, in_ch=a.channels, res=a.res)
    missing, unexpected = net.load_state_dict(load_safetensors(a.weights), strict=True), None
    net.eval()
    x = torch.from_numpy(np.load(a.noise))
    x0 = torch.from_numpy(np.load(a.x0)).double()
    betas = np.linspace(1e-4, 0.02, 1000, dtype=np.float64)
    ab = float(np.cumprod(1 - betas)[999])
    eps_s2dm = (x.double() - ab ** 0.5 * x0) / (1 - ab) ** 0.5
    with torch.no_grad():
        eps_ref = net(x, torch.full((x.shape[0],), 999.0)).double()
    err = (eps_s2dm - eps_ref).abs().max().item()
    print(f"loaded {len(net.state_dict())} tensors strictly; max |eps_s2dm - eps_pytorch| = {err:.3e} "
          f"(eps scale {eps_ref.abs().mean().item():.3f})")
    assert err < 1e-3, "s2dm and the reference PyTorch model disagree"


if __name__ == "__main__":
    main()
