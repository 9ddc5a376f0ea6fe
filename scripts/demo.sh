#!/usr/bin/env bash
# Set up (if needed), build the demo index on the Wikipedia summaries (10,033 real articles) if
# it is missing, and start the provenance explorer on http://127.0.0.1:8501.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
INDEX=${GIF_INDEX:-indexes/wiki}
if [ ! -f "$INDEX/manifest.json" ]; then
  echo "demo: building $INDEX from pkg:wiki (about 5-10 minutes on 2 CPU cores)"
  .venv/bin/gif build pkg:wiki --out "$INDEX"
fi
exec .venv/bin/streamlit run app.py --server.address 127.0.0.1 --server.port "${PORT:-8501}" \
  --server.headless true --browser.gatherUsageStats false -- --index "$INDEX"
