#!/usr/bin/env bash
# Build a bundle of the Python packages that the GPU machine's image lacks
# (ray with its train/tune/data needs, mlflow-skinny, decord, torchcodec and
# the FFmpeg shared libraries it loads), small enough to travel with a device
# run (the whole working tree may be 64 MiB at most).
# (The project's copy of ../shared/tools/gpu-bundle.sh, extended for issue 25.)
#
# FFmpeg: torchcodec loads libavcodec & co. (FFmpeg 4-9) by their sonames.
# Debian 12's ffmpeg packages with every library they pull in are 242 MB
# (208 libraries, measured with ldd on this machine), four times the whole
# carry limit, and PyAV's wheel (FFmpeg 8) is 36 MB. decord's wheel, carried
# anyway, holds FFmpeg 4.1's seven libraries (decord.libs); torchcodec's
# FFmpeg-4 build loads them once they are reachable under their plain
# sonames (install.sh links them) and decodes the same pixels as PyAV
# (checked on this machine with the system's FFmpeg hidden). So torchcodec
# travels as its FFmpeg-4 build only (the other versions' libraries and its
# C++ sources dropped). A GPU image whose ldconfig knows libavcodec uses that.
#
#   usage (from the project root):  benchmarks/gpu-bundle.sh [DIR]   (default DIR=.gpu)
#   then:  echo "/.gpu/" >> .git/info/exclude
#   and in the device run: carry [".gpu"], command starting with
#          source .gpu/install.sh && python ...
#
# The GPU image runs Python 3.12 with torch, torchvision, timm, numpy, pandas,
# pyarrow, pyyaml, requests, protobuf, msgpack, grpcio, click already installed.
set -euo pipefail
DIR=${1:-.gpu}
RAY=${RAY_VERSION:-2.60.0}
mkdir -p "$DIR/wheels"
PLAT=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
      --platform manylinux2014_x86_64 --platform manylinux2010_x86_64 --platform manylinux1_x86_64 --platform any)
dl() { python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
       "${PLAT[@]}" -d "$DIR/wheels" "$@" 2>&1 | grep -v "is ignored" || true; }
# Ray itself: unpacked, stripped of the Java jars and RLlib, re-packed with xz.
if [ ! -f "$DIR/ray.tar.xz" ]; then
  tmp=$(mktemp -d)
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux2014_x86_64 -d "$tmp" "ray==$RAY" 2>&1 | grep -v "is ignored" || true
  (cd "$tmp" && unzip -q ray-*.whl && rm ray-*.whl && rm -rf ray/jars ray/rllib && tar cf - . | xz -T0 -6 > ray.tar.xz)
  mv "$tmp/ray.tar.xz" "$DIR/ray.tar.xz"; rm -rf "$tmp"
fi
# What ray[train,tune,data] needs beyond the image.
dl jsonschema jsonschema-specifications referencing rpds-py attrs tensorboardX \
   pydantic pydantic-core annotated-types typing-inspection typing-extensions
# Video decoding and tracking client: decord, torchcodec (torch's stable ABI, torch >= 2.11).
dl decord
if [ ! -f "$DIR/torchcodec.tar.xz" ]; then
  tmp=$(mktemp -d)
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      "${PLAT[@]}" -d "$tmp" "torchcodec==${TORCHCODEC_VERSION:-0.17.0}" 2>&1 | grep -v "is ignored" || true
  (cd "$tmp" && unzip -q torchcodec-*.whl && rm torchcodec-*.whl &&
   rm -f torchcodec/libtorchcodec_core[5-9].so torchcodec/libtorchcodec_custom_ops[5-9].so &&
   rm -rf torchcodec/_core/*.cpp torchcodec/_core/*.h torchcodec/_core/*.cu torchcodec/_core/nvcuvid_include &&
   tar cf - . | xz -T0 -6 > torchcodec.tar.xz)
  mv "$tmp/torchcodec.tar.xz" "$DIR/torchcodec.tar.xz"; rm -rf "$tmp"
fi
dl mlflow-skinny mlflow-tracing cachetools databricks-sdk google-auth opentelemetry-api opentelemetry-sdk \
   opentelemetry-proto opentelemetry-semantic-conventions sqlparse gitpython gitdb smmap python-dotenv \
   "importlib-metadata<9" cloudpickle uvicorn fastapi starlette sse-starlette pyasn1 pyasn1-modules rsa
cat > "$DIR/install.sh" <<'INNER'
# source me on the GPU machine: installs the bundle into /tmp/site and puts it on PYTHONPATH
_here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
if [ ! -d /tmp/site/ray ]; then
  mkdir -p /tmp/site && tar xJf "$_here/ray.tar.xz" -C /tmp/site && tar xJf "$_here/torchcodec.tar.xz" -C /tmp/site &&
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site "$_here"/wheels/*.whl
fi
export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH} PATH=/tmp/site/bin:$PATH
# torchcodec's FFmpeg: the image's own if ldconfig knows libavcodec, else decord's 4.1, under the plain sonames
if ! ldconfig -p 2>/dev/null | grep -q 'libavcodec\.so\.'; then
  mkdir -p /tmp/site/ffmpeg
  for _lib in /tmp/site/decord.libs/lib{avutil,avcodec,avformat,avdevice,avfilter,swscale,swresample}-*.so.*; do
    _name=$(basename "$_lib" | sed -E 's/-[0-9a-f]{8}(\.so\.[0-9]+).*/\1/')
    ln -sf "$_lib" "/tmp/site/ffmpeg/$_name"
  done
  export LD_LIBRARY_PATH=/tmp/site/ffmpeg:/tmp/site/decord.libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
fi
INNER
du -sh "$DIR"
