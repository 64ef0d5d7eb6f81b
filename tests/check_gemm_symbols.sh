#!/usr/bin/env bash
# check_gemm_symbols.sh LIB — the AVX2 gemm variant defines no weak (linker-merged) symbol
# outside its renamed Eigen namespace (autograd/gemm_kernel.cpp says why: otherwise the linker
# may keep AVX2 code for calls made on a CPU without AVX2).
set -euo pipefail
defined=$(nm -C --defined-only "$1")
leaks=$(awk '$2 ~ /^[WVu]$/' <<<"$defined" |
    grep -v -e 'edgetune_eigen_avx2::' -e 'DW\.ref\.__gxx_personality_v0' || true)
if [ -n "$leaks" ]; then
    echo "FAIL: weak symbols outside the renamed Eigen namespace in $1:"
    echo "$leaks"
    exit 1
fi
renamed=$(grep -c 'edgetune_eigen_avx2::' <<<"$defined" || true)
if [ "$renamed" -eq 0 ]; then
    echo "FAIL: no edgetune_eigen_avx2:: symbol in $1 (is the namespace rename active?)"
    exit 1
fi
echo "ok: $renamed renamed Eigen symbols, no weak symbol outside them"
