#!/usr/bin/env bash
# curl against the wrapper: the seed's /chat, OpenAI's /v1/chat/completions, and a stream.
#
#     vllm-autoscale serve --local -- bash examples/curl.sh
set -euo pipefail
URL="${VLLM_AUTOSCALE_URL:-http://127.0.0.1:8000}"
AUTH=()
if [ -n "${VLLM_AUTOSCALE_API_KEY:-}" ]; then AUTH=(-H "Authorization: Bearer $VLLM_AUTOSCALE_API_KEY"); fi

echo "# GET /health (never wakes the GPU)"
curl -sS "$URL/health"; echo

echo "# POST /chat (the seed's API)"
curl -sS "${AUTH[@]}" -H 'Content-Type: application/json' "$URL/chat" \
  -d '{"messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 16}'; echo

echo "# POST /v1/chat/completions (OpenAI-compatible)"
curl -sS "${AUTH[@]}" -H 'Content-Type: application/json' "$URL/v1/chat/completions" \
  -d '{"messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 16}'; echo

echo "# streamed (-N: print events as they come)"
curl -sSN "${AUTH[@]}" -H 'Content-Type: application/json' "$URL/v1/chat/completions" \
  -d '{"messages": [{"role": "user", "content": "Count to three."}], "max_tokens": 12, "stream": true}'
