#!/bin/bash
# Where a whole-checkpoint verify spends its time on the GPU host: a synthetic bf16 Mixtral checkpoint
# (LAYERS, default 10: 5.3 GiB), converted to nemo (transposed experts), verified against its source on
# WebGPU and with --cpu (timed), then the WebGPU run again under --cpu-prof (top self-time functions of
# the main thread). One device-tool call after scripts/device/pack-dist.sh:
#   command: bash scripts/device/verify-prof.sh   carry: [".device", "dist"]
set -u
[ -f .device/env.sh ] && . .device/env.sh
OUT=${OUT:-/tmp/verify-prof}; mkdir -p "$OUT"
S=/tmp/vp-src; N=/tmp/vp-nemo; rm -rf $S $N
node -e "import('./dist/bench/lib.js').then((m) => m.writeSyntheticMixtral('$S', { layers: ${LAYERS:-10}, experts: 8, hidden: 2048, inter: 5632 }))"
node bin/moekit.js convert $S --to nemo -o $N --no-fsync -q
for a in "" "--cpu"; do
  /usr/bin/time -f "verify $a: %e s wall, %U s user, %S s sys, %M KB" node bin/moekit.js verify $N $S $a -q --json > "$OUT/verify$a.json" 2>"$OUT/time$a.txt"; tail -1 "$OUT/time$a.txt"
done
rm -rf /tmp/vp-prof; mkdir /tmp/vp-prof
MOEKIT_CHILD=1 node --cpu-prof --cpu-prof-dir=/tmp/vp-prof bin/moekit.js verify $N $S -q >/dev/null 2>&1
node -e "
const fs = require('fs'); const f = fs.readdirSync('/tmp/vp-prof').sort()[0];
const p = JSON.parse(fs.readFileSync('/tmp/vp-prof/' + f)); const byId = new Map(p.nodes.map((n) => [n.id, n]));
const self = new Map(); let tot = 0;
p.samples.forEach((id, i) => { const c = byId.get(id).callFrame; const k = c.functionName + ' ' + c.url.split('/').pop() + ':' + c.lineNumber; self.set(k, (self.get(k) || 0) + p.timeDeltas[i]); tot += p.timeDeltas[i]; });
console.log('main thread', (tot / 1e6).toFixed(1), 's');
[...self].sort((a, b) => b[1] - a[1]).slice(0, 15).forEach(([k, v]) => console.log((v / 1e3).toFixed(0).padStart(8), 'ms', k));" | tee "$OUT/prof.txt"
