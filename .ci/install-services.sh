#!/usr/bin/env bash
# Install the storage emulators the test suite starts (idempotent).
#   Azurite (Azure Blob emulator) from npm, into the project-local var/node (gitignored).
# moto[server] and gcp-storage-emulator are Python packages from the [test] extra.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
NODE_DIR="$REPO/var/node"
if [ -x "$NODE_DIR/node_modules/.bin/azurite-blob" ]; then
    echo "azurite already installed: $NODE_DIR/node_modules/.bin/azurite-blob"
    exit 0
fi
command -v npm >/dev/null || { echo "npm not found: install Node.js >= 18 (with npm) first" >&2; exit 1; }
mkdir -p "$NODE_DIR"
npm install --prefix "$NODE_DIR" --no-audit --no-fund azurite@3
echo "azurite installed: $NODE_DIR/node_modules/.bin/azurite-blob"
