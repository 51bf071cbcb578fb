#!/bin/sh
# Builds librsparse.so with AddressSanitizer and UndefinedBehaviorSanitizer (-DRSPARSE_SANITIZE=ON) in its own build
# dir and runs short Python generations and kernel calls on it (sanitized_generation.py): the C library as the
# runtime drives it, which the C tests alone do not cover. Python is not sanitized, so libasan is preloaded; leak
# checking is off (CPython keeps memory until exit). Fails on any sanitizer report.
# Needs cmake, gcc's libasan/libubsan, and a python with rsparse_cpp importable (installed, or PYTHONPATH).
# Usage: native/tests/run_sanitized_generation.sh [build dir, default: a fresh temporary one] [model.gguf]
set -eu
root=$(cd "$(dirname "$0")/../.." && pwd)
command -v cmake >/dev/null 2>&1 || { echo "run_sanitized_generation.sh: cmake not found" >&2; exit 2; }
out=${1:-$(mktemp -d)}
if [ $# -gt 0 ]; then shift; fi  # a bare `shift` with nothing to shift ends a POSIX sh
cmake -S "$root" -B "$out" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DRSPARSE_SANITIZE=ON >/dev/null
cmake --build "$out" -j"$(nproc 2>/dev/null || echo 2)" --target rsparse >/dev/null
lib=$(find "$out" -name 'librsparse.so' | head -n 1)
asan=$(${CC:-gcc} -print-file-name=libasan.so)
[ -f "$asan" ] || { echo "run_sanitized_generation.sh: libasan.so not found ($asan)" >&2; exit 2; }
log="$out/sanitized_generation.log"
status=0
LD_PRELOAD="$asan" RSPARSE_LIB="$lib" \
    ASAN_OPTIONS=detect_leaks=0:abort_on_error=1:halt_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
    "${PYTHON:-python}" "$root/native/tests/sanitized_generation.py" "$@" >"$log" 2>&1 || status=$?
cat "$log"
if [ "$status" -ne 0 ] || grep -q -e 'ERROR: AddressSanitizer' -e 'runtime error:' -e 'SUMMARY: ' "$log"; then
    echo "run_sanitized_generation.sh: FAILED (exit $status; sanitizer report or error above)" >&2
    exit 1
fi
echo "run_sanitized_generation.sh: ASan + UBSan generation passed"
