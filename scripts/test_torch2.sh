#!/usr/bin/env bash
# s2dm against LibTorch 2.x, in Debian chroots beside the host's LibTorch (Debian 12's 1.13):
#   --cpu   Debian 13 (trixie), libtorch-dev 2.6: build s2dm, run the whole test suite
#   --cuda  Debian 13 (trixie), libtorch-cuda-dev 2.6 (CUDA 12.4, NCCL, cuDNN) and nothing else of
#           s2dm's: compile and link s2dm, its tests and the bench with CUDA exactly as
#           scripts/gpu_check.sh does on a GPU machine, every other dependency from the bundle of
#           scripts/gpu_bundle.sh (no GPU needed; nothing runs on one). So the bundle is proved
#           complete before a GPU machine ever sees it.
#   --sid   Debian sid, libtorch-dev 2.14 (C++20), precompiled header off: build, run the suite
#   --prepare  only create or refresh the chroots of the legs named, build nothing
# No leg named = --cpu --cuda (what CI runs). Needs root (debootstrap, chroot, mounts).
#
# Chroots live in $S2DM_CHROOT (default /var/tmp/s2dm-chroots), one per leg, and are reused
# until S2DM_CHROOT_MAX_AGE days old (default 7). The source is synced into each by content:
# unchanged files keep their times, so a rerun (even from a fresh clone) rebuilds only what
# changed. Every mount is made in a private mount namespace, so none outlives this script.
set -euo pipefail
cd "$(dirname "$0")/.."
root=${S2DM_CHROOT:-/var/tmp/s2dm-chroots}
max_age=${S2DM_CHROOT_MAX_AGE:-7}
jobs=${S2DM_JOBS:-$(nproc)}

legs=()
prepare_only=false
for arg in "$@"; do
  case "$arg" in
    --cpu | --cuda | --sid) legs+=("${arg#--}") ;;
    --prepare) prepare_only=true ;;
    *) echo "usage: scripts/test_torch2.sh [--cpu] [--cuda] [--sid] [--prepare]" >&2; exit 2 ;;
  esac
