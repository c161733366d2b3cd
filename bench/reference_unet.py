#!/usr/bin/env python3
"""PyTorch reference for bench/compare.sh and scripts/gpu_check.sh: the DDPM/DDIM UNet (the
architecture of ermongroup/ddim models/diffusion.py, written out here so the benchmark needs no
download), timed for a training step (forward + MSE + backward + clipping + Adam + EMA) and a
no-grad forward; and with --inception, torchvision's Inception-v3 pool features (as FID takes them).

It gets the speed switches s2dm uses, so a ratio compares implementations, not settings:
channels-last tensors, and on CUDA TF32 with cuDNN's autotuner, fused Adam, a multi-tensor EMA
and CUDA graphs for the no-grad forward (each can be switched off). --compile adds torch.compile
(the forward replayed as CUDA graphs with mode reduce-overhead for evaluation).

Prints one JSON object: {"train_images_per_sec": ..., "train_peak_gib": ..., "eval_images_per_sec":
..., "eval_peak_gib": ..., "params": ...}: the keys of the modes run (peak memory on CUDA only).
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
    """Calls per second of fn over at least min_time seconds, after one warm-up call."""
    fn()
    n, start = 0, time.perf_counter()
    while True:
        fn()
        n += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_time:
            return n / elapsed


def record_peak(dev, out, key):
    if dev.type == "cuda":
        out[key] = torch.cuda.max_memory_allocated(dev) / 2**30


def reset_peak(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(dev)


def make_adam(params, dev, fused):
    if fused:
        try:
            return torch.optim.Adam(params, lr=2e-4, fused=True)
        except (TypeError, RuntimeError):  # no fused Adam in this PyTorch or for this device
            pass
    return torch.optim.Adam(params, lr=2e-4)


def graphed(fn, dev):
    """fn() captured once as a CUDA graph; the returned function replays it."""
    side = torch.cuda.Stream(dev)
    side.wait_stream(torch.cuda.current_stream(dev))
    with torch.cuda.stream(side):
        for _ in range(3):
            fn()
    torch.cuda.current_stream(dev).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph.replay


def bench_unet(a, dev, sync, out):
    arch = dict(ch_mult=(1, 2, 2, 2, 4), res=64) if a.config == "celeba64" else {}
    memory_format = torch.channels_last if a.channels_last else torch.contiguous_format
    net = UNet(**arch).to(dev, memory_format=memory_format)
    ema = UNet(**arch).to(dev, memory_format=memory_format)
    size = arch.get("res", 32)
    x0 = torch.randn(a.batch, 3, size, size, device=dev).contiguous(memory_format=memory_format)
    out["params"] = sum(p.numel() for p in net.parameters())
    # (cache_enabled=False: autocast's weight cache cannot live across CUDA graph captures.)
    bf16 = a.bf16 and dev.type == "cuda"
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=False)) if bf16 else contextlib.nullcontext
    forward = torch.compile(net) if a.compile else net

    if a.mode in ("train", "both"):
        params, ema_params = list(net.parameters()), list(ema.parameters())
        opt = make_adam(params, dev, a.fused_adam)

        def train_step():
            opt.zero_grad(set_to_none=True)
            t = torch.randint(0, 1000, (a.batch,), device=dev)
            e = torch.randn_like(x0)
            with autocast():
                loss = (e - forward(x0 + e, t.float()).float()).square().flatten(1).mean(1).mean()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            with torch.no_grad():
                torch._foreach_mul_(ema_params, 0.9999)
                torch._foreach_add_(ema_params, params, alpha=1e-4)
            sync()

        net.train()
        reset_peak(dev)
        start = time.perf_counter()
        train_step()
        out["train_first_step_seconds"] = time.perf_counter() - start  # (with --compile: compilation)
        out["train_images_per_sec"] = timed(train_step, a.min_time) * a.batch
        record_peak(dev, out, "train_peak_gib")
        del opt

    if a.mode in ("eval", "both"):
        net.eval()
        t = torch.full((a.batch,), 500.0, device=dev)
        evaluate = torch.compile(net, mode="reduce-overhead") if a.compile and dev.type == "cuda" else forward

        def forward_once():
            with torch.no_grad(), autocast():
                evaluate(x0, t)

        reset_peak(dev)
        start = time.perf_counter()
        if a.cuda_graphs and not a.compile and dev.type == "cuda":
            step = graphed(forward_once, dev)
        else:
            forward_once()  # (with --compile: the compilation)
            step = forward_once
        out["eval_first_step_seconds"] = time.perf_counter() - start

        def eval_step():
            step()
            sync()

        out["eval_images_per_sec"] = timed(eval_step, a.min_time) * a.batch
        record_peak(dev, out, "eval_peak_gib")


def bench_inception(a, dev, sync, out):
    """torchvision's Inception-v3 up to its 2048-d pool, on 32x32 uint8 images resized to 299 as
    FID does, in fp32 without TF32 (as s2dm computes FID features)."""
    import torchvision  # (only here: the UNet rows need no torchvision)

    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    net = torchvision.models.inception_v3(weights=None, aux_logits=False, init_weights=False).to(dev).eval()
    net.fc = torch.nn.Identity()
    images = torch.randint(0, 256, (a.batch, 3, 32, 32), dtype=torch.uint8, device=dev)

    def features():
        with torch.no_grad():
            x = F.interpolate(images.float() / 255.0, size=(299, 299), mode="bilinear", align_corners=False)
            net(2 * x - 1)
        sync()

    out["inception_images_per_sec"] = timed(features, a.min_time) * a.batch


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--min-time", type=float, default=10.0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast (CUDA)")
    p.add_argument("--config", default="cifar10", choices=["cifar10", "celeba64"])
    p.add_argument("--mode", default="both", choices=["train", "eval", "both"])
    p.add_argument("--compile", action="store_true", help="torch.compile the UNet")
    p.add_argument("--inception", action="store_true", help="time Inception-v3 features instead of the UNet")
    for switch in ("channels-last", "tf32", "fused-adam", "cuda-graphs"):
        p.add_argument(f"--no-{switch}", dest=switch.replace("-", "_"), action="store_false")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    dev = torch.device(a.device)
    sync = (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else (lambda: None)
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = a.tf32
        torch.backends.cudnn.benchmark = a.tf32  # (s2dm couples the autotuner to the same switch)
    out = {}
    (bench_inception if a.inception else bench_unet)(a, dev, sync, out)
    out.update(batch=a.batch, threads=torch.get_num_threads(), torch=torch.__version__, compile=a.compile)
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
