#!/usr/bin/env bash
# Lint what changed since a base ref: ruff on changed .py files, clang-format --dry-run on changed csrc/ files.
# Usage: tools/lint.sh [BASE]   (BASE, else $LINT_BASE, else the merge-base with origin/main or main; on main
# itself, the last commit). Uncommitted and untracked (not ignored) files count as changed.
set -euo pipefail
cd "$(dirname "$0")/.."

base="${1:-${LINT_BASE:-}}"
if [ -z "$base" ]; then
  for ref in origin/main main; do
    if git rev-parse -q --verify "$ref^{commit}" >/dev/null; then base=$(git merge-base HEAD "$ref"); break; fi
  done
  if [ -z "$base" ] || [ "$base" = "$(git rev-parse HEAD)" ]; then
    base=$(git rev-parse -q --verify HEAD~1 || git hash-object -t tree /dev/null)
  fi
fi

mapfile -t changed < <({ git diff --name-only --diff-filter=ACMR "$base" --; git ls-files --others --exclude-standard; } |
                         sort -u)
py=() cc=()
for f in "${changed[@]}"; do
  [ -f "$f" ] || continue
  case "$f" in
    *.py) py+=("$f") ;;
    csrc/*.cc | csrc/*.h) cc+=("$f") ;;
  esac
done

status=0
echo "lint: ${#py[@]} Python and ${#cc[@]} csrc file(s) changed since $(git rev-parse --short "$base")"
if [ ${#py[@]} -gt 0 ]; then
  ruff check --force-exclude "${py[@]}" || status=1
fi
if [ ${#cc[@]} -gt 0 ]; then
  clang-format --dry-run --Werror "${cc[@]}" || status=1
fi
exit $status
