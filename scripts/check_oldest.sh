#!/usr/bin/env bash
# Check the oldest supported set (constraints-oldest.txt) on the oldest supported Python:
#  1. a fresh venv gets TensorFlow and Keras at their oldest supported versions, as a user's
#     environment would already have them;
#  2. `pip install -e ".[test]"` (the rest at their oldest versions too) must keep that TensorFlow
#     and that Keras: tfcompress' ranges accept them, nothing upgrades them;
#  3. a quick test subset runs there.
# Usage: scripts/check_oldest.sh [pytest arguments]   (env: PYTHON=python3.10, VENV=<dir>)
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${PYTHON:-}" ]; then
  PYTHON=python3.10
  if ! "$PYTHON" -c "" 2>/dev/null && command -v pyenv >/dev/null; then  # a pyenv-installed 3.10
    found=$(pyenv versions --bare | grep -E '^3\.10\.' | tail -1 || true)
    [ -n "$found" ] && PYTHON="$(pyenv root)/versions/$found/bin/python3.10"
  fi
fi
VENV=${VENV:-${TMPDIR:-/tmp}/tfcompress-oldest}
export TF_CPP_MIN_LOG_LEVEL=2

"$PYTHON" -m venv --clear "$VENV"
py="$VENV/bin/python"
pinned() { grep -E "^$1==" constraints-oldest.txt | cut -d= -f3; }
tf=$(pinned tensorflow)
keras=$(pinned keras)

"$py" -m pip install -q "tensorflow==$tf" "keras==$keras"
others=$(mktemp)
grep -v -E '^(tensorflow|keras)==' constraints-oldest.txt > "$others"
"$py" -m pip install -q -c "$others" -e ".[test]"
rm -f "$others"

"$py" - "$tf" "$keras" <<'PY'
import sys
from importlib.metadata import version

want = {"tensorflow": sys.argv[1], "keras": sys.argv[2]}
have = {name: version(name) for name in want}
assert have == want, f"installing tfcompress changed {want} into {have}"
print("kept", ", ".join(f"{k} {v}" for k, v in have.items()), "on Python", sys.version.split()[0])
PY

if [ "$#" -eq 0 ]; then
  set -- tests/test_packaging.py tests/test_report.py tests/test_io_modes.py tests/test_pruning.py \
    tests/test_qat.py tests/test_export.py tests/test_callback_order.py tests/test_cli.py
fi
"$py" -m pytest -q -p no:cacheprovider "$@"
