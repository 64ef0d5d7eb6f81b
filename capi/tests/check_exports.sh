#!/usr/bin/env bash
# check_exports.sh HEADER LIB [NM] — libedgetune.so exports every function edgetune.h declares
# ET_API, and nothing but the C ABI (et_*) and the public C++ API (namespace edgetune).
set -euo pipefail
header=$1 lib=$2 nm=${3:-nm}
exported=$("$nm" -D --defined-only "$lib" | awk '{print $3}')
declared=$(sed -n 's/^ET_API .*[ *]\(et_[a-z_]*\)(.*/\1/p' "$header" | sort -u)
[ -n "$declared" ] || { echo "FAIL: no ET_API function found in $header"; exit 1; }
missing=$(comm -23 <(echo "$declared") <(echo "$exported" | sort -u))
[ -z "$missing" ] || { echo "FAIL: declared but not exported: $missing"; exit 1; }
others=$("$nm" -DC --defined-only "$lib" | cut -d' ' -f3- |
    sed -e 's/^\(typeinfo name for\|typeinfo for\|vtable for\|VTT for\) //' |
    grep -v -e '^et_' -e '^edgetune::' || true)
[ -z "$others" ] || { echo "FAIL: exported beyond the API:"; echo "$others" | head -20; exit 1; }
echo "ok: $(echo "$declared" | wc -l) C functions and" \
    "$(echo "$exported" | grep -vc '^et_') C++ symbols exported, nothing else"
