#!/usr/bin/env bash
# consumer_test.sh BUILD_DIR BACKBONE.etb WORK_DIR — what an app's build does with an
# installed edgetune: `meson install` into a temporary root, then a C program and a C++
# program built with nothing but `pkg-config --cflags --libs edgetune`, and run. Also checks
# that the install holds the headers, both libraries, the CLI and edgetune.pc, and that a C
# program links the static library with `pkg-config --static`.
set -euo pipefail
build=$1 backbone=$2 work=$3
here=$(cd "$(dirname "$0")" && pwd)
rm -rf "$work" && mkdir -p "$work"
root=$work/root
DESTDIR=$root meson install -C "$build" --no-rebuild --quiet
pc=$(find "$root" -name edgetune.pc | head -1)
[ -n "$pc" ] || { echo "FAIL: no edgetune.pc installed"; exit 1; }
prefix=$root$(sed -n 's/^prefix=//p' "$pc")
# The install was moved under $root: relocate its .pc the way a packager would (not with
# --define-variable=prefix, which would also move eigen3's prefix).
mkdir -p "$work/pc"
sed "s|^prefix=.*|prefix=$prefix|" "$pc" >"$work/pc/edgetune.pc"
export PKG_CONFIG_PATH=$work/pc
pc_flags() { pkg-config "$@" edgetune; }
libdir=$(pc_flags --variable=libdir)
for f in "$prefix/bin/edgetune" "$libdir/libedgetune.a" "$libdir/libedgetune.so" \
    "$prefix/include/edgetune/edgetune.h" "$prefix/include/edgetune/personalize.hpp"; do
    [ -e "$f" ] || { echo "FAIL: not installed: ${f#"$root"}"; exit 1; }
done
echo "installed: $(cd "$root" && find . -type f | sort | tr '\n' ' ')"
# shellcheck disable=SC2046
cc -std=c11 -Wall -Wextra -Werror -pedantic "$here/consumer/consumer.c" -o "$work/consumer_c" \
    $(pc_flags --cflags --libs)
# shellcheck disable=SC2046
c++ -std=c++20 -Wall -Wextra -Werror "$here/consumer/consumer.cpp" -o "$work/consumer_cpp" \
    $(pc_flags --cflags --libs)
# shellcheck disable=SC2046
cc -std=c11 "$here/consumer/consumer.c" -o "$work/consumer_static" $(pc_flags --cflags) \
    -Wl,-Bstatic -ledgetune -Wl,-Bdynamic -L"$libdir" $(pc_flags --static --libs-only-l |
    sed 's/-ledgetune//') -lm
if ldd "$work/consumer_static" | grep -q libedgetune; then
    echo "FAIL: consumer_static is linked to libedgetune.so"; exit 1
fi
LD_LIBRARY_PATH=$libdir "$work/consumer_c" "$backbone" "$work/c.db"
LD_LIBRARY_PATH=$libdir "$work/consumer_cpp" "$backbone" "$work/cpp.db"
"$work/consumer_static" "$backbone" "$work/static.db" | sed 's/^consumer_c/consumer_static/'
echo "ok: installed edgetune consumed by C, C++ and static C programs through pkg-config"
