#!/usr/bin/env bash
# One install step for a fresh machine: a virtualenv in .venv with the whole stack on CPU torch 2.13.0,
# lerobot 0.4.4 without its torch pins, redis-server and (with --browser) Chromium for the dashboard tests.
# Caches (pip, torch extensions, Hugging Face) live under ~/.cache, outside the work tree.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
VENV=${VENV:-.venv}
BROWSER=0
for a in "$@"; do [ "$a" = "--browser" ] && BROWSER=1; done

need_apt=()
command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)
if [ "$BROWSER" = 1 ]; then
  command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
fi
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
  # Debian starts a system redis on 6379; we always run our own on a free port.
  $SUDO systemctl disable --now redis-server >/dev/null 2>&1 || $SUDO service redis-server stop >/dev/null 2>&1 || true
fi

[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP="$VENV/bin/python -m pip"
$PIP install -q --upgrade "pip<26" wheel
$PIP install -q torch==2.13.0
$PIP install -q -c constraints.txt -e ".[dev]"
# lerobot 0.4.4 caps torch<2.11: install it without deps, then its runtime deps minus torch/torchvision/torchcodec.
$PIP install -q -c constraints.txt -r requirements-lerobot.txt
$PIP install -q --no-deps lerobot==0.4.4
# torchvision 0.28 (lerobot's image transforms) is a CUDA build: in the venv it would break every transformers
# import, so it lives in a private directory that only learner/lerobot_compat.py puts on sys.path.
$PIP uninstall -q -y torchvision 2>/dev/null || true
TV_DIR=${MOLMOFLEET_TORCHVISION_DIR:-$HOME/.cache/molmofleet/torchvision-0.28}
[ -d "$TV_DIR/torchvision" ] || $PIP install -q --no-deps --target "$TV_DIR" torchvision==0.28.0
echo "installed into $VENV"
