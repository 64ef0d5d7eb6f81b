#!/usr/bin/env bash
# check_kernel_symbols.sh LIB... — an AVX2 kernel variant defines no weak (linker-merged)
# symbol outside its renamed Eigen namespace (common/kernel_variant.hpp says why: otherwise the
# linker may keep AVX2 code for calls made on a CPU without AVX2).
set -euo pipefail
for lib in "$@"; do
    defined=$(nm -C --defined-only "$lib")
    leaks=$(awk '$2 ~ /^[WVu]$/' <<<"$defined" |
        grep -v -e 'edgetune_eigen_avx2::' -e 'DW\.ref\.__gxx_personality_v0' || true)
    if [ -n "$leaks" ]; then
        echo "FAIL: weak symbols outside the renamed Eigen namespace in $lib:"
        echo "$leaks"
        exit 1
    fi
    # (A variant without the rename would show its Eigen instances above as leaks; one whose
    # Eigen code is all inlined has nothing the linker could merge.)
    renamed=$(grep -c 'edgetune_eigen_avx2::' <<<"$defined" || true)
    echo "ok: $(basename "$lib"): $renamed renamed Eigen symbols, no weak symbol outside them"
done
