#!/bin/sh
# Builds the C tests with the x86 paths that need more than AVX2 (AVX-512, AVX-VNNI, ...) compiled on SIMDe
# (https://github.com/simd-everywhere/simde): their intrinsics become SIMDe's portable versions, built on AVX2, so the
# tests run those paths against the double-precision references on an AVX2-only machine. test_native runs every path
# that dispatch.c offers; -DRS_EMULATED_SIMD makes dispatch.c offer them all here.
# The list of path files and their flags is read from native/CMakeLists.txt (set_source_files_properties lines); a
# file whose flags go beyond -mavx2 -mfma -mf16c is emulated: compiled without its -m flags and with
# native/tests/simde_x86.h force-included (SIMDe's aliases, plus what SIMDe 0.7.4 lacks).
# Installs nothing. Needs: a C compiler, an x86-64 CPU with AVX2, FMA and F16C, and SIMDe's headers
# (apt-get install -y libsimde-dev). Emulation is slow: the build is -O1.
# The same objects are also linked into $out/librsparse.so, for the Python tests to load through RSPARSE_LIB with
# RSPARSE_SIMD naming an emulated path (.ci/run does, for the decode-level tests); $out/emulated_paths lists them.
# Usage: native/tests/run_simde.sh [build dir, default: a fresh temporary one]
set -eu
here=$(cd "$(dirname "$0")/.." && pwd)  # native/
src="$here/src"
cc=${CC:-cc}
missing=""
command -v "$cc" >/dev/null 2>&1 || missing="$missing $cc"
echo '#include <simde/x86/avx512.h>' | "$cc" -E -x c - >/dev/null 2>&1 ||
    missing="$missing simde/x86/avx512.h (apt-get install libsimde-dev)"
for f in avx2 fma f16c; do
    grep -qw "$f" /proc/cpuinfo 2>/dev/null || missing="$missing a CPU with $f"
done
if [ -n "$missing" ]; then
    echo "run_simde.sh: missing:$missing" >&2
    exit 2
fi
out=${1:-$(mktemp -d)}
mkdir -p "$out"
cmakelists="$here/CMakeLists.txt"

# The library's sources (the set(RSPARSE_SOURCES ...) block) and the x86 path files with their flags.
sources=$(sed -n '/^set(RSPARSE_SOURCES/,/)/p' "$cmakelists" | grep -o 'src/[A-Za-z0-9_]*\.c')
paths=$(sed -n 's|.*set_source_files_properties(src/\(kernels_[A-Za-z0-9_]*\)\.c PROPERTIES COMPILE_OPTIONS "\([^"]*-mavx[^"]*\)").*|\1 \2|p' \
    "$cmakelists")
[ -n "$sources" ] && [ -n "$paths" ] || {
    echo "run_simde.sh: could not read the sources or the x86 path files from $cmakelists" >&2
    exit 1
}
# Every x86 path file in src/ must be one of them, or this script would silently skip it.
for f in "$src"/kernels_*.c; do
    b=$(basename "$f" .c)
    case "$b" in kernels_scalar | kernels_neon | kernels_neondot) continue ;; esac  # ARM: run_neon.sh
    echo "$paths" | grep -q "^$b " || {
        echo "run_simde.sh: $b.c has no set_source_files_properties line in CMakeLists.txt; update run_simde.sh" >&2
        exit 1
    }
done

common="-std=gnu11 -O1 -fPIC -Wall -Wextra -Werror -DRS_EMULATED_SIMD -I$here/include -I$src"
defines=""
emulated=""
objs=""
for b in $(echo "$paths" | cut -d' ' -f1); do
    name=${b#kernels_}
    define=RS_HAVE_$(echo "$name" | tr a-z A-Z)
    grep -q "$define" "$cmakelists" || { echo "run_simde.sh: $define is not in CMakeLists.txt" >&2; exit 1; }
    defines="$defines -D$define"
done
for b in $(echo "$paths" | cut -d' ' -f1); do
    name=${b#kernels_}
    flags=$(echo "$paths" | sed -n "s/^$b //p" | tr ';' ' ')
    extra=$(for f in $flags; do case "$f" in -mavx2 | -mfma | -mf16c) ;; *) printf ' %s' "$f" ;; esac; done)
    if [ -n "$extra" ]; then  # emulated: AVX2 underneath, SIMDe for the rest
        flags="-mavx2 -mfma -mf16c -Wno-psabi -include $here/tests/simde_x86.h"
        emulated="$emulated $name"
    fi
    # shellcheck disable=SC2086
    "$cc" $common $defines $flags -c "$src/$b.c" -o "$out/$b.o"
    objs="$objs $out/$b.o"
done
[ -n "$emulated" ] || { echo "run_simde.sh: no path to emulate in $cmakelists" >&2; exit 1; }
for s in $sources; do
    o="$out/$(basename "$s" .c).o"
    # shellcheck disable=SC2086
    "$cc" $common $defines -c "$here/$s" -o "$o"
    objs="$objs $o"
done
# shellcheck disable=SC2086
"$cc" $common $defines "$here/tests/test_native.c" $objs -o "$out/test_native_simde" -lpthread -lm
# shellcheck disable=SC2086
"$cc" -shared $objs -o "$out/librsparse.so" -lpthread -lm
# Nothing built here may contain a real AVX-512 or VNNI instruction: it would fault on this CPU anyway, but a test
# that passes must have run SIMDe's code.
if command -v objdump >/dev/null 2>&1 && objdump -d "$out/test_native_simde" "$out/librsparse.so" |
    grep -qE '%zmm|vpdpbusd|vpdpwssd'; then
    echo "run_simde.sh: the build contains AVX-512 or VNNI instructions" >&2
    exit 1
fi
echo "built $out/test_native_simde; emulated:$emulated"
rc=0
"$out/test_native_simde" >"$out/test_native.log" || rc=$?
cat "$out/test_native.log"
[ "$rc" -eq 0 ] || { echo "run_simde.sh: test_native failed (exit status $rc)" >&2; exit 1; }
for name in $emulated; do
    grep -q "^path $name: ok$" "$out/test_native.log" || {
        echo "run_simde.sh: path $name was not tested (runnable: $(sed -n 's/.*runnable: //p' "$out/test_native.log"))" >&2
        exit 1
    }
done
echo "$emulated" >"$out/emulated_paths"
echo "run_simde.sh:$(echo "$emulated" | sed 's/ /, /g; s/^,//') emulated tests passed"
