#!/usr/bin/env bash
# Node.js and the packages of tests/node (the client that tests/test_server_node_client.py runs):
# Debian's nodejs and npm when node is missing (one apt-get run, needs root), then `npm ci` from
# the lock file.
set -euo pipefail
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  echo "installing: nodejs npm" >&2
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends nodejs npm
fi
cd "$(dirname "$0")/../tests/node"
npm ci --no-audit --no-fund --loglevel=error
