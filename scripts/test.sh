#!/usr/bin/env bash
# Opta-LMX tests: formatting, lints, the whole build, then every test (unit tests and the
# integration tests in tests/, which drive the real binaries on the real test models).
#
#   scripts/test.sh            (after scripts/setup.sh)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

[ -d .deps/models/opta ] || { echo "test: run scripts/setup.sh first" >&2; exit 1; }

echo "== cargo fmt --check"
cargo fmt --all --check
echo "== cargo clippy -D warnings"
cargo clippy --workspace --all-targets -q -- -D warnings
echo "== cargo build"
# The integration tests run the built binaries, so build them before testing.
cargo build --workspace --all-targets -q
echo "== cargo test"
cargo test --workspace
echo "== OpenAI Python SDK against the daemon"
.deps/venv/bin/python -m pytest -q tests/python
