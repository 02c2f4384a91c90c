#!/usr/bin/env bash
# The browser check of the built site (site/, from `mkdocs build --strict`): serve it on
# 127.0.0.1, open the index and two reference pages in headless Chromium (Debian's
# `chromium` package), and write a screenshot (NAME.png) and the rendered DOM (NAME.html)
# of each into OUT. tests/test_docs_site.py (pytest -m site) reads them.
#   bash tools/site_check.sh [OUT]          (default OUT: site_check)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-site_check}
chromium=${CHROMIUM:-chromium}
[ -f site/index.html ] || { echo "site_check: no site/index.html: run mkdocs build --strict first" >&2; exit 1; }
command -v "$chromium" >/dev/null || { echo "site_check: $chromium not found (apt-get install -y chromium)" >&2; exit 1; }
mkdir -p "$out"
port=$(python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
python -m http.server "$port" --bind 127.0.0.1 --directory site >"$out/http.log" 2>&1 &
server=$!
profile=$(mktemp -d)
trap 'kill "$server" 2>/dev/null || true; rm -rf "$profile"' EXIT
python - "$port" <<'PY'
import sys, time, urllib.request
for _ in range(100):
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/", timeout=1).close()
        break
    except OSError:
        time.sleep(0.1)
else:
    sys.exit("site_check: the local server did not answer")
PY
flags=(--headless --no-sandbox --disable-gpu --hide-scrollbars --no-first-run
       --user-data-dir="$profile" --window-size=1280,1800 --virtual-time-budget=5000)
for page in index: reference_transforms:reference/transforms/ reference_higher:reference/higher/; do
  name=${page%%:*}; path=${page#*:}
  url="http://127.0.0.1:$port/$path"
  timeout 120 "$chromium" "${flags[@]}" --screenshot="$out/$name.png" "$url" 2>>"$out/chromium.log"
  timeout 120 "$chromium" "${flags[@]}" --dump-dom "$url" >"$out/$name.html" 2>>"$out/chromium.log"
  echo "site_check: $url -> $out/$name.png, $out/$name.html"
done
