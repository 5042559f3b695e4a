#!/usr/bin/env bash
# From scratch: build llama.cpp's llama-server from the llama.cpp source that ships
# inside the llama-cpp-python sdist on PyPI, and generate a tiny random-weight GGUF.
# Needs: apt (Debian bookworm), PyPI.  Everything goes under $LLMSRV_DIR (default $HOME/.cache/llmsrv).
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
D="${LLMSRV_DIR:-$HOME/.cache/llmsrv}"
VER="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"     # pin: the vendored llama.cpp differs per release
JOBS="${JOBS:-$(nproc)}"
mkdir -p "$D"
cd "$D"

command -v cmake >/dev/null && command -v ninja >/dev/null || {
  apt-get update -qq && apt-get install -y -qq cmake ninja-build g++ >/dev/null; }

# python env for the GGUF writer (gguf-py + numpy) and for fetching the sdist
[ -x venv-gguf/bin/python ] || python3 -m venv venv-gguf
venv-gguf/bin/pip install -q "gguf==${GGUF_VERSION:-0.19.0}"   # pinned: the writer API it uses

# llama.cpp source = vendor/llama.cpp inside the llama-cpp-python sdist (~77 MB)
if [ ! -d "src/llama.cpp" ]; then
  venv-gguf/bin/pip download -q --no-deps --no-binary :all: -d sdist "llama-cpp-python==$VER"
  mkdir -p src && tar xzf "sdist/llama_cpp_python-$VER.tar.gz" -C src
  mv "src/llama_cpp_python-$VER/vendor/llama.cpp" src/llama.cpp
  rm -rf "src/llama_cpp_python-$VER"
fi

# build only the llama-server target, statically linked, no web UI download, no TLS
if [ ! -x build/bin/llama-server ]; then
  cmake -S src/llama.cpp -B build -G Ninja -DCMAKE_BUILD_TYPE=Release \
    -DBUILD_SHARED_LIBS=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_BUILD_UI=OFF \
    -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF >cmake-config.log
  cmake --build build --target llama-server -j "$JOBS" >cmake-build.log
fi

# tiny models: 32000-token llama SPM vocab copied from the vocab-only GGUF in the same
# source tree, and a self-contained 263-token byte-level BPE vocab
venv-gguf/bin/python "$HERE/make_tiny_gguf.py" --out tiny-spm.gguf \
  --vocab-gguf src/llama.cpp/models/ggml-vocab-llama-spm.gguf
venv-gguf/bin/python "$HERE/make_tiny_gguf.py" --out tiny-byte.gguf
echo "llama-server: $D/build/bin/llama-server   models: $D/tiny-spm.gguf $D/tiny-byte.gguf"