done
[ ${#legs[@]} -gt 0 ] || legs=(cpu cuda)
[ "$(id -u)" -eq 0 ] || { echo "test_torch2: needs root (debootstrap, chroot, mount)" >&2; exit 2; }

bash scripts/setup.sh --chroots

log() { echo "[torch2 $(date +%T)] $*"; }

# The Debian mirror this machine's apt uses (not hard-coded: whatever sources.list names).
mirror() {
  apt-get indextargets --format '$(REPO_URI) $(LABEL)' 2>/dev/null | awk '$2 == "Debian" { print $1; exit }'
}

# Runs a command as root inside chroot $1 with /proc and /dev mounted; the mounts live in a
# private namespace and vanish with it, however the command ends.
in_chroot() {
  local dir=$1
  shift
  unshare --mount --propagation private --fork --kill-child -- bash -c '
    set -e
    dir=$1; shift
    mount -t proc proc "$dir/proc"
    mount --rbind /dev "$dir/dev"
    exec chroot "$dir" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 \
      DEBIAN_FRONTEND=noninteractive CI="${CI:-}" bash -c "$*"' _ "$dir" "$@"
}

# An empty package that stands in for nvidia-cudnn, Debian's cuDNN *download installer* (it
# fetches cuDNN from NVIDIA at install time, impossible offline). Linking needs only the
# library's symbols: see cudnn_link_stub.
cudnn_stand_in() {
  local dir=$1 version
  version=$(in_chroot "$dir" "apt-cache show nvidia-cudnn | sed -n 's/^Version: //p' | head -1")
  mkdir -p "$dir/tmp/nvidia-cudnn/DEBIAN"
  cat > "$dir/tmp/nvidia-cudnn/DEBIAN/control" <<EOF
Package: nvidia-cudnn
Version: $version
Architecture: amd64
Maintainer: s2dm test_torch2.sh <root@localhost>
Description: empty stand-in for the cuDNN download installer (link checks only)
EOF
  in_chroot "$dir" "dpkg-deb --build /tmp/nvidia-cudnn /tmp/nvidia-cudnn.deb >/dev/null && dpkg -i /tmp/nvidia-cudnn.deb >/dev/null"
  log "installed an empty stand-in for nvidia-cudnn $version"
}

# Creates chroot $1 (suite $2, setup.sh options $3) unless a current one is there.
ensure_chroot() {
  local dir=$1 suite=$2 setup_options=$3
  if [ -f "$dir/.s2dm-ready" ] && [ -z "$(find "$dir/.s2dm-ready" -mtime +"$max_age")" ]; then
    log "reusing $dir"
  else
    local url
    url=$(mirror)
    [ -n "$url" ] || { echo "test_torch2: no Debian mirror in apt's sources" >&2; exit 1; }
    log "creating $dir ($suite from $url)"
    rm -rf "$dir" "$dir.new"
    mkdir -p "$root"
    debootstrap --variant=minbase --include=ca-certificates --components=main,contrib,non-free "$suite" "$dir.new" "$url" \
      > "$root/debootstrap-$suite.log" 2>&1 || { tail -20 "$root/debootstrap-$suite.log"; exit 1; }
    echo "deb $url $suite main contrib non-free" > "$dir.new/etc/apt/sources.list"
    # A mirror may be a snapshot, whose sid Release file is past its short Valid-Until date.
    echo 'Acquire::Check-Valid-Until "false";' > "$dir.new/etc/apt/apt.conf.d/99s2dm-snapshot"
    printf '#!/bin/sh\nexit 101\n' > "$dir.new/usr/sbin/policy-rc.d"  # start no services
    chmod +x "$dir.new/usr/sbin/policy-rc.d"
    mv "$dir.new" "$dir"
  fi
  cp /etc/resolv.conf "$dir/etc/resolv.conf"
  mkdir -p "$dir/src" "$dir/build"
  sync_source "$dir"
  if [[ " $setup_options " == *" --cuda "* ]] && ! in_chroot "$dir" "dpkg -s nvidia-cudnn >/dev/null 2>&1"; then
    in_chroot "$dir" "apt-get update -qq"
    cudnn_stand_in "$dir"
  fi
  in_chroot "$dir" "bash /src/scripts/setup.sh $setup_options"
  touch -r "$dir/etc/apt/sources.list" "$dir/.s2dm-ready" 2>/dev/null || touch "$dir/.s2dm-ready"
}

# A link stub of libcudnn.so.9 in the chroot's /usr/local/lib: every cuDNN symbol that
# libtorch_cuda needs, versioned as the real library exports it, each an empty function (as
# CUDA's own stubs/libcuda.so is for the driver). Enough to link and to load on a machine
# without a GPU; cuDNN is never called there.
cudnn_link_stub() {
  local dir=$1
  in_chroot "$dir" 'set -e
    [ -f /usr/local/lib/libcudnn.so.9 ] && exit 0
    lib=$(ls /usr/lib/x86_64-linux-gnu/libtorch_cuda.so.* | head -1)
    symbols=$(nm -D --undefined-only "$lib" | awk "{print \$2}" | sed -n "s/@libcudnn\.so\.9\$//p")
    cd /tmp
    { echo "libcudnn.so.9 {"; echo " global:"; for s in $symbols; do echo "  $s;"; done; echo " local: *;"; echo "};"; } > cudnn.map
    for s in $symbols; do echo "void $s(void) {}"; done > cudnn_stub.c
    gcc -shared -fPIC -o /usr/local/lib/libcudnn.so.9 -Wl,-soname,libcudnn.so.9 -Wl,--version-script=cudnn.map cudnn_stub.c
    ldconfig
    echo "libcudnn.so.9 link stub: $(echo $symbols | wc -w) symbols"'
}

# The source tree as git sees it (tracked and unignored files) into $1/src, by content: files
# whose bytes are unchanged keep their times there; files gone from the tree go from the copy.
sync_source() {
  local dest=$1/src files
  files=$(mktemp)
  git ls-files --cached --others --exclude-standard > "$files"
  rsync -r --checksum --ignore-missing-args --files-from="$files" ./ "$dest/"
  (cd "$dest" && find . -type f -printf '%P\n' | sort | comm -23 - <(sort "$files") | xargs -r -d '\n' rm -f)
  rm -f "$files"
}

# Configures and builds in chroot $1 with extra CMake arguments $2; then runs command $3.
build_and() {
  local dir=$1 cmake_args=$2 then=$3
  in_chroot "$dir" "set -e
    cmake -S /src -B /build -G Ninja -DCMAKE_BUILD_TYPE=Release -DS2DM_BUILD_TESTS=ON -DS2DM_BUILD_BENCH=ON \
      -DCMAKE_COMPILE_WARNING_AS_ERROR=ON $cmake_args > /build/configure.log || { cat /build/configure.log; exit 1; }
    grep '^-- s2dm:' /build/configure.log
    cmake --build /build -j $jobs
    $then"
}

status=0
for leg in "${legs[@]}"; do
  start=$SECONDS
  leg_status=0
  case "$leg" in
    cpu)
      dir=$root/trixie-cpu
      ensure_chroot "$dir" trixie ""
      $prepare_only && continue
      log "LibTorch $(in_chroot "$dir" "dpkg-query -W -f='\${Version}' libtorch-dev") (CPU): build and test"
      build_and "$dir" "" "cd /build && ctest --output-on-failure -j $jobs" || leg_status=1
      ;;
    cuda)
      dir=$root/trixie-cuda
      ensure_chroot "$dir" trixie "--cuda --torch-only"
      $prepare_only && continue
      cudnn_link_stub "$dir"
      bash scripts/gpu_bundle.sh
      rsync -r --delete --checksum gpu_bundle/ "$dir/gpu_bundle/"
      # What the bundle packs must come from the bundle alone: any -dev package of its list that
      # LibTorch's packages pulled in is removed (only headers and link names; runtimes stay).
      in_chroot "$dir" 'for p in $(grep "^deb " /gpu_bundle/manifest.txt | cut -d" " -f2); do
          case $p in *-dev) ! dpkg -s "$p" >/dev/null 2>&1 || dpkg --purge --force-depends "$p" >/dev/null 2>&1 ;; esac
        done'
      log "LibTorch $(in_chroot "$dir" "dpkg-query -W -f='\${Version}' libtorch-cuda-dev") (CUDA), the GPU bundle: gpu_check.sh's build"
      # What the binary is linked against, then proof that it loads (no GPU here).
      in_chroot "$dir" "bash /src/scripts/gpu_check.sh --build-only --bundle /gpu_bundle --torch-prefix /usr \
          --build-dir /build-gpu --jobs $jobs --out /build-gpu/check -- -DCMAKE_COMPILE_WARNING_AS_ERROR=ON &&
        ldd /build-gpu/s2dm | grep -E 'libtorch_cuda|libc10_cuda|libcudart|libcublas\\.|libnccl|libcudnn|prefix' &&
        /build-gpu/s2dm info" || { cat "$dir/build-gpu/check/logs/"*.log 2>/dev/null | tail -40; leg_status=1; }
      ;;
    sid)
      dir=$root/sid-cpu
      ensure_chroot "$dir" sid ""
      $prepare_only && continue
      log "LibTorch $(in_chroot "$dir" "dpkg-query -W -f='\${Version}' libtorch-dev") (CPU, no precompiled header): build and test"
      build_and "$dir" "-DS2DM_PCH=OFF -DS2DM_CHECK_HEADERS=ON" "cd /build && ctest --output-on-failure -j $jobs" ||
        leg_status=1
      ;;
  esac
  log "$leg leg: $([ $leg_status -eq 0 ] && echo passed || echo FAILED) in $((SECONDS - start)) s"
  [ $leg_status -eq 0 ] || status=1
done
exit $status
