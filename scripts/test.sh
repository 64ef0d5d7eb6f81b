#!/usr/bin/env bash
# test.sh — the whole test suite: format check, the README's code blocks against the examples
# (scripts/check_readme.py), release build + every doctest suite and the
# examples' small mode, then an ASan+UBSan build of the suites, then a ThreadSanitizer build of
# the threaded suite, then the C ABI suite under ASan+UBSan and an aarch64 cross build whose
# suites run under qemu-aarch64. Ends with one line "N passed, N failed".
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --tests || exit 1

logs=()
status=0
run_suite() {  # run_suite BUILD_DIR MESON_TEST_ARGS...
    local dir=$1; shift
    # Prints one line per test, a summary, and the full log of any test that failed.
    meson test -C "$dir" --no-rebuild --num-processes 2 --print-errorlogs "$@" | grep -v '^$'
    [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
    python3 scripts/count_tests.py --show "$dir/meson-logs/testlog.json"
    logs+=("$dir/meson-logs/testlog.json")
}
configure() {  # configure BUILD_DIR TARGET_PATTERN MESON_ARGS... ; builds matching targets
    local dir=$1 pattern=$2; shift 2
    if [ -f "$dir/build.ninja" ]; then
        meson configure "$dir" "$@" >/dev/null
    else
        meson setup "$dir" "$@" >/dev/null
    fi
    local targets=""
    [ "$pattern" = all ] || targets=$(ninja -C "$dir" -t targets all | sed -n "s#^\($pattern\): .*#\1#p" | sort -u)
    # shellcheck disable=SC2086
    ninja -C "$dir" -j2 $targets >/dev/null || { ninja -C "$dir" -j1 $targets | tail -40; return 1; }
}

echo "== format check"
format_failed=0
if git ls-files '*.cpp' '*.hpp' | xargs clang-format --dry-run --Werror 2>&1 | head -20 | grep .; then
    echo "format: FAILED (run clang-format -i on the files above)"
    format_failed=1
    status=1
else
    echo "format: ok"
fi

echo "== README: its cpp blocks are the examples' code"
readme_failed=0
python3 scripts/check_readme.py || { readme_failed=1; status=1; }

echo "== release build (asserts on): every suite and the examples' small mode"
configure build-test 'all' -Dbuildtype=release -Db_ndebug=false || exit 1
run_suite build-test

echo "== reliability: simulated power cuts, I/O faults, fuzz corpus replay (counts; suites ran above)"
# One line per scenario and durability mode: cuts, acknowledged, lost, wrong, corrupt; one per
# I/O fault loop; one per fuzz target replayed over its committed corpus (fuzz/corpus/NAME,
# crashes found by fuzz/run included).
EDGETUNE_TEST_TMP=build-test/tests/tmp EDGETUNE_FIXTURES=tests/fixtures build-test/tests/test_reliability >build-test/reliability.log 2>&1 ||
    { status=1; echo "reliability: FAILED (build-test/reliability.log)"; }
grep -E '^(power loss|io faults|alloc faults|file power loss):' build-test/reliability.log
grep -E '^alloc faults: .*operator new' build-test/meson-logs/testlog.txt  # test_alloc_faults, above
for t in checkpoint backbone csv idx database; do
    inputs=(fuzz/corpus/$t)
    [ -d fuzz/crashes/$t ] && inputs+=(fuzz/crashes/$t)
    build-test/fuzz/fuzz_${t}_replay "${inputs[@]}" || { status=1; echo "fuzz replay $t: FAILED"; }
done

echo "== ASan + UBSan build: every doctest suite"
export ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
configure build-asan 'tests/test_[a-z_]*\|fuzz/fuzz_[a-z_]*_replay' -Dbuildtype=debugoptimized -Db_sanitize=address,undefined || exit 1
run_suite build-asan --suite autograd --suite optim --suite storage --suite personalize --suite threads --suite reliability --suite fuzz

echo "== ThreadSanitizer build: the threaded suite"
export TSAN_OPTIONS=halt_on_error=1
configure build-tsan 'tests/test_threads' -Dbuildtype=debugoptimized -Db_sanitize=thread || exit 1
run_suite build-tsan --suite threads

# ---- C ABI (capi/): its C suite under the sanitizers; the aarch64 cross build under qemu ----
# run_logged BUILD_DIR LOGBASE MESON_TEST_ARGS...: like run_suite, into meson-logs/LOGBASE.json
# (a second `meson test` in one build dir must not overwrite the first one's testlog.json).
run_logged() {
    local dir=$1 base=$2; shift 2
    meson test -C "$dir" --no-rebuild --num-processes 2 --print-errorlogs --logbase "$base" "$@" |
        grep -v '^$'
    [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
    python3 scripts/count_tests.py --show "$dir/meson-logs/$base.json"
    logs+=("$dir/meson-logs/$base.json")
}

echo "== ASan + UBSan build: the C ABI suite (C11) and the exports of libedgetune.so"
if ninja -C build-asan -j2 capi/test_capi capi/floats.etb >/dev/null ||
   { ninja -C build-asan -j1 capi/test_capi capi/floats.etb | tail -40; false; }; then
    run_logged build-asan capi-asan --suite capi --suite capi_threads
else
    status=1 && logs+=("build-asan/meson-logs/capi-asan.json")  # counted as a failure
fi

echo "== ThreadSanitizer build: the C ABI's background-training cases (capi_threads)"
if ninja -C build-tsan -j2 capi/test_capi capi/floats.etb >/dev/null ||
   { ninja -C build-tsan -j1 capi/test_capi capi/floats.etb | tail -40; false; }; then
    run_logged build-tsan capi-tsan --suite capi_threads
else
    status=1 && logs+=("build-tsan/meson-logs/capi-tsan.json")  # counted as a failure
fi

echo "== aarch64: cross build (cross/aarch64-linux-gnu.ini), suites under qemu-aarch64"
# NOTE: under Debian 12's qemu-user 7.2 a program that starts a std::thread can hang, so what
# starts threads runs natively only (above): the 'threads' and 'capi_threads' suites, and these
# doctest cases (train_async, the store's WAL checkpoint thread, concurrent connections, the
# per-thread buffer cache); the kill tests fork and SIGKILL, slow under qemu. The other cases
# run with EDGETUNE_STORE_THREADS=0: a store past 4 MiB of WAL checkpoints on the writer
# instead of starting its thread (storage/db.cpp).
# Every qemu run has a timeout (meson's, x0.5), and a timeout or a skip counts as a failure.
aarch64_start=$SECONDS
qemu_exclude='*thread*,*background*,*writers*,*kill*'  # no spaces: meson splits --test-args
aarch64_targets='tests/test_\(autograd\|optim\|storage\|personalize\)\|capi/test_capi\|capi/check_platform\|capi/floats.etb\|capi/libedgetune.stripped.so'
# (the cross file is given once, at setup; `meson configure` does not take it)
if { [ -f build-aarch64/build.ninja ] ||
     meson setup build-aarch64 --cross-file cross/aarch64-linux-gnu.ini >/dev/null; } &&
   configure build-aarch64 "$aarch64_targets" -Dbuildtype=release -Db_ndebug=false; then
    EDGETUNE_STORE_THREADS=0 run_logged build-aarch64 aarch64-doctest --timeout-multiplier 0.5 \
        --suite autograd --suite optim --suite storage --suite personalize \
        "--test-args=--test-case-exclude=$qemu_exclude"
    EDGETUNE_STORE_THREADS=0 run_logged build-aarch64 aarch64-capi --timeout-multiplier 0.5 \
        --suite capi
    echo "aarch64: stripped libedgetune.so $(stat -c %s build-aarch64/capi/libedgetune.stripped.so) bytes"
else
    status=1 && logs+=("build-aarch64/meson-logs/aarch64-doctest.json")  # counted as a failure
fi
echo "aarch64 pass: $((SECONDS - aarch64_start)) s"

python3 scripts/count_tests.py --extra-failed "$format_failed" --extra-failed "$readme_failed" \
    "${logs[@]}" || status=1
exit $status
