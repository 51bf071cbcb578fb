#!/bin/sh
# Builds the C library and its test program for AArch64 with Debian's cross compiler and runs the tests under
# qemu-user: the NEON path (and scalar) against the double-precision references, on an x86 machine.
# Installs nothing. Needs: gcc-aarch64-linux-gnu and qemu-user (apt-get install -y gcc-aarch64-linux-gnu qemu-user).
# Usage: native/tests/run_neon.sh [build dir, default: a fresh temporary one]
set -eu
here=$(cd "$(dirname "$0")/.." && pwd)  # native/
cc=${CC_AARCH64:-aarch64-linux-gnu-gcc}
qemu=${QEMU_AARCH64:-qemu-aarch64}
sysroot=${AARCH64_SYSROOT:-/usr/aarch64-linux-gnu}
missing=""
command -v "$cc" >/dev/null 2>&1 || missing="$missing $cc (apt-get install gcc-aarch64-linux-gnu)"
command -v "$qemu" >/dev/null 2>&1 || missing="$missing $qemu (apt-get install qemu-user)"
[ -d "$sysroot" ] || missing="$missing $sysroot (the aarch64 libc, from gcc-aarch64-linux-gnu)"
if [ -n "$missing" ]; then
    echo "run_neon.sh: missing:$missing" >&2
    exit 2
fi
out=${1:-$(mktemp -d)}
mkdir -p "$out"
src="$here/src"
# The same split of flags as CMakeLists.txt: NEON is baseline on AArch64, so kernels_neon.c needs no extra flags;
# kernels_neondot.c alone gets dotprod.
flags="-std=gnu11 -O2 -Wall -Wextra -Werror -DRS_HAVE_NEON -DRS_HAVE_NEONDOT -I$here/include -I$src"
"$cc" $flags -march=armv8.2-a+dotprod -c "$src/kernels_neondot.c" -o "$out/kernels_neondot.o"
"$cc" $flags "$src/pool.c" "$src/quant.c" "$src/kernels_scalar.c" "$src/kernels_neon.c" "$src/dispatch.c" \
    "$src/matmul.c" "$src/gemm.c" "$src/sparse.c" "$here/tests/test_native.c" "$out/kernels_neondot.o" \
    -o "$out/test_native_aarch64" -lpthread -lm
echo "built $out/test_native_aarch64; running under $qemu"
# -cpu max has dotprod: neondot, neon and scalar all run. A CPU without it (Cortex-A57) must leave neondot out.
"$qemu" -cpu max -L "$sysroot" "$out/test_native_aarch64"
"$qemu" -cpu cortex-a57 -L "$sysroot" "$out/test_native_aarch64" | head -1 | grep -q "runnable: neon,scalar$" || {
    echo "run_neon.sh: a CPU without dotprod was offered neondot" >&2
    exit 1
}
# The start-up choice honours RSPARSE_SIMD too.
RSPARSE_SIMD=scalar "$qemu" -cpu max -L "$sysroot" "$out/test_native_aarch64" | head -1 | grep -q "start-up: scalar" || {
    echo "run_neon.sh: RSPARSE_SIMD=scalar was not honoured" >&2
    exit 1
}
echo "run_neon.sh: NEON tests passed"
