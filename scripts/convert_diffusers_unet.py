#!/usr/bin/env python3
"""Converts a diffusers UNet2DModel DDPM checkpoint into s2dm's DDPM UNet weights and config.

  python3 scripts/convert_diffusers_unet.py MODEL_DIR OUT

MODEL_DIR is a diffusers model folder (config.json and diffusion_pytorch_model.safetensors or
.bin), or a pipeline folder that holds it as unet/. The noise schedule comes from the scheduler
config beside it: MODEL_DIR/scheduler_config.json (the flat layout of google/ddpm-cifar10-32 and
its kind) or the pipeline's scheduler/scheduler_config.json. Writes

  OUT.safetensors  the weights under s2dm's (ermongroup/ddim's) names
  OUT.yaml         an s2dm config: the UNet's widths, depth and attention resolutions, the image
                   size and channels, the noise schedule, and sample.clip_denoised as the
                   scheduler's clip_sample

so that `s2dm sample --weights OUT.safetensors --config OUT.yaml` samples the model. s2dm's UNet
is the DDPM architecture that diffusers' DDPM ports reproduce; a setting it does not have (another
time embedding, head count, normalisation, block type, prediction type or β schedule) is refused
with a message naming the config key, and nothing is written. Needs Python 3 with PyTorch
(Debian: python3-torch).
"""
import argparse
import json
import os
import pickle
import re
import sys

from convert_common import ConversionError, fail, read_safetensors, safetensors_bytes, write_atomically, yaml_text

# UNet2DModel settings s2dm's UNet has fixed: the value each must hold (missing = diffusers' default).
FIXED = {"time_embedding_type": "positional", "flip_sin_to_cos": False, "freq_shift": 1, "act_fn": "silu",
         "norm_num_groups": 32, "center_input_sample": False, "mid_block_scale_factor": 1,
         "downsample_padding": 0, "resnet_time_scale_shift": "default", "class_embed_type": None,
         "num_class_embeds": None, "add_attention": True, "attn_norm_num_groups": None,
         "downsample_type": "conv", "upsample_type": "conv"}
DEFAULTS = {"time_embedding_type": "positional", "flip_sin_to_cos": True, "freq_shift": 0, "act_fn": "silu",
            "norm_num_groups": 32, "norm_eps": 1e-5, "center_input_sample": False, "mid_block_scale_factor": 1,
            "downsample_padding": 1, "resnet_time_scale_shift": "default", "class_embed_type": None,
            "num_class_embeds": None, "add_attention": True, "attn_norm_num_groups": None,
            "downsample_type": "conv", "upsample_type": "conv", "attention_head_dim": 8, "dropout": 0.0,
            "layers_per_block": 2, "sample_size": None}
BLOCKS = {"DownBlock2D": False, "AttnDownBlock2D": True}
UP_BLOCK = {False: "UpBlock2D", True: "AttnUpBlock2D"}
# Each part of a res block or an attention block: s2dm's name (attention under old and new names).
RESNET = {"norm1": "norm1", "conv1": "conv1", "time_emb_proj": "temb_proj", "norm2": "norm2", "conv2": "conv2",
          "conv_shortcut": "nin_shortcut"}
ATTENTION = {"group_norm": "norm", "to_q": "q", "query": "q", "to_k": "k", "key": "k", "to_v": "v", "value": "v",
             "to_out.0": "proj_out", "proj_attn": "proj_out"}


def setting(config, key):
    return config.get(key, DEFAULTS.get(key))


