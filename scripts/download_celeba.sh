#!/usr/bin/env bash
# Downloads CelebA's aligned images (img_align_celeba.zip, 1.4 GB) into data/celeba/ and verifies
# its checksum. The official copy is on Google Drive (id below); when the download is refused,
# fetch img_align_celeba.zip by hand from the CelebA page and put it in data/celeba/.
set -euo pipefail
cd "$(dirname "$0")/.."
id=0B7EVK8r0v71pZjFTYXZWM3FlRnM
md5=00d2c5bc6d35e252742224ab0c1e8fcb
mkdir -p data/celeba
zip=data/celeba/img_align_celeba.zip
if [ ! -f "$zip" ]; then
  curl -fL --retry 3 -o "$zip.part" "https://drive.usercontent.google.com/download?id=$id&export=download&confirm=t"
  mv "$zip.part" "$zip"
fi
echo "$md5  $zip" | md5sum -c -
unzip -q -o "$zip" -d data/celeba
echo "CelebA ready in data/celeba/img_align_celeba ($(ls data/celeba/img_align_celeba | wc -l) images)"
