#!/bin/sh
# Builds the C tests with AddressSanitizer and UndefinedBehaviorSanitizer (-DRSPARSE_SANITIZE=ON) and runs them: every
# SIMD path this CPU runs, the pool, the error paths. Any report aborts the run (-fno-sanitize-recover=all).
# Installs nothing. Needs cmake and a C compiler with the sanitizer runtimes (gcc's libasan and libubsan).
# Usage: native/tests/run_sanitizers.sh [build dir, default: a fresh temporary one]
set -eu
root=$(cd "$(dirname "$0")/../.." && pwd)
command -v cmake >/dev/null 2>&1 || { echo "run_sanitizers.sh: cmake not found" >&2; exit 2; }
out=${1:-$(mktemp -d)}
cmake -S "$root" -B "$out" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DRSPARSE_TESTS=ON -DRSPARSE_SANITIZE=ON >/dev/null
cmake --build "$out" -j"$(nproc 2>/dev/null || echo 2)" --target test_native >/dev/null
ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
    "$out/native/test_native"
echo "run_sanitizers.sh: ASan + UBSan tests passed"
