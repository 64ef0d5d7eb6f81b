#!/usr/bin/env bash
# test.sh — the whole test suite: format check, release build + every doctest suite and the
# examples' small mode, then an ASan+UBSan build of the suites, then a ThreadSanitizer build of
# the threaded suite. Ends with one line "N passed, N failed".
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh || exit 1

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

echo "== release build (asserts on): every suite and the examples' small mode"
configure build-test 'all' -Dbuildtype=release -Db_ndebug=false || exit 1
run_suite build-test

echo "== reliability: simulated power cuts, I/O faults, fuzz corpus replay (counts; suites ran above)"
# One line per scenario and durability mode: cuts, acknowledged, lost, wrong, corrupt; one per
# I/O fault loop; one per fuzz target replayed over its committed corpus (fuzz/corpus/NAME,
# crashes found by fuzz/run included).
EDGETUNE_TEST_TMP=build-test/tests/tmp EDGETUNE_FIXTURES=tests/fixtures build-test/tests/test_reliability >build-test/reliability.log 2>&1 ||
    { status=1; echo "reliability: FAILED (build-test/reliability.log)"; }
grep -E '^(power loss|io faults|alloc faults):' build-test/reliability.log
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

python3 scripts/count_tests.py --extra-failed "$format_failed" "${logs[@]}" || status=1
exit $status
