#!/usr/bin/env python3
"""Converts an EDM network pickle (NVlabs/edm) into s2dm's weights and config.

  python3 scripts/convert_edm_checkpoint.py NETWORK.pkl OUT [--edm-repo DIR] [--raw]

NETWORK.pkl is one of EDM's snapshots (network-snapshot-*.pkl, or the published
edm-cifar10-32x32-uncond-vp.pkl and the like): a dict whose 'ema' entry is the network. EDM's
pickles refer to its modules (torch_utils, dnnlib, training), so EDM's code must be importable:
--edm-repo puts a checkout of NVlabs/edm on the path. Writes

  OUT.safetensors  the network's weights (F inside the preconditioning) under EDM's own names
  OUT.yaml         an s2dm config: model.type songunet | dhariwalunet, its settings, the
                   preconditioning (model.edm.precond), the image resolution and channels

so that `s2dm sample --weights OUT.safetensors --config OUT.yaml --sampler heun --steps 18
--timesteps edm` samples as EDM's generate.py does. A setting s2dm cannot represent (a
preconditioning's non-default noise range, an unknown network argument) is refused with a message
naming it; nothing is written then. Needs Python 3 with PyTorch (Debian: python3-torch).
"""
import argparse
import inspect
import os
import pickle
import sys

from convert_common import ConversionError, fail, safetensors_bytes, write_atomically, yaml_text

PRECONDS = {"VPPrecond": "vp", "VEPrecond": "ve", "iDDPMPrecond": "iddpm", "EDMPrecond": "edm"}
NETWORKS = {"SongUNet": "songunet", "DhariwalUNet": "dhariwalunet"}
# Each preconditioning's settings s2dm takes as EDM's defaults (s2dm computes them the same way).
FIXED_PRECOND = {
    "vp": {"beta_d": 19.9, "beta_min": 0.1, "M": 1000, "epsilon_t": 1e-5},
    "ve": {"sigma_min": 0.02, "sigma_max": 100},
    "iddpm": {"C_1": 0.001, "C_2": 0.008, "M": 1000},
    "edm": {"sigma_min": 0, "sigma_max": float("inf")},
}
# The network's arguments: s2dm's key for each (None: used only in training, not needed to sample).
SHARED = {"model_channels": "ch", "channel_mult": "ch_mult", "num_blocks": "num_res_blocks",
          "attn_resolutions": "attn_resolutions", "dropout": "dropout"}
EDM_KEYS = {"label_dim": "label_dim", "augment_dim": "augment_dim", "channel_mult_emb": "channel_mult_emb",
            "embedding_type": "embedding_type", "channel_mult_noise": "channel_mult_noise",
            "encoder_type": "encoder_type", "decoder_type": "decoder_type", "resample_filter": "resample_filter"}
IGNORED = {"img_resolution", "in_channels", "out_channels", "label_dropout"}


def network_settings(net):
    """The network's arguments, its defaults filled in (from the class EDM defines: a pickled
    network's class is EDM's persistence wrapper around it, whose __init__ takes *args, **kwargs)."""
    values = {}
    for cls in type(net).__mro__:
        parameters = inspect.signature(cls.__init__).parameters.values()
        defaults = {p.name: p.default for p in parameters if p.default is not inspect.Parameter.empty}
        if defaults:
            values = defaults
            break
    values.update(getattr(net, "init_kwargs", {}))
    return values


def s2dm_config(precond, where):
    kind = PRECONDS.get(type(precond).__name__)
    if kind is None:
        raise ConversionError(f"{where}: the network is a {type(precond).__name__}, not one of EDM's "
                              f"preconditionings ({', '.join(PRECONDS)})")
    for key, default in FIXED_PRECOND[kind].items():
        value = getattr(precond, key)
        if float(value) != float(default):
            raise ConversionError(f"{where}: {type(precond).__name__}.{key} = {value}; s2dm supports EDM's default "
                                  f"{default} only")
    if getattr(precond, "use_fp16", False):
        print(f"{where}: use_fp16 is set; s2dm runs the network in float32", file=sys.stderr)
    inner = precond.model
    network = NETWORKS.get(type(inner).__name__)
    if network is None:
        raise ConversionError(f"{where}: the network inside is a {type(inner).__name__}, not one of {', '.join(NETWORKS)}")
    settings = network_settings(inner)
    model = {"type": network}
    edm = {"precond": kind}
    if kind == "edm":
        edm["sigma_data"] = float(precond.sigma_data)
    for key, value in settings.items():
        if key in SHARED:
            model[SHARED[key]] = list(value) if isinstance(value, (list, tuple)) else value
        elif key in EDM_KEYS:
            edm[EDM_KEYS[key]] = list(value) if isinstance(value, (list, tuple)) else value
        elif key not in IGNORED:
            raise ConversionError(f"{where}: {type(inner).__name__} argument '{key}' = {value!r} has no s2dm setting")
    if network == "dhariwalunet":
        for key in ("embedding_type", "channel_mult_noise", "encoder_type", "decoder_type", "resample_filter"):
            edm.pop(key, None)
    model["edm"] = edm
    data = {"image_size": int(precond.img_resolution), "channels": int(precond.img_channels)}
    return {"data": data, "model": model}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("network", help="EDM's network pickle")
    parser.add_argument("out", help="output prefix: OUT.safetensors and OUT.yaml")
    parser.add_argument("--edm-repo", help="a checkout of NVlabs/edm (its modules unpickle the network)")
    parser.add_argument("--entry", default="ema", help="the pickle's entry holding the network (default: ema)")
    args = parser.parse_args()
    if args.edm_repo:
        sys.path.insert(0, os.path.abspath(args.edm_repo))
    try:
        import torch  # noqa: F401  (the pickle holds torch modules)
    except ImportError:
        fail("convert_edm_checkpoint.py needs PyTorch (Debian: apt-get install python3-torch)")
    try:
        with open(args.network, "rb") as f:
            snapshot = pickle.load(f)
    except (ModuleNotFoundError, ImportError) as e:
        fail(f"{args.network}: cannot unpickle ({e}); EDM's code must be importable: --edm-repo DIR")
    except (OSError, pickle.UnpicklingError, EOFError) as e:
        fail(f"{args.network}: cannot read ({e})")
    net = snapshot.get(args.entry) if isinstance(snapshot, dict) else snapshot
    if net is None:
        fail(f"{args.network}: no '{args.entry}' entry (it holds {', '.join(map(str, snapshot))})")
    try:
        config = s2dm_config(net, args.network)
    except ConversionError as e:
        fail(str(e))
    content = safetensors_bytes(net.model.state_dict(), {"format": "pt", "converted_from": os.path.basename(args.network)})
    write_atomically(args.out + ".safetensors", content)
    write_atomically(args.out + ".yaml", yaml_text(config, os.path.basename(args.network), "convert_edm_checkpoint.py").encode())
    print(f"wrote {args.out}.safetensors ({len(net.model.state_dict())} tensors) and {args.out}.yaml "
          f"({config['model']['type']}, {config['model']['edm']['precond']} preconditioning)")


if __name__ == "__main__":
    main()
