#!/usr/bin/env python3
"""PyTorch eager reference for bench/compare.sh: the DDPM/DDIM UNet (the architecture of
ermongroup/ddim models/diffusion.py, written out here so the benchmark needs no download),
timed for a training step (forward + MSE + backward + Adam + EMA) and a no-grad forward.

Prints one JSON object: {"train_images_per_sec": ..., "eval_images_per_sec": ..., "params": ...}.
"""
import argparse
import contextlib
import json
import math
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


def norm(ch):
    return nn.GroupNorm(32, ch, eps=1e-6)


def swish(x):
    return x * torch.sigmoid(x)


def timestep_embedding(t, dim):
    half = dim // 2
    freqs = torch.exp(torch.arange(half, dtype=torch.float32, device=t.device) * -(math.log(10000) / (half - 1)))
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.sin(args), torch.cos(args)], dim=1)


class ResBlock(nn.Module):
    def __init__(self, cin, cout, temb, dropout):
        super().__init__()
        self.norm1, self.conv1 = norm(cin), nn.Conv2d(cin, cout, 3, 1, 1)
        self.temb_proj = nn.Linear(temb, cout)
        self.norm2, self.dropout, self.conv2 = norm(cout), nn.Dropout(dropout), nn.Conv2d(cout, cout, 3, 1, 1)
        self.nin_shortcut = nn.Conv2d(cin, cout, 1) if cin != cout else None

    def forward(self, x, temb):
        h = self.conv1(swish(self.norm1(x)))
        h = h + self.temb_proj(swish(temb))[:, :, None, None]
        h = self.conv2(self.dropout(swish(self.norm2(h))))
        return (self.nin_shortcut(x) if self.nin_shortcut is not None else x) + h


class Attn(nn.Module):
    def __init__(self, ch):
        super().__init__()
        self.norm = norm(ch)
        self.q, self.k, self.v, self.proj_out = (nn.Conv2d(ch, ch, 1) for _ in range(4))

    def forward(self, x):
        b, c, hh, ww = x.shape
        h = self.norm(x)
        q = self.q(h).reshape(b, c, -1).transpose(1, 2)
        k = self.k(h).reshape(b, c, -1)
        v = self.v(h).reshape(b, c, -1)
        w = torch.softmax(torch.bmm(q, k) * c ** -0.5, dim=2)
        out = torch.bmm(v, w.transpose(1, 2)).reshape(b, c, hh, ww)
        return x + self.proj_out(out)


class UNet(nn.Module):
    def __init__(self, ch=128, ch_mult=(1, 2, 2, 2), blocks=2, attn_res=(16,), dropout=0.1, in_ch=3, res=32):
        super().__init__()
        self.ch, temb = ch, 4 * ch
        self.temb = nn.Module()
        self.temb.dense = nn.ModuleList([nn.Linear(ch, temb), nn.Linear(temb, temb)])
        self.conv_in = nn.Conv2d(in_ch, ch, 3, 1, 1)
        self.levels, self.blocks = len(ch_mult), blocks
        pushed, block_in, cur = [ch], ch, res
        self.down = nn.ModuleList()
        for i, m in enumerate(ch_mult):
            level = nn.Module()
            level.block, level.attn = nn.ModuleList(), nn.ModuleList()
            for _ in range(blocks):
                level.block.append(ResBlock(block_in, ch * m, temb, dropout))
                block_in = ch * m
                if cur in attn_res:
                    level.attn.append(Attn(block_in))
                pushed.append(block_in)
            if i != len(ch_mult) - 1:
                level.downsample = nn.Module()
                level.downsample.conv = nn.Conv2d(block_in, block_in, 3, 2, 0)
                pushed.append(block_in)
                cur //= 2
            self.down.append(level)
        self.mid = nn.Module()
        self.mid.block_1 = ResBlock(block_in, block_in, temb, dropout)
        self.mid.attn_1 = Attn(block_in)
        self.mid.block_2 = ResBlock(block_in, block_in, temb, dropout)
        ups = [None] * len(ch_mult)
        for i in reversed(range(len(ch_mult))):
            level = nn.Module()
            level.block, level.attn = nn.ModuleList(), nn.ModuleList()
            for _ in range(blocks + 1):
                level.block.append(ResBlock(block_in + pushed.pop(), ch * ch_mult[i], temb, dropout))
                block_in = ch * ch_mult[i]
                if cur in attn_res:
                    level.attn.append(Attn(block_in))
            if i != 0:
                level.upsample = nn.Module()
                level.upsample.conv = nn.Conv2d(block_in, block_in, 3, 1, 1)
                cur *= 2
            ups[i] = level
        self.up = nn.ModuleList(ups)
        self.norm_out = norm(block_in)
        self.conv_out = nn.Conv2d(block_in, in_ch, 3, 1, 1)

    def forward(self, x, t):
        temb = self.temb.dense[1](swish(self.temb.dense[0](timestep_embedding(t, self.ch))))
        hs = [self.conv_in(x)]
        for i, level in enumerate(self.down):
            for j, block in enumerate(level.block):
                h = block(hs[-1], temb)
                if len(level.attn):
                    h = level.attn[j](h)
                hs.append(h)
            if i != self.levels - 1:
                hs.append(level.downsample.conv(F.pad(hs[-1], (0, 1, 0, 1))))
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(hs[-1], temb)), temb)
        for i in reversed(range(self.levels)):
            level = self.up[i]
            for j, block in enumerate(level.block):
                h = block(torch.cat([h, hs.pop()], dim=1), temb)
                if len(level.attn):
                    h = level.attn[j](h)
            if i != 0:
                h = level.upsample.conv(F.interpolate(h, scale_factor=2.0, mode="nearest"))
        return self.conv_out(swish(self.norm_out(h)))


def timed(fn, min_time):
    fn()  # warm-up
    n, start = 0, time.perf_counter()
    while True:
        fn()
        n += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_time:
            return n / elapsed


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--min-time", type=float, default=10.0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast (CUDA)")
    p.add_argument("--config", default="cifar10", choices=["cifar10", "celeba64"])
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    dev = torch.device(a.device)
    arch = dict(ch_mult=(1, 2, 2, 2, 4), res=64) if a.config == "celeba64" else {}
    net, ema = UNet(**arch).to(dev), UNet(**arch).to(dev)
    opt = torch.optim.Adam(net.parameters(), lr=2e-4)
    size = arch.get("res", 32)
    x0 = torch.randn(a.batch, 3, size, size, device=dev)
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if a.bf16 else contextlib.nullcontext
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)

    def train_step():
        opt.zero_grad()
        t = torch.randint(0, 1000, (a.batch,), device=dev)
        e = torch.randn_like(x0)
        with autocast():
            loss = (e - net(x0 + e, t.float()).float()).square().flatten(1).mean(1).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            for pe, p in zip(ema.parameters(), net.parameters()):
                pe.mul_(0.9999).add_(p, alpha=1e-4)
        sync()

    def eval_step():
        with torch.no_grad(), autocast():
            net(x0, torch.full((a.batch,), 500.0, device=dev))
        sync()

    net.train()
    train_rate = timed(train_step, a.min_time) * a.batch
    net.eval()
    eval_rate = timed(eval_step, a.min_time) * a.batch
    peak = torch.cuda.max_memory_allocated() / 2**30 if dev.type == "cuda" else 0.0
    print(json.dumps({"train_images_per_sec": train_rate, "eval_images_per_sec": eval_rate, "peak_gib": peak,
                      "params": sum(p.numel() for p in net.parameters()), "threads": torch.get_num_threads(),
                      "torch": torch.__version__}))


if __name__ == "__main__":
    main()
