#!/usr/bin/env node
/**
 * Writes kernels/cpu_matmul.wat and kernels/cpu_matmul.wasm, built from it with wabt: WebAssembly
 * SIMD128 (f32x4.mul + f32x4.add). A relaxed-SIMD f32x4.relaxed_madd variant (`fused`) measured
 * only ~7% faster on a 2-core Xeon and needs a V8 flag on Node 20, so it is not shipped.
 * Run after editing this file: node scripts/gen-cpu-kernel.mjs [--out <dir>] (default kernels/). test/cpu-kernel.test.ts checks that
 * the committed files are what this script produces, so the binaries never drift from their source.
 *
 * Each module imports one shared memory and exports mm_f32 and mm_bf16, which compute
 *   C[t, r] = Σ_k A[t, k] · B[r, k]   for t < n (a multiple of 4), m0 ≤ r < m1
 * A: f32 [n, K] at byte `a`; B: rows of K f32 or bf16 at byte `b` (row r at b + r·K·size);
 * C: f32 at byte `c`, row stride ldc floats. K is a multiple of 8. The micro-kernel is 4 tokens ×
 * 2 rows with 8 f32x4 accumulators. For bf16 B, 8 weights load as one v128: the even ones become
 * f32 by a 16-bit left shift, the odd ones by masking the low half, so A's 8-blocks must be stored
 * even-first ([x0 x2 x4 x6 x1 x3 x5 x7]); the dot product does not care about the order.
 */
import { writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');

const TOK = 4;
const ROWS = 2;

/** acc_{t}_{r} += a_t · b_{r}{half} */
const fma = (fused, t, r, half) =>
  fused
    ? `(local.set $acc${t}${r} (f32x4.relaxed_madd (local.get $a${t}${half}) (local.get $b${r}${half}) (local.get $acc${t}${r})))`
    : `(local.set $acc${t}${r} (f32x4.add (local.get $acc${t}${r}) (f32x4.mul (local.get $a${t}${half}) (local.get $b${r}${half}))))`;

function loadB(kind) {
  const out = [];
  for (let r = 0; r < ROWS; r++) {
    if (kind === 'bf16') {
      out.push(`(local.set $w (v128.load (i32.add (local.get $brow${r}) (local.get $kb))))`);
      out.push(`(local.set $b${r}0 (i32x4.shl (local.get $w) (i32.const 16)))`);
      out.push(`(local.set $b${r}1 (v128.and (local.get $w) (v128.const i32x4 0xffff0000 0xffff0000 0xffff0000 0xffff0000)))`);
    } else {
      out.push(`(local.set $b${r}0 (v128.load (i32.add (local.get $brow${r}) (local.get $ka))))`);
      out.push(`(local.set $b${r}1 (v128.load offset=16 (i32.add (local.get $brow${r}) (local.get $ka))))`);
    }
  }
  return out;
}

function kernel(kind, fused) {
  const size = kind === 'bf16' ? 2 : 4;
  const accs = [];
  for (let t = 0; t < TOK; t++) for (let r = 0; r < ROWS; r++) accs.push(`$acc${t}${r}`);
  const locals = [
    ...accs.map((n) => `(local ${n} v128)`),
    ...[0, 1].flatMap((r) => [`(local $b${r}0 v128)`, `(local $b${r}1 v128)`]),
    ...[0, 1, 2, 3].flatMap((t) => [`(local $a${t}0 v128)`, `(local $a${t}1 v128)`]),
    '(local $w v128)',
    '(local $r i32) (local $r1 i32) (local $t i32) (local $k i32)',
    '(local $brow0 i32) (local $brow1 i32) (local $rowA i32) (local $cp i32) (local $ka i32) (local $kb i32)',
    '(local $ar0 i32) (local $ar1 i32) (local $ar2 i32) (local $ar3 i32)',
  ];
  const inner = [];
  inner.push(...loadB(kind));
  for (let t = 0; t < TOK; t++) {
    inner.push(`(local.set $a${t}0 (v128.load (i32.add (local.get $ar${t}) (local.get $ka))))`);
    inner.push(`(local.set $a${t}1 (v128.load offset=16 (i32.add (local.get $ar${t}) (local.get $ka))))`);
  }
  for (let t = 0; t < TOK; t++) for (let r = 0; r < ROWS; r++) inner.push(fma(fused, t, r, 0), fma(fused, t, r, 1));
  const hsum = (n) =>
    `(f32.add (f32.add (f32x4.extract_lane 0 (local.get ${n})) (f32x4.extract_lane 1 (local.get ${n}))) (f32.add (f32x4.extract_lane 2 (local.get ${n})) (f32x4.extract_lane 3 (local.get ${n}))))`;
  const stores = [];
  for (let t = 0; t < TOK; t++) {
    // C[t0 + t, r] and C[t0 + t, r1]; r1 == r on an odd last row (the same value stored twice)
    const rowC = `(i32.add (local.get $cp) (i32.shl (i32.mul (i32.add (local.get $t) (i32.const ${t})) (local.get $ldc)) (i32.const 2)))`;
    stores.push(`(f32.store (i32.add ${rowC} (i32.shl (local.get $r) (i32.const 2))) ${hsum(`$acc${t}0`)})`);
    stores.push(`(f32.store (i32.add ${rowC} (i32.shl (local.get $r1) (i32.const 2))) ${hsum(`$acc${t}1`)})`);
  }
  return `
  (func (export "mm_${kind}") (param $a i32) (param $b i32) (param $c i32) (param $n i32) (param $K i32) (param $m0 i32) (param $m1 i32) (param $ldc i32)
    ${locals.join('\n    ')}
    (local.set $cp (local.get $c))
    (local.set $rowA (i32.shl (local.get $K) (i32.const 2)))
    (local.set $r (local.get $m0))
    (block $done_r (loop $loop_r
      (br_if $done_r (i32.ge_u (local.get $r) (local.get $m1)))
      (local.set $r1 (select (i32.add (local.get $r) (i32.const 1)) (local.get $r)
        (i32.lt_u (i32.add (local.get $r) (i32.const 1)) (local.get $m1))))
      (local.set $brow0 (i32.add (local.get $b) (i32.mul (local.get $r) (i32.mul (local.get $K) (i32.const ${size})))))
      (local.set $brow1 (i32.add (local.get $b) (i32.mul (local.get $r1) (i32.mul (local.get $K) (i32.const ${size})))))
      (local.set $t (i32.const 0))
      (block $done_t (loop $loop_t
        (br_if $done_t (i32.ge_u (local.get $t) (local.get $n)))
        (local.set $ar0 (i32.add (local.get $a) (i32.mul (local.get $t) (local.get $rowA))))
        (local.set $ar1 (i32.add (local.get $ar0) (local.get $rowA)))
        (local.set $ar2 (i32.add (local.get $ar1) (local.get $rowA)))
        (local.set $ar3 (i32.add (local.get $ar2) (local.get $rowA)))
        ${accs.map((n) => `(local.set ${n} (v128.const i32x4 0 0 0 0))`).join('\n        ')}
        (local.set $k (i32.const 0))
        (block $done_k (loop $loop_k
          (br_if $done_k (i32.ge_u (local.get $k) (local.get $K)))
          (local.set $ka (i32.shl (local.get $k) (i32.const 2)))
          (local.set $kb (i32.shl (local.get $k) (i32.const 1)))
          ${inner.join('\n          ')}
          (local.set $k (i32.add (local.get $k) (i32.const 8)))
          (br $loop_k)))
        ${stores.join('\n        ')}
        (local.set $t (i32.add (local.get $t) (i32.const ${TOK})))
        (br $loop_t)))
      (local.set $r (i32.add (local.get $r) (i32.const ${ROWS})))
      (br $loop_r)))
  )`;
}

function module(fused) {
  return `;; generated by scripts/gen-cpu-kernel.mjs (${fused ? 'relaxed-SIMD fused multiply-add' : 'SIMD128'}); do not edit
(module
  (import "env" "memory" (memory 1 65536 shared))
${kernel('f32', fused)}
${kernel('bf16', fused)}
)
`;
}

const oi = process.argv.indexOf('--out');
const outDir = oi > 0 ? process.argv[oi + 1] : join(root, 'kernels');
const wabt = await (await import('wabt')).default();
const features = { simd: true, relaxed_simd: true, threads: true };
for (const [fused, name] of [[false, 'cpu_matmul']]) {
  const wat = module(fused);
  const mod = wabt.parseWat(`${name}.wat`, wat, features);
  mod.resolveNames();
  const bin = mod.toBinary({}).buffer;
  writeFileSync(join(outDir, `${name}.wat`), wat);
  writeFileSync(join(outDir, `${name}.wasm`), bin);
  mod.destroy();
}
