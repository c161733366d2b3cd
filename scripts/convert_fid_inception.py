#!/usr/bin/env python3
"""Convert pytorch-fid's Inception weights (pt_inception-2015-12-05-6726825d.pth) into the
safetensors file `s2dm fid --features inception:FILE` loads (torchvision's parameter names).

The file comes from
  https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth
(the hash prefix 6726825d in its name is the first 8 hex digits of its SHA-256). With internet the
script downloads it; without, pass the path of a copy. Needs only PyTorch.

Usage: convert_fid_inception.py [pt_inception-2015-12-05-6726825d.pth] [--out FILE]
Default output: data/inception/pt_inception-2015-12-05-6726825d.safetensors (where s2dm looks).
"""
import argparse
import hashlib
import os
import sys
import urllib.request

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from convert_ddim_checkpoint import save_safetensors  # noqa: E402

URL = "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth"
SHA256_PREFIX = "6726825d"


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("weights", nargs="?", help="pytorch-fid's .pth (downloaded when omitted)")
    p.add_argument("--out", default="data/inception/pt_inception-2015-12-05-6726825d.safetensors")
    a = p.parse_args()
    path = a.weights
    if path is None:
        path = os.path.join(os.path.dirname(a.out) or ".", os.path.basename(URL))
        if not os.path.exists(path):
            os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
            print("downloading", URL)
            urllib.request.urlretrieve(URL, path)
    digest = hashlib.sha256(open(path, "rb").read()).hexdigest()
    if not digest.startswith(SHA256_PREFIX):
        sys.exit("error: %s has SHA-256 %s, expected one starting with %s" % (path, digest, SHA256_PREFIX))
    sd = torch.load(path, map_location="cpu")
    tensors = {k: v.float() if v.is_floating_point() else v for k, v in sd.items()
               if torch.is_tensor(v) and not k.endswith("num_batches_tracked") and not k.startswith("AuxLogits")}
    if "Mixed_7c.branch_pool.conv.weight" not in tensors:
        sys.exit("error: %s is not pytorch-fid's Inception state_dict" % path)
    os.makedirs(os.path.dirname(a.out) or ".", exist_ok=True)
    save_safetensors(tensors, a.out, {"format": "pt", "source": os.path.basename(path)})
    print("wrote %s (%d tensors)" % (a.out, len(tensors)))


if __name__ == "__main__":
    main()
