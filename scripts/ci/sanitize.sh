#!/usr/bin/env bash
# The CPU test suite on an AddressSanitizer + UndefinedBehaviorSanitizer build of the addon.
#
#   bash scripts/ci/sanitize.sh [vitest args...]     (default: every CPU test file)
#
# cmake-js sets CMAKE_CXX_FLAGS itself, so the flags go in through the build type's variable
# (RelWithDebInfo). Node is not instrumented, so the ASan runtime is preloaded; leak checking is
# off (V8 keeps allocations to exit by design). The CPU allocator's freed-block cache is off
# (KVFOCUS_CPU_CACHE_MB=0) so that a use after free reaches freed memory ASan can see. Any report
# ends the test process (halt_on_error), which fails its test file.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=build-asan
FLAGS="-O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=undefined"
KVFOCUS_CUDA=off npx cmake-js compile --out "$OUT" --config RelWithDebInfo \
  --CDCMAKE_CXX_FLAGS_RELWITHDEBINFO="$FLAGS" \
  --CDCMAKE_SHARED_LINKER_FLAGS_RELWITHDEBINFO="-fsanitize=address,undefined" > "$OUT.log" 2>&1 || { tail -40 "$OUT.log"; exit 1; }
BIN=$OUT/RelWithDebInfo/kvfocus.node
# A build without the flags would pass every test and prove nothing: check they took.
syms=$(nm -D "$BIN")
grep -q '__asan_report_load' <<< "$syms" || { echo "sanitize: $BIN is not ASan-instrumented"; exit 1; }
grep -q '__ubsan_handle' <<< "$syms" || { echo "sanitize: $BIN is not UBSan-instrumented"; exit 1; }
echo "sanitize: $BIN is instrumented (ASan + UBSan)"
npm run build:ts > /dev/null
export LD_PRELOAD="$(g++ -print-file-name=libasan.so)"
export ASAN_OPTIONS="detect_leaks=0:halt_on_error=1:abort_on_error=0:allocator_may_return_null=1"
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1"
export KVFOCUS_BINARY="$PWD/$BIN" KVFOCUS_CPU_CACHE_MB=0
# The bounded policies' long generations run 100,000 tokens in npm test; a shorter run here
# exercises the same compactions under the sanitizers in a fraction of the time.
export KVFOCUS_LONG_TOKENS="${KVFOCUS_LONG_TOKENS:-5000}"
# Not run here: the GPU tests (no GPU build), the pack test (it installs the prebuilt binaries),
# and the fuzz tests, whose children run under an address-space limit that ASan's shadow memory
# cannot live in (they run unsanitized in npm test, and the fuzzer in .ci/run).
if [ $# -eq 0 ]; then set -- --exclude 'test/gpu/**' --exclude test/pack.test.ts --exclude 'test/fuzz/**'; fi
exec npx vitest run "$@"
