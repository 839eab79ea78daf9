#!/usr/bin/env node
/**
 * Writes kernels/transpose.wat and kernels/transpose.wasm (built from it with wabt): the
 * WebAssembly SIMD128 transposes behind moekit's transposing conversions (nemo, hf-fused, llama4,
 * gpt-oss, megatron-grouped). Run after editing: node scripts/gen-transpose-kernel.mjs [--out <dir>];
 * test/transpose-kernel.test.ts checks the committed files are what this script writes.
 *
 * The module imports one shared memory and exports, for element size 2 (t16) and 4 (t32),
 *   tNN(d, dA, s, sB, m, n):  dst[d + size·(i·dA + j)] = src[s + size·(i + j·sB)]   for i < m, j < n
 * with d, s byte addresses and dA, sB in elements: the source is contiguous along i, the
 * destination along j (the 2-D case every transposing layout reduces to). The body moves 8×8
 * (16-bit) or 4×4 (32-bit) blocks with v128 loads, the classic three (two) rounds of
 * interleaving shuffles and v128 stores, walking 64-column strips of the destination so both
 * sides stay in L1; the ragged edges are copied one element at a time.
 *
 * For one half of an interleaved gate/up pair (GPT-OSS's gate_up_proj: gate at even, up at odd
 * elements), whose source steps by 2 elements, two more exports per size:
 *   pNN(d, dA, s, sB, m, n):  dst[d + size·(i·dA + j)] = src[s + size·(2i + j·sB)]   (the transpose)
 *   gNN(d, dA, s, sA, m, n):  dst[d + size·(i·dA + j)] = src[s + size·(i·sA + 2j)]   (no transpose)
 * Each v128 of the half is the even elements of two loads (one more shuffle); a vector never reads
 * past the row's last element it copies (the last block of a row is copied element by element), so
 * the odd half, which starts one element in, reads nothing past its source range.
 */
import { writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');

// i8x16.shuffle lane tables: interleave the low / high halves of two vectors by 16, 32, 64-bit lanes
const range = (a, n) => Array.from({ length: n }, (_, k) => a + k);
const lanes = (w, hi) => {
  const out = [];
  for (let k = 0; k < 16 / (2 * w); k++) out.push(...range((hi ? 8 : 0) + k * w, w), ...range(16 + (hi ? 8 : 0) + k * w, w));
  return out;
};
const shuf = (w, hi, x, y) => `(i8x16.shuffle ${lanes(w, hi).join(' ')} (local.get ${x}) (local.get ${y}))`;
/** The even elements (of `size` bytes) of two vectors, x's then y's: one half of an interleaved pair. */
const evens = (size, x, y) => {
  const t = [];
  for (let k = 0; k < 32; k += 2 * size) t.push(...range(k, size));
  return `(i8x16.shuffle ${t.join(' ')} ${x} ${y})`;
};

/**
 * Stores of vector v into one half of an interleaved pair at address a: the v128s at a and a + 16
 * are read, v's elements put at their even elements (the other half's odd ones kept), and written
 * back. The caller points a at the half's first element (the odd half one element in).
 */
function mergeEvens(size, v, a) {
  const out = [];
  for (const [k, at] of [
    [0, a],
    [1, `(i32.add ${a} (i32.const 16))`],
  ]) {
    const t = [];
    for (let e = 0; e < 16 / size / 2; e++) t.push(...range(8 * k + e * size, size), ...range(16 + (2 * e + 1) * size, size));
    out.push(`(v128.store ${at} (i8x16.shuffle ${t.join(' ')} ${v} (v128.load ${at})))`);
  }
  return out;
}

/**
 * The statements of one block transpose: B loads (source rows j0..j0+B-1, elements i0..i0+B-1),
 * log2(B) rounds of the perfect shuffle (vector k paired with vector k + B/2, their low and high
 * interleaves by element going to 2k and 2k + 1), after which vector k is destination row i0 + k.
 * Mode p loads the even elements of 2B (one half of a pair), mode q stores into one half of a pair.
 */
function block(size, mode) {
  const B = 16 / size;
  const out = [];
  for (let k = 0; k < B; k++) {
    const at = `(i32.add (local.get $p) (i32.mul (local.get $sb) (i32.const ${k})))`;
    out.push(`(local.set $v${k} ${mode === 'p' ? evens(size, `(v128.load ${at})`, `(v128.load offset=16 ${at})`) : `(v128.load ${at})`})`);
  }
  let cur = range(0, B).map((k) => `$v${k}`);
  for (let r = 0; r < Math.log2(B); r++) {
    const tmp = r % 2 === 0 ? '$u' : '$v';
    const next = [];
    for (let k = 0; k < B / 2; k++) {
      out.push(`(local.set ${tmp}${2 * k} ${shuf(size, false, cur[k], cur[k + B / 2])})`);
      out.push(`(local.set ${tmp}${2 * k + 1} ${shuf(size, true, cur[k], cur[k + B / 2])})`);
      next.push(`${tmp}${2 * k}`, `${tmp}${2 * k + 1}`);
    }
    cur = next;
  }
  for (let k = 0; k < B; k++) {
    const at = `(i32.add (local.get $q) (i32.mul (local.get $da) (i32.const ${k})))`;
    if (mode === 'q') out.push(...mergeEvens(size, `(local.get ${cur[k]})`, at));
    else out.push(`(v128.store ${at} (local.get ${cur[k]}))`);
  }
  return out;
}

/** i32 expression: n rounded down to a multiple of B, less one element first when `strict` (a vector then never reaches a row's end). */
const whole = (n, B, strict) =>
  strict ? `(select (i32.and (i32.sub ${n} (i32.const 1)) (i32.const ${-B})) (i32.const 0) ${n})` : `(i32.and ${n} (i32.const ${-B}))`;

/**
 * The transposes: tNN; pNN, whose source steps by 2 elements along i (one half of an interleaved
 * pair read); qNN, whose destination steps by 2 along j (one half of a pair written, the other
 * half's elements kept).
 */
function kernel(size, mode) {
  const B = 16 / size;
  const lg = Math.log2(size);
  const si = mode === 'p' ? '(i32.shl (local.get $i) (i32.const 1))' : '(local.get $i)';
  const dj = mode === 'q' ? '(i32.shl (local.get $j) (i32.const 1))' : '(local.get $j)';
  const locals = [
    ...range(0, B).map((k) => `(local $v${k} v128) (local $u${k} v128)`),
    '(local $i i32) (local $j i32) (local $jt i32) (local $je i32) (local $m8 i32) (local $n8 i32)',
    '(local $p i32) (local $q i32) (local $sb i32) (local $da i32)',
  ];
  const load = size === 2 ? 'i32.load16_u' : 'i32.load';
  const store = size === 2 ? 'i32.store16' : 'i32.store';
  const at = (base, idx) => `(i32.add (local.get ${base}) (i32.shl ${idx} (i32.const ${lg})))`;
  // one element: dst[d + i·dA + j] = src[s + i + j·sB] (with the modes' steps)
  const one = `(${store} ${at('$d', `(i32.add (i32.mul (local.get $i) (local.get $dA)) ${dj})`)} (${load} ${at('$s', `(i32.add ${si} (i32.mul (local.get $j) (local.get $sB)))`)}))`;
  const scalar = (i0, i1, j0, j1) => `
    (local.set $i ${i0})
    (block $di (loop $li
      (br_if $di (i32.ge_u (local.get $i) ${i1}))
      (local.set $j ${j0})
      (block $dj (loop $lj
        (br_if $dj (i32.ge_u (local.get $j) ${j1}))
        ${one}
        (local.set $j (i32.add (local.get $j) (i32.const 1)))
        (br $lj)))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br $li)))`;
  return `
  (func (export "${mode}${size * 8}") (param $d i32) (param $dA i32) (param $s i32) (param $sB i32) (param $m i32) (param $n i32)
    ${locals.join('\n    ')}
    (local.set $m8 ${whole('(local.get $m)', B, mode === 'p')})
    (local.set $n8 ${whole('(local.get $n)', B, mode === 'q')})
    (local.set $sb (i32.shl (local.get $sB) (i32.const ${lg})))
    (local.set $da (i32.shl (local.get $dA) (i32.const ${lg})))
    (local.set $jt (i32.const 0))
    (block $dt (loop $lt
      (br_if $dt (i32.ge_u (local.get $jt) (local.get $n8)))
      (local.set $je (select (local.get $n8) (i32.add (local.get $jt) (i32.const 64))
        (i32.lt_u (local.get $n8) (i32.add (local.get $jt) (i32.const 64)))))
      (local.set $i (i32.const 0))
      (block $di (loop $li
        (br_if $di (i32.ge_u (local.get $i) (local.get $m8)))
        (local.set $j (local.get $jt))
        (block $dj (loop $lj
          (br_if $dj (i32.ge_u (local.get $j) (local.get $je)))
          (local.set $p ${at('$s', `(i32.add ${si} (i32.mul (local.get $j) (local.get $sB)))`)})
          (local.set $q ${at('$d', `(i32.add (i32.mul (local.get $i) (local.get $dA)) ${dj})`)})
          ${block(size, mode).join('\n          ')}
          (local.set $j (i32.add (local.get $j) (i32.const ${B})))
          (br $lj)))
        (local.set $i (i32.add (local.get $i) (i32.const ${B})))
        (br $li)))
      (local.set $jt (i32.add (local.get $jt) (i32.const 64)))
      (br $lt)))
    ;; ragged edges: the last columns of the block rows, then the last rows
    ${scalar('(i32.const 0)', '(local.get $m8)', '(local.get $n8)', '(local.get $n)')}
    ${scalar('(local.get $m8)', '(local.get $m)', '(i32.const 0)', '(local.get $n)')}
  )`;
}

/**
 * One half of an interleaved pair with rows kept: gNN reads it (dst[d + i·dA + j] = src[s + i·sA + 2j]),
 * sNN writes it (dst[d + i·dA + 2j] = src[s + i·sA + j], the other half's elements kept).
 */
function rows(size, mode) {
  const B = 16 / size;
  const lg = Math.log2(size);
  const load = size === 2 ? 'i32.load16_u' : 'i32.load';
  const store = size === 2 ? 'i32.store16' : 'i32.store';
  const [sj, dj] = mode === 'g' ? [lg + 1, lg] : [lg, lg + 1];
  const src = (off) => `(v128.load offset=${off} (i32.add (local.get $p) (i32.shl (local.get $j) (i32.const ${sj}))))`;
  const dstAt = `(i32.add (local.get $q) (i32.shl (local.get $j) (i32.const ${dj})))`;
  const vec = mode === 'g' ? [`(v128.store ${dstAt} ${evens(size, src(0), src(16))})`] : mergeEvens(size, src(0), dstAt);
  return `
  (func (export "${mode}${size * 8}") (param $d i32) (param $dA i32) (param $s i32) (param $sA i32) (param $m i32) (param $n i32)
    (local $i i32) (local $j i32) (local $p i32) (local $q i32) (local $nv i32)
    ;; vectors while a whole one more element follows (j + ${B} < n): none reaches past the row's last pair
    (local.set $nv ${whole('(local.get $n)', B, true)})
    (block $di (loop $li
      (br_if $di (i32.ge_u (local.get $i) (local.get $m)))
      (local.set $q (i32.add (local.get $d) (i32.shl (i32.mul (local.get $i) (local.get $dA)) (i32.const ${lg}))))
      (local.set $p (i32.add (local.get $s) (i32.shl (i32.mul (local.get $i) (local.get $sA)) (i32.const ${lg}))))
      (local.set $j (i32.const 0))
      (block $dv (loop $lv
        (br_if $dv (i32.ge_u (local.get $j) (local.get $nv)))
        ${vec.join('\n        ')}
        (local.set $j (i32.add (local.get $j) (i32.const ${B})))
        (br $lv)))
      (block $de (loop $le
        (br_if $de (i32.ge_u (local.get $j) (local.get $n)))
        (${store} (i32.add (local.get $q) (i32.shl (local.get $j) (i32.const ${dj})))
          (${load} (i32.add (local.get $p) (i32.shl (local.get $j) (i32.const ${sj})))))
        (local.set $j (i32.add (local.get $j) (i32.const 1)))
        (br $le)))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br $li)))
  )`;
}

const wat = `;; generated by scripts/gen-transpose-kernel.mjs (SIMD128 block transposes); do not edit
(module
  (import "env" "memory" (memory 1 65536 shared))
${[2, 4].flatMap((size) => ['t', 'p', 'q'].map((mode) => kernel(size, mode))).join('\n')}
${[2, 4].flatMap((size) => ['g', 's'].map((mode) => rows(size, mode))).join('\n')}
)
`;

const oi = process.argv.indexOf('--out');
const outDir = oi > 0 ? process.argv[oi + 1] : join(root, 'kernels');
const wabt = await (await import('wabt')).default();
const mod = wabt.parseWat('transpose.wat', wat, { simd: true, threads: true });
mod.resolveNames();
writeFileSync(join(outDir, 'transpose.wat'), wat);
writeFileSync(join(outDir, 'transpose.wasm'), mod.toBinary({}).buffer);
mod.destroy();