def model_config(unet, where):
    """s2dm's data and model sections for a UNet2DModel config.json."""
    if unet.get("_class_name", "UNet2DModel") != "UNet2DModel":
        raise ConversionError(f"{where}: _class_name = {unet['_class_name']!r}: s2dm converts UNet2DModel only")
    for key, value in FIXED.items():
        if setting(unet, key) != value:
            raise ConversionError(f"{where}: {key} = {json.dumps(setting(unet, key))}: s2dm's UNet (DDPM's) has "
                                  f"{json.dumps(value)}")
    if abs(setting(unet, "norm_eps") - 1e-6) > 1e-12:
        raise ConversionError(f"{where}: norm_eps = {setting(unet, 'norm_eps')}: s2dm's UNet (DDPM's) has 1e-06")
    channels = unet.get("in_channels", 3)
    if unet.get("out_channels", 3) != channels:
        raise ConversionError(f"{where}: out_channels = {unet.get('out_channels')}: s2dm's UNet predicts ε, with "
                              f"in_channels ({channels}) channels")
    widths, down = list(unet["block_out_channels"]), list(unet["down_block_types"])
    for i, block in enumerate(down):
        if block not in BLOCKS:
            raise ConversionError(f"{where}: down_block_types[{i}] = {block!r}: s2dm's UNet has DownBlock2D and "
                                  f"AttnDownBlock2D")
    expected_up = [UP_BLOCK[BLOCKS[b]] for b in reversed(down)]
    if list(unet["up_block_types"]) != expected_up:
        raise ConversionError(f"{where}: up_block_types = {unet['up_block_types']}: s2dm's UNet mirrors the encoder "
                              f"({expected_up})")
    ch = widths[0]
    if any(w % ch for w in widths):
        raise ConversionError(f"{where}: block_out_channels = {widths}: s2dm's widths are multiples of the first")
    head_dim = setting(unet, "attention_head_dim")
    attention_widths = [w for w, b in zip(widths, down) if BLOCKS[b]] + [widths[-1]]  # (and the middle block's)
    if head_dim is not None and any(head_dim != w for w in attention_widths):
        raise ConversionError(f"{where}: attention_head_dim = {head_dim}: s2dm's attention has one head as wide as "
                              f"its block ({attention_widths}); DDPM's ports have null")
    size = setting(unet, "sample_size")
    if not isinstance(size, int):
        raise ConversionError(f"{where}: sample_size = {json.dumps(size)}: s2dm needs the (square) image size")
    model = {"type": "ddpm", "ch": ch, "ch_mult": [w // ch for w in widths],
             "num_res_blocks": setting(unet, "layers_per_block"),
             "attn_resolutions": [size >> i for i, b in enumerate(down) if BLOCKS[b]],
             "dropout": setting(unet, "dropout"), "resamp_with_conv": True}
    return {"data": {"image_size": size, "channels": channels}, "model": model}


def schedule_config(scheduler, where):
    """s2dm's diffusion section (and sample.clip_denoised) for a scheduler_config.json."""
    if scheduler.get("prediction_type", "epsilon") != "epsilon":
        raise ConversionError(f"{where}: prediction_type = {scheduler['prediction_type']!r}: s2dm's UNet predicts "
                              f"ε ('epsilon')")
    if scheduler.get("trained_betas") is not None:
        raise ConversionError(f"{where}: trained_betas: s2dm's schedules are linear and cosine")
    kind = scheduler.get("beta_schedule", "linear")
    diffusion = {"num_timesteps": scheduler.get("num_train_timesteps", 1000)}
    if kind == "linear":
        diffusion.update(beta_schedule="linear", beta_start=scheduler.get("beta_start", 0.0001),
                         beta_end=scheduler.get("beta_end", 0.02))
    elif kind == "squaredcos_cap_v2":  # iDDPM's cosine schedule, as s2dm's cosine
        diffusion["beta_schedule"] = "cosine"
    else:
        raise ConversionError(f"{where}: beta_schedule = {kind!r}: s2dm has linear and squaredcos_cap_v2 (cosine)")
    clip = bool(scheduler.get("clip_sample", False))
    if clip and scheduler.get("clip_sample_range", 1.0) != 1.0:
        raise ConversionError(f"{where}: clip_sample_range = {scheduler['clip_sample_range']}: s2dm clips x̂₀ to "
                              f"[-1, 1]")
    return {"diffusion": diffusion, "sample": {"clip_denoised": clip}}


def s2dm_name(name, levels):
    """s2dm's name of a UNet2DModel weight (ConversionError for one s2dm's UNet does not have)."""
    def part(table, rest):
        for key, value in table.items():
            if rest.startswith(key + "."):
                return value + rest[len(key):]
        raise ConversionError(f"weight {name}: not a part of s2dm's UNet")

    simple = {"conv_in.": "conv_in.", "conv_out.": "conv_out.", "conv_norm_out.": "norm_out.",
              "time_embedding.linear_1.": "temb.dense.0.", "time_embedding.linear_2.": "temb.dense.1."}
    for key, value in simple.items():
        if name.startswith(key):
            return value + name[len(key):]
    m = re.fullmatch(r"(down|up)_blocks\.(\d+)\.(resnets|attentions|downsamplers|upsamplers)\.(\d+)\.(.+)", name)
    if m:
        side, block, kind, index, rest = m.groups()
        level = int(block) if side == "down" else levels - 1 - int(block)  # (diffusers' up blocks run deepest first)
        prefix = f"{side}.{level}."
        if kind == "resnets":
            return prefix + f"block.{index}." + part(RESNET, rest)
        if kind == "attentions":
            return prefix + f"attn.{index}." + part(ATTENTION, rest)
        if index == "0" and rest.startswith("conv."):
            return prefix + ("downsample." if side == "down" else "upsample.") + rest
    m = re.fullmatch(r"mid_block\.(resnets|attentions)\.(\d)\.(.+)", name)
    if m:
        kind, index, rest = m.groups()
        if kind == "resnets" and index in "01":
            return f"mid.block_{int(index) + 1}." + part(RESNET, rest)
        if kind == "attentions" and index == "0":
            return "mid.attn_1." + part(ATTENTION, rest)
    raise ConversionError(f"weight {name}: not a part of s2dm's UNet")


def convert_weights(state, levels):
    out = {}
    for name, tensor in state.items():
        target = s2dm_name(name, levels)
        if ".attn" in target and tensor.dim() == 2:  # (diffusers' linear q, k, v, out: s2dm's 1x1 convolutions)
            tensor = tensor.reshape(*tensor.shape, 1, 1)
        if target in out:
            raise ConversionError(f"weight {name}: a second weight for s2dm's {target}")
        out[target] = tensor
    return out


def find(paths, what):
    for path in paths:
        if os.path.isfile(path):
            return path
    fail(f"no {what}: looked for {', '.join(paths)}")


def read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        fail(f"{path}: cannot read ({e})")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir", help="a diffusers UNet2DModel folder, or a pipeline folder with unet/")
    parser.add_argument("out", help="output prefix: OUT.safetensors and OUT.yaml")
    args = parser.parse_args()
    try:
        import torch
    except ImportError:
        fail("convert_diffusers_unet.py needs PyTorch (Debian: apt-get install python3-torch)")
    root = args.model_dir
    if not os.path.isdir(root):
        fail(f"{root}: not a folder (a diffusers model folder holds config.json and its weights)")
    unet_dir = os.path.join(root, "unet") if os.path.isfile(os.path.join(root, "unet", "config.json")) else root
    config_path = find([os.path.join(unet_dir, "config.json")], "UNet config")
    scheduler_path = find([os.path.join(root, "scheduler_config.json"),
                           os.path.join(root, "scheduler", "scheduler_config.json"),
                           os.path.join(unet_dir, "..", "scheduler", "scheduler_config.json")], "scheduler config")
    weights_path = find([os.path.join(unet_dir, "diffusion_pytorch_model.safetensors"),
                         os.path.join(unet_dir, "diffusion_pytorch_model.bin")], "weights")
    unet, scheduler = read_json(config_path), read_json(scheduler_path)
    try:
        config = model_config(unet, config_path)
        config.update(schedule_config(scheduler, scheduler_path))
    except KeyError as e:
        fail(f"{config_path}: no {e} key (a UNet2DModel config names its blocks and widths)")
    except ConversionError as e:
        fail(str(e))
    try:
        if weights_path.endswith(".safetensors"):
            state = read_safetensors(weights_path)
        else:
            state = torch.load(weights_path, map_location="cpu")
        weights = convert_weights(state, len(unet["block_out_channels"]))
    except ConversionError as e:
        fail(str(e))
    except (OSError, RuntimeError, ValueError, KeyError, EOFError, pickle.UnpicklingError) as e:
        fail(f"{weights_path}: cannot read ({e or type(e).__name__})")
    origin = os.path.basename(os.path.normpath(root))
    write_atomically(args.out + ".safetensors", safetensors_bytes(weights, {"format": "pt", "converted_from": origin}))
    write_atomically(args.out + ".yaml", yaml_text(config, origin, "convert_diffusers_unet.py").encode())
    model = config["model"]
    print(f"wrote {args.out}.safetensors ({len(weights)} tensors) and {args.out}.yaml (DDPM UNet, ch {model['ch']}, "
          f"ch_mult {model['ch_mult']}, {config['diffusion']['beta_schedule']} schedule)")


if __name__ == "__main__":
    sys.exit(main())
