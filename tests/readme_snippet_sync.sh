#!/usr/bin/env bash
# The README's C++ program is examples/readme_snippet.cpp, verbatim (that file is compiled and run
# by the test suite, so the README cannot drift from a program that works).
#   readme_snippet_sync.sh README.md examples/readme_snippet.cpp
set -euo pipefail
readme="$1" snippet="$2"
extracted=$(awk '/^```cpp$/{f=1; next} /^```$/{if (f) exit} f' "$readme")
if [ "$extracted" != "$(cat "$snippet")" ]; then
  echo "README.md's first \`\`\`cpp block differs from $snippet:" >&2
  diff <(printf '%s\n' "$extracted") "$snippet" >&2 || true
  exit 1
fi
echo "readme_snippet_sync: README shows $snippet verbatim"
