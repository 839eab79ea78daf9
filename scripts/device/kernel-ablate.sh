#!/bin/bash
# Where the stream expert kernels' time goes, by ablation: each row runs bench/kernel-tune.ts on
# the Mixtral-8x7B layer (fresh process) with a copy of kernels/ (MOEKIT_KERNEL_DIR) from which
# one part of the work is cut. The outputs are wrong on purpose; only the kernel times matter.
#   full     the kernels as shipped
#   mem      weights streamed and summed, no multiply-adds, no x reads (the weight stream alone)
#   now      no weight reads (values made from the index): multiply-adds, x reads, tiles, barriers
#   nox      no x reads from workgroup memory in the inner step (x made from the index)
#   nostage  no global reads into the x tiles (tiles filled from the index; barriers kept)
#   compute  now + nostage: multiply-adds, workgroup-memory reads and barriers only
#   patch    with PATCH=<a patch against kernels/>: a kernel variant, e.g. scripts/device/overlays/v16.patch
#            (16-byte weight loads, one per row and step, the x tile stored permuted so each lane's
#            two x vec4s stay bank-conflict free); its outputs are right, and it should pass the
#            stream tests on lavapipe first: copy kernels/*.wgsl to a folder, apply the patch there
#            (patch -p1), then MOEKIT_KERNEL_DIR=<folder> npx vitest run --config test/vitest.config.ts
#            test/forward-gpu.test.ts -t stream
# A row name may end in %norob, %nowgi or %both: the same kernels with Dawn's robustness (bounds
# clamping; robustBufferAccess), its zero-initialisation of workgroup memory, or both turned off
# (MOEKIT_DAWN_FLAGS), e.g. ABL="full full%both patch patch%both".
# One device-tool call, after scripts/device/pack-dist.sh (UP / DOWN set the shapes, default the shipped
# ones; ABL the rows, e.g. ABL="full patch"; ROUNDS interleaved rounds):
#   command: bash scripts/device/kernel-ablate.sh   carry: [".device", "dist"]
set -u
[ -f .device/env.sh ] && . .device/env.sh
OUT=${OUT:-/tmp/kernel-ablate}; mkdir -p "$OUT"
T=$(mktemp -d)
abl() { # name perl-expressions...
  local d="$T/$1"; shift
  mkdir -p "$d"; cp kernels/*.wgsl "$d/"
  for e in "$@"; do perl -0pi -e "$e" "$d"/expert_up_stream.wgsl "$d"/expert_down_stream.wgsl; done
}
NOW='s/let w = (w[gud])\[i >> 2u\];/let w = vec2<u32>(i * 2654435761u, i);/g'
NOX='s/let ([xy][0-3]) = sm\[([^\]]+)\];/let $1 = vec4<f32>(f32($2));/g'
MEM='s/dot4t\((acc\.\w), x0, y0, x1, y1, x2, y2, x3, y3, (w\.\w+), (w\.\w+)\)/$1 + $2 + $3/g'
NOSTAGE='s/sm\[i\] = [hx]\[[^;]*\];/sm[i] = vec4<f32>(f32(i));/g'
abl full
abl mem "$MEM"
abl now "$NOW"
abl nox "$NOX"
abl nostage "$NOSTAGE"
abl compute "$NOW" "$NOSTAGE"
if [ -n "${PATCH:-}" ]; then
  p=$(realpath "$PATCH")
  abl patch
  (cd "$T/patch" && if command -v patch >/dev/null; then patch -s -p1 <"$p"; else git apply -p1 "$p"; fi) || exit 1
fi
# every ablation must change its kernels (a pattern that stopped matching would time the full kernels)
for a in mem now nox nostage compute; do
  cmp -s "$T/full/expert_up_stream.wgsl" "$T/$a/expert_up_stream.wgsl" && { echo "ablation $a matched nothing in expert_up_stream.wgsl" >&2; exit 1; }
  cmp -s "$T/full/expert_down_stream.wgsl" "$T/$a/expert_down_stream.wgsl" && { echo "ablation $a matched nothing in expert_down_stream.wgsl" >&2; exit 1; }
done
cfg="stream${UP:+:$UP}${DOWN:+:$DOWN}"
dawn() { # the Dawn toggles a row name's %suffix asks for
  case $1 in
  *%norob) echo enable-dawn-features=allow_unsafe_apis,disable_robustness ;;
  *%nowgi) echo enable-dawn-features=disable_workgroup_init ;;
  *%both) echo enable-dawn-features=allow_unsafe_apis,disable_robustness,disable_workgroup_init ;;
  *%*) echo "unknown row suffix in $1" >&2; exit 1 ;;
  esac
}
for r in $(seq "${ROUNDS:-1}"); do
  for a in ${ABL:-full mem now nox nostage compute${PATCH:+ patch}}; do
    echo -n "$a: "
    MOEKIT_DAWN_FLAGS=$(dawn "$a") MOEKIT_KERNEL_DIR="$T/${a%%%*}" timeout 90 node dist/bench/kernel-tune.js ${TUNE_ARGS:---sync} "$cfg" 2>&1 | grep -v Warning
  done
done | tee "$OUT/ablate.log"
rm -rf "$T"
