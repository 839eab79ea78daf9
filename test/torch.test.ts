// PyTorch containers: torch.save zips and DCP folders written by torch 2.11 / huggingface_hub
// (fixtures/torch, copied from ../shared/fixtures/torch), checked against their HF twins, the
// sha256 torch's own dcp_to_torch_save gave each tensor, and transformers' block outputs.
import { createHash } from 'node:crypto';
import { copyFileSync, cpSync, mkdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { basename, join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { openStore } from '../src/store/registry.js';
import { unpickle, torchPersistentLoad, PyObj, type PyDict, TorchTensor } from '../src/store/torch/pickle.js';
import { FIXTURES, ROOT, runCli, tempDir } from './helpers.js';

const TORCH = join(ROOT, 'fixtures', 'torch');
const tmp = tempDir('moekit-torch-');
afterAll(() => tmp.cleanup());

const sha = (b: Uint8Array): string => createHash('sha256').update(b).digest('hex');

describe('torch.save zip (pytorch_model.bin)', () => {
  it('every tensor equals the HF twin, dtype and shape included', async () => {
    const a = await openStore(join(TORCH, 'hf_bin_mixtral'));
    const b = await openStore(join(FIXTURES, 'mixtral'));
    expect(a.format).toBe('torch');
    expect(a.names().sort()).toEqual(b.names().sort());
    for (const n of b.names()) {
      expect([a.info(n).dtype, a.info(n).shape]).toEqual([b.info(n).dtype, b.info(n).shape]);
      expect(Buffer.compare(await a.read(n), await b.read(n)), n).toBe(0);
      // contiguous tensors point straight at their bytes (offsets as torch's format.json lists them)
      expect(a.info(n).offset! % 64).toBe(0);
    }
    await a.close();
    await b.close();
  });

  it('convert --to hf writes model.safetensors byte-identical to the twin; verify matches transformers', () => {
    const out = join(tmp.dir, 'bin-hf');
    const r = runCli(['convert', join(TORCH, 'hf_bin_mixtral'), '--to', 'hf', '-o', out]);
    expect(r.code, r.stderr).toBe(0);
    expect(sha(readFileSync(join(out, 'model.safetensors')))).toBe(sha(readFileSync(join(FIXTURES, 'mixtral', 'model.safetensors'))));
    const v = runCli(['verify', join(TORCH, 'hf_bin_mixtral'), '--reference', join(TORCH, 'hf_bin_mixtral', 'reference.safetensors'), '--cpu']);
    expect(v.code, v.stdout + v.stderr).toBe(0);
    expect(v.stdout).toMatch(/2 MoE block\(s\) forward-equal/);
  });

  it('a sharded .bin with pytorch_model.bin.index.json reads as one store; a lying index is refused', async () => {
    // the same archive under two shard names, with an index that splits the tensors between them
    const d = join(tmp.dir, 'sharded-bin');
    mkdirSync(d);
    const src = join(TORCH, 'hf_bin_mixtral', 'pytorch_model.bin');
    const a = await openStore(src);
    const names = a.names().sort();
    await a.close();
    // torch.save's archive prefix is the file name; moekit reads it from the entries, whatever the file is called
    copyFileSync(src, join(d, 'pytorch_model-00001-of-00002.bin'));
    copyFileSync(src, join(d, 'pytorch_model-00002-of-00002.bin'));
    const half = Math.floor(names.length / 2);
    const weight_map = Object.fromEntries(names.map((n, i) => [n, `pytorch_model-0000${i < half ? 1 : 2}-of-00002.bin`]));
    writeFileSync(join(d, 'pytorch_model.bin.index.json'), JSON.stringify({ metadata: {}, weight_map }));
    copyFileSync(join(TORCH, 'hf_bin_mixtral', 'config.json'), join(d, 'config.json'));
    // both files hold every tensor: a tensor stored twice is an error, not a silent pick
    const r = runCli(['inspect', d]);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/stored twice/);
    writeFileSync(join(d, 'pytorch_model.bin.index.json'), JSON.stringify({ weight_map: { ...weight_map, extra: '../../etc/passwd' } }));
    expect(runCli(['inspect', d]).stderr).toMatch(/outside the checkpoint folder/);
  });

  it('huggingface_hub’s sharded .bin (3 shards + index) reads as one store, byte-identical to the twin', async () => {
    const a = await openStore(join(TORCH, 'hf_bin_sharded_mixtral'));
    const b = await openStore(join(FIXTURES, 'mixtral'));
    expect(a.files.length).toBe(3);
    expect(a.names().sort()).toEqual(b.names().sort());
    for (const n of b.names()) expect(Buffer.compare(await a.read(n), await b.read(n)), n).toBe(0);
    await a.close();
    await b.close();
    const out = join(tmp.dir, 'sharded-hf');
    expect(runCli(['convert', join(TORCH, 'hf_bin_sharded_mixtral', 'pytorch_model.bin.index.json'), '--to', 'hf', '-o', out]).code).toBe(0);
    expect(sha(readFileSync(join(out, 'model.safetensors')))).toBe(sha(readFileSync(join(FIXTURES, 'mixtral', 'model.safetensors'))));
  });

  it('views torch.save wrote (transposes, slices, stride 0, shared storages, 0-d, empty, bf16/f16, Parameter) read as their contiguous copies', async () => {
    const a = await openStore(join(TORCH, 'views', 'views.pt'));
    const b = await openStore(join(TORCH, 'views', 'expected.safetensors'));
    expect(a.names().sort()).toEqual(b.names().sort());
    for (const n of b.names()) {
      expect([a.info(n).dtype, a.info(n).shape], n).toEqual([b.info(n).dtype, b.info(n).shape]);
      const whole = await a.read(n);
      expect(Buffer.compare(whole, await b.read(n)), n).toBe(0);
      if (whole.length > 6) expect(Buffer.compare(await a.read(n, 2, whole.length - 4), whole.subarray(2, whole.length - 4)), `${n} range`).toBe(0);
    }
    // a view of a storage is read in place: no copy of the storage per view
    expect(a.info('a').offset).toBe(a.info('a_rows').offset! - 2 * 8 * 4);
    expect(a.info('a_t').offset).toBeUndefined();
    await a.close();
    await b.close();
    expect(runCli(['inspect', join(TORCH, 'views', 'legacy.pt')]).stderr).toMatch(/legacy \(pre-1\.6, non-zip\) torch\.save pickle/);
  });

  it('the legacy (pre-1.6) pickle format is recognised and refused with a hint', () => {
    const f = join(tmp.dir, 'legacy.pt');
    // what torch.save(..., _use_new_zipfile_serialization=False) starts with: PROTO 2, LONG1 magic number
    writeFileSync(f, Buffer.from([0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19, 0x2e]));
    const r = runCli(['inspect', f]);
    expect(r.code).toBe(4);
    expect(r.stderr.trim().split('\n')).toHaveLength(1);
    expect(r.stderr).toMatch(/legacy \(pre-1\.6, non-zip\) torch\.save pickle/);
  });
});

describe('DCP (torch.distributed.checkpoint)', () => {
  const dcp = join(TORCH, 'dcp_qwen3_moe');
  it('every tensor assembles to the sha256 torch gives it, whole and in odd-sized ranges', async () => {
    const want = JSON.parse(readFileSync(join(dcp, 'format.json'), 'utf8'))['dcp:checkpoint'].assembled_by_dcp_to_torch_save;
    const s = await openStore(dcp);
    expect(s.format).toBe('dcp');
    expect(s.names().length).toBe(25);
    for (const n of s.names()) {
      const full = await s.read(n);
      expect(sha(full), n).toBe(want[n].sha256_contiguous_le);
      const parts: Buffer[] = [];
      for (let p = 0; p < full.length; p += 4 * 37 + 2) parts.push(await s.read(n, p, Math.min(full.length, p + 4 * 37 + 2)));
      expect(Buffer.compare(Buffer.concat(parts), full), n).toBe(0);
    }
    await s.close();
  });

  it('the model folder (config.json beside checkpoint/) converts to the per-expert HF twin byte for byte and verifies', () => {
    const out = join(tmp.dir, 'dcp-hf');
    const r = runCli(['convert', dcp, '--to', 'hf', '-o', out, '--json']);
    expect(r.code, r.stderr).toBe(0);
    expect(JSON.parse(r.stdout).sourceLayout).toBe('hf-fused');
    expect(sha(readFileSync(join(out, 'model.safetensors')))).toBe(sha(readFileSync(join(FIXTURES, 'qwen3_moe', 'model.safetensors'))));
    const v = runCli(['verify', dcp, '--reference', join(dcp, 'reference.safetensors')]);
    expect(v.code, v.stdout + v.stderr).toBe(0);
  });

  it('chunks that overlap, leave a gap or sit outside the tensor are refused in one line', () => {
    const md = readFileSync(join(dcp, 'checkpoint', '.metadata'));
    // size [96, 48] of model.embed_tokens.weight → [97, 48]: its one chunk no longer covers it
    const i = md.indexOf(Buffer.from('K`K0\x86', 'latin1'));
    expect(i).toBeGreaterThan(0);
    const bad = Buffer.from(md);
    bad[i + 1] = 97;
    const d = join(tmp.dir, 'dcp-gap');
    cpSync(join(dcp, 'checkpoint'), d, { recursive: true });
    writeFileSync(join(d, '.metadata'), bad);
    const r = runCli(['inspect', d]);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/do not tile its shape \[97,48\]: a part no chunk holds/);
  });
});

/** A hand-made pickle: protocol 2 opcodes as bytes. */
const P = (...parts: (string | number[])[]): Buffer => Buffer.concat(parts.map((p) => (typeof p === 'string' ? Buffer.from(p, 'latin1') : Buffer.from(p))));
const opts = { where: 'test.pkl' };

describe('restricted unpickler', () => {
  it('names os.system without ever calling it: an inert record, and an error under strict', () => {
    // GLOBAL os.system, ('touch /tmp/pwned',), REDUCE, STOP
    const p = P([0x80, 2], 'cos\nsystem\n', [0x8c, 16], 'touch /tmp/pwned', [0x85], 'R.');
    const u = unpickle(p, opts);
    expect(u.value).toBeInstanceOf(PyObj);
    expect((u.value as PyObj).className).toBe('os.system');
    expect([...u.foreign]).toEqual(['os.system']);
    expect(() => unpickle(p, { ...opts, strict: true })).toThrow(/names os\.system, which is not on moekit's allow list/);
  });

  it('hostile shapes end in one-line errors: truncation, huge lengths, unknown opcodes, underflow, bad memo', () => {
    const cases: [Buffer, RegExp][] = [
      [P([0x80, 2, 0x58, 0xff, 0xff, 0xff, 0x7f], 'abc'), /truncated/],
      [P([0x80, 4, 0x8d], [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f]), /larger than the whole pickle/],
      [P([0x80, 2, 0xff]), /unknown opcode 0xff/],
      [P([0x80, 2], 'R.'), /stack underflow/],
      [P([0x80, 2, 0x68, 5, 0x2e]), /memo key 5 read before/],
      [P([0x80, 2, 0x8b, 0xff, 0xff, 0xff, 0x0f]), /integer of/],
      [P([0x80, 9]), /protocol 9/],
      [P([0x80, 2, 0x5d]), /truncated/],
      [P([0x80, 2, 0x82, 1, 0x2e]), /extension-registry/],
    ];
    for (const [b, re] of cases) expect(() => unpickle(b, opts), re.source).toThrow(re);
  });

  it('a list that contains itself and deep nesting stay bounded', () => {
    // EMPTY_LIST, MEMOIZE-ish BINPUT 0, BINGET 0, APPEND, STOP: l = []; l.append(l)
    const u = unpickle(P([0x80, 2, 0x5d, 0x71, 0, 0x68, 0, 0x61, 0x2e]), opts);
    expect((u.value as unknown[])[0]).toBe(u.value);
    // 100k nested MARKs then TUPLE... never closed: a truncation error, not a crash
    expect(() => unpickle(Buffer.concat([Buffer.from([0x80, 2]), Buffer.alloc(100_000, 0x28)]), opts)).toThrow(/truncated/);
  });

  it('a tensor rebuild gives a lazy view: storage key, offset, size and stride from the pickle', () => {
    // {'w': _rebuild_tensor_v2(('storage', torch.FloatStorage, '0', 'cpu', 6), 2, (2, 2), (1, 2), False, OrderedDict())}
    const p = P(
      [0x80, 2, 0x7d],
      [0x8c, 1],
      'w',
      'ctorch._utils\n_rebuild_tensor_v2\n(',
      '(',
      [0x8c, 7],
      'storage',
      'ctorch\nFloatStorage\n',
      [0x8c, 1],
      '0',
      [0x8c, 3],
      'cpu',
      [0x4b, 6],
      't',
      'Q',
      [0x4b, 2],
      [0x4b, 2, 0x4b, 2, 0x86],
      [0x4b, 1, 0x4b, 2, 0x86],
      [0x89],
      'ccollections\nOrderedDict\n)R',
      'tR',
      's.',
    );
    const u = unpickle(p, { ...opts, persistentLoad: torchPersistentLoad('test.pkl'), strict: true });
    const t = (u.value as PyDict).get('w') as TorchTensor;
    expect(t).toBeInstanceOf(TorchTensor);
    expect([t.storage.key, t.storage.dtype, t.offset, t.shape, t.stride]).toEqual(['0', 'F32', 2, [2, 2], [1, 2]]);
  });
});

describe('NeMo Automodel sharded safetensors (torch HuggingFaceStorageWriter from 2 ranks)', () => {
  const nemo = join(TORCH, 'nemo_sharded_qwen3_moe');
  it('experts split by EP and embeddings by rows assemble into the HF model: byte-identical to the twin, and verified', () => {
    const r = runCli(['convert', nemo, '--to', 'hf', '-o', join(tmp.dir, 'nemo-hf'), '--json']);
    expect(r.code, r.stderr).toBe(0);
    expect(JSON.parse(r.stdout).sourceLayout).toBe('hf-fused');
    expect(sha(readFileSync(join(tmp.dir, 'nemo-hf', 'model.safetensors')))).toBe(sha(readFileSync(join(FIXTURES, 'qwen3_moe', 'model.safetensors'))));
    const v = runCli(['verify', join(nemo, 'model'), '--reference', join(FIXTURES, 'qwen3_moe', 'reference.safetensors'), '--cpu']);
    expect(v.code, v.stdout + v.stderr).toBe(0);
  });
  it('a rank file missing (half the experts gone, KempnerForge #202) is refused against config.json, not read as a smaller model', () => {
    const d = join(tmp.dir, 'nemo-missing');
    cpSync(nemo, d, { recursive: true });
    rmSync(join(d, 'model', 'shard-00002-model-00001-of-00001.safetensors'));
    expect(runCli(['inspect', d]).stdout).toMatch(/config\.json says 8 experts, tensors hold 4/);
    for (const cmd of [
      ['convert', d, '--to', 'hf', '-o', join(tmp.dir, 'never')],
      ['verify', d, '--reference', join(FIXTURES, 'qwen3_moe', 'reference.safetensors'), '--cpu'],
    ]) {
      const r = runCli(cmd);
      expect(r.code, cmd[0]).toBeGreaterThan(1);
      expect(r.stderr.trim().split('\n').at(-1)).toMatch(/no router tensor|holds 4 experts, config\.json says 8/);
    }
    // the experts of a whole rank gone while the router stayed: the count against config.json catches it
    const e = join(tmp.dir, 'dcp-fewer');
    cpSync(join(TORCH, 'dcp_qwen3_moe'), e, { recursive: true });
    const cfg = JSON.parse(readFileSync(join(e, 'config.json'), 'utf8'));
    writeFileSync(join(e, 'config.json'), JSON.stringify({ ...cfg, num_experts: 16, num_local_experts: 16 }));
    const r = runCli(['convert', e, '--to', 'hf', '-o', join(tmp.dir, 'never')]);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/layer 0 holds 8 experts, config\.json says 16: a shard or rank file is missing/);
    // a piece lying about where it sits (overlapping another) is refused by the tiling check
    const f = join(d, 'model', 'shard-00001-model-00001-of-00001.safetensors');
    cpSync(join(nemo, 'model', 'shard-00002-model-00001-of-00001.safetensors'), join(d, 'model', 'shard-00002-model-00001-of-00001.safetensors'));
    const b = readFileSync(f);
    const lie = b
      .toString('latin1')
      .replace('\\"model.embed_tokens.weight\\": {\\"saved_offsets\\": [0, 0]}', '\\"model.embed_tokens.weight\\": {\\"saved_offsets\\": [9, 0]}');
    expect(lie).not.toBe(b.toString('latin1'));
    writeFileSync(f, Buffer.from(lie, 'latin1'));
    expect(runCli(['inspect', d]).stderr).toMatch(/the pieces of 'model\.embed_tokens\.weight' do not tile/);
  });
});

describe('Megatron-Core torch_dist (written by Megatron-Core 0.20)', () => {
  const mc = join(TORCH, 'mcore_torch_dist_plain');
  it('reads as an HF Mixtral: inspect, convert --to hf byte-identical to the twin, verify against Megatron’s own MoE outputs', () => {
    const i = runCli(['inspect', mc, '--json']);
    expect(i.code, i.stderr).toBe(0);
    const j = JSON.parse(i.stdout);
    expect([j.family, j.layout, j.numExperts, j.topK]).toEqual(['mixtral', 'hf-mixtral', 8, 2]);
    const out = join(tmp.dir, 'mcore-hf');
    expect(runCli(['convert', mc, '--to', 'hf', '-o', out]).code).toBe(0);
    expect(sha(readFileSync(join(out, 'model.safetensors')))).toBe(sha(readFileSync(join(mc, 'model.safetensors'))));
    const v = runCli(['verify', mc, '--reference', join(mc, 'reference.safetensors'), '--json']);
    expect(v.code, v.stdout + v.stderr).toBe(0);
  });

  // EP=2 checkpoints from two processes and a shared-expert model; weights are keyed by the global
  // parameter name, so each equals its EP=1 twin and Megatron's EP=1 block outputs
  for (const [name, twin, layout] of [
    ['mcore_torch_dist_plain_ep2', 'mcore_torch_dist_plain', 'hf-mixtral'],
    ['mcore_torch_dist_shared', 'mcore_torch_dist_shared', 'hf-qwen2-moe'],
    ['mcore_torch_dist_shared_ep2', 'mcore_torch_dist_shared', 'hf-qwen2-moe'],
    // the legacy per-rank format: mp_rank_00/ or mp_rank_00_000/ + mp_rank_00_001/ (EP ranks), experts renumbered to global ids
    ['mcore_legacy_plain', 'mcore_torch_dist_plain', 'hf-mixtral'],
    ['mcore_legacy_plain_ep2', 'mcore_torch_dist_plain', 'hf-mixtral'],
    ['mcore_legacy_shared', 'mcore_torch_dist_shared', 'hf-qwen2-moe'],
    ['mcore_legacy_shared_ep2', 'mcore_torch_dist_shared', 'hf-qwen2-moe'],
  ] as const)
    it(`${name}: converts to the HF twin (${layout}) byte for byte and verifies against Megatron's MoE outputs`, () => {
      const out = join(tmp.dir, `${name}-hf`);
      const r = runCli(['convert', join(TORCH, name), '--to', 'hf', '-o', out, '--json']);
      expect(r.code, r.stderr).toBe(0);
      expect(JSON.parse(r.stdout).sourceLayout).toBe(layout);
      expect(sha(readFileSync(join(out, 'model.safetensors')))).toBe(sha(readFileSync(join(TORCH, twin, 'model.safetensors'))));
      const v = runCli(['verify', join(TORCH, name), '--reference', join(TORCH, twin, 'reference.safetensors'), '--cpu']);
      expect(v.code, v.stdout + v.stderr).toBe(0);
      expect(v.stdout).toMatch(/2 MoE block\(s\) forward-equal/);
    });

  it('legacy EP=2 with a rank folder missing, or a folder the args do not name, is refused in one line', () => {
    const d = join(tmp.dir, 'legacy-missing');
    cpSync(join(TORCH, 'mcore_legacy_plain_ep2'), d, { recursive: true });
    renameSync(join(d, 'iter_0000001', 'mp_rank_00_001'), join(d, 'iter_0000001', 'mp_rank_00_001_002'));
    expect(runCli(['inspect', d]).stderr).toMatch(/mp_rank_00_001_002 does not fit the args \(TP 1, PP 1, EP 2/);
    rmSync(join(d, 'iter_0000001', 'mp_rank_00_001_002'), { recursive: true });
    const r = runCli(['convert', d, '--to', 'hf', '-o', join(tmp.dir, 'never')]);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/1 rank folders, the args say TP 1 × PP 1 × EP 2 = 2/);
  });

  it('without a config.json the HF config is derived from the args inside the checkpoint', () => {
    const d = join(tmp.dir, 'mcore-bare');
    cpSync(join(mc, 'iter_0000001'), join(d, 'iter_0000001'), { recursive: true });
    copyFileSync(join(mc, 'latest_checkpointed_iteration.txt'), join(d, 'latest_checkpointed_iteration.txt'));
    const out = join(tmp.dir, 'mcore-bare-hf');
    const r = runCli(['convert', d, '--to', 'hf', '-o', out]);
    expect(r.code, r.stderr).toBe(0);
    expect(sha(readFileSync(join(out, 'model.safetensors')))).toBe(sha(readFileSync(join(mc, 'model.safetensors'))));
    const got = JSON.parse(readFileSync(join(out, 'config.json'), 'utf8'));
    const twin = JSON.parse(readFileSync(join(mc, 'config.json'), 'utf8'));
    for (const k of [
      'architectures',
      'model_type',
      'hidden_size',
      'intermediate_size',
      'num_hidden_layers',
      'num_attention_heads',
      'num_key_value_heads',
      'head_dim',
      'vocab_size',
      'num_local_experts',
      'num_experts_per_tok',
      'rms_norm_eps',
      'tie_word_embeddings',
      'max_position_embeddings',
      'rope_parameters',
    ])
      expect(got[k], k).toEqual(twin[k]);
    // the tracker file is Megatron's, not part of an HF folder
    expect(runCli(['inspect', out]).code).toBe(0);
    // the iteration folder itself opens too
    expect(runCli(['inspect', join(d, 'iter_0000001')]).code).toBe(0);
    // --hf-config / --family say how to read it when the args cannot (checked against them)
    expect(JSON.parse(runCli(['inspect', d, '--json', '--hf-config', join(mc, 'config.json')]).stdout).family).toBe('mixtral');
    expect(runCli(['inspect', d, '--family', 'qwen2_moe']).stderr).toMatch(/HF qwen2_moe has a shared expert, the checkpoint none/);
    expect(runCli(['inspect', d, '--family', 'llama']).stderr).toMatch(/--family llama: Megatron checkpoints are read as mixtral, qwen2_moe, qwen3_moe/);
    writeFileSync(join(d, 'latest_checkpointed_iteration.txt'), '7');
    expect(runCli(['inspect', d]).stderr).toMatch(/names iter_0000007, which is not there \(folders: iter_0000001\)/);
  });
});

describe('writing Megatron-Core torch_dist (convert --to megatron --format torch_dist)', () => {
  // Megatron-Core 0.20 loads these outputs into the GPTModel the fixtures came from with parameters,
  // MoE outputs and logits bit-identical (fixtures/check_mcore_load.py on the GPU machine; README)
  for (const [twin, family] of [
    ['mcore_torch_dist_plain', 'mixtral'],
    ['mcore_torch_dist_shared', 'qwen2_moe'],
  ] as const)
    it(`${family}: the same keys, global shapes and dtypes Megatron wrote, and back to HF byte for byte`, async () => {
      const out = join(tmp.dir, `write-${twin}`);
      const r = runCli(['convert', join(TORCH, twin, 'model.safetensors'), '--to', 'megatron', '--format', 'torch_dist', '-o', out, '--json']);
      expect(r.code, r.stderr).toBe(0);
      expect(JSON.parse(r.stdout).family).toBe(family);
      const { DcpStore } = await import('../src/store/torch/dcp.js');
      const ours = await DcpStore.open(join(out, 'iter_0000001'));
      const theirs = await DcpStore.open(join(TORCH, twin, 'iter_0000001'));
      expect(ours.names().sort()).toEqual(theirs.names().sort());
      for (const n of theirs.names()) {
        expect([ours.info(n).dtype, ours.info(n).shape], n).toEqual([theirs.info(n).dtype, theirs.info(n).shape]);
        expect(Buffer.compare(await ours.read(n), await theirs.read(n)), n).toBe(0);
      }
      // every object Megatron wrote but its RNG state (not part of a model), with the same contents
      expect([...ours.objects.keys()].sort()).toEqual([...theirs.objects.keys()].filter((k) => !k.startsWith('rng_state')).sort());
      const args = ((await ours.object('common_state/shard_0_1')) as PyDict[])[0]!.get('args') as PyObj;
      const want = ((await theirs.object('common_state/shard_0_1')) as PyDict[])[0]!.get('args') as PyObj;
      for (const k of [
        'num_layers',
        'hidden_size',
        'num_attention_heads',
        'num_query_groups',
        'kv_channels',
        'num_experts',
        'moe_router_topk',
        'moe_ffn_hidden_size',
        'moe_shared_expert_intermediate_size',
        'padded_vocab_size',
      ])
        expect(args.field(k), k).toEqual(want.field(k));
      await ours.close();
      await theirs.close();
      const back = join(tmp.dir, `write-${twin}-hf`);
      expect(runCli(['convert', out, '--to', 'hf', '-o', back]).code).toBe(0);
      expect(sha(readFileSync(join(back, 'model.safetensors')))).toBe(sha(readFileSync(join(TORCH, twin, 'model.safetensors'))));
    });

  for (const v of ['plain', 'shared'])
    it(`shard --ep 2 --to megatron --format torch (${v}): each rank file holds exactly what Megatron's own EP=2 legacy files hold`, async () => {
      const out = join(tmp.dir, `legacy-${v}`);
      const r = runCli(['shard', join(TORCH, `mcore_torch_dist_${v}`, 'model.safetensors'), '--ep', '2', '--to', 'megatron', '--format', 'torch', '-o', out]);
      expect(r.code, r.stderr).toBe(0);
      for (const rank of ['mp_rank_00_000', 'mp_rank_00_001']) {
        const ours = await openStore(join(out, 'iter_0000001', rank, 'model_optim_rng.pt'));
        const theirs = await openStore(join(TORCH, `mcore_legacy_${v}_ep2`, 'iter_0000001', rank, 'model_optim_rng.pt'));
        expect(ours.names().sort()).toEqual(theirs.names().sort());
        for (const n of theirs.names()) {
          expect([ours.info(n).dtype, ours.info(n).shape], n).toEqual([theirs.info(n).dtype, theirs.info(n).shape]);
          expect(Buffer.compare(await ours.read(n), await theirs.read(n)), n).toBe(0);
        }
        // the whole state dict, the None _extra_state entries Megatron's load_state_dict expects included
        const keysOf = (s: typeof ours) =>
          (([...(s as TorchSaveStore).roots.values()][0] as PyDict).get('model') as PyDict).entries.map((e) => e[0] as string).sort();
        expect(keysOf(ours)).toEqual(keysOf(theirs));
        await ours.close();
        await theirs.close();
      }
      const back = join(tmp.dir, `legacy-${v}-hf`);
      expect(runCli(['convert', out, '--to', 'hf', '-o', back]).code).toBe(0);
      expect(sha(readFileSync(join(back, 'model.safetensors')))).toBe(sha(readFileSync(join(TORCH, `mcore_torch_dist_${v}`, 'model.safetensors'))));
    });

  for (const v of ['plain', 'shared'])
    it(`shard --ep 2 --to megatron --format torch_dist (${v}): every stacked slot and object in the rank file Megatron's own EP=2 save put it in`, async () => {
      const out = join(tmp.dir, `dist-ep2-${v}`);
      const r = runCli([
        'shard',
        join(TORCH, `mcore_torch_dist_${v}`, 'model.safetensors'),
        '--ep',
        '2',
        '--to',
        'megatron',
        '--format',
        'torch_dist',
        '-o',
        out,
      ]);
      expect(r.code, r.stderr).toBe(0);
      const { DcpStore } = await import('../src/store/torch/dcp.js');
      const ours = await DcpStore.open(join(out, 'iter_0000001'));
      const theirs = await DcpStore.open(join(TORCH, `mcore_torch_dist_${v}_ep2`, 'iter_0000001'));
      type Chunked = { chunks: { at: number[]; file: string }[] };
      const placement = (s: typeof ours) => {
        const m = new Map<string, string>();
        // by tensor and stacked slot ([layer] or [layer, expert]): moekit cuts fused QKV into more chunks than Megatron
        for (const n of s.names())
          for (const c of (s.info(n) as unknown as Chunked).chunks) m.set(`${n}@${c.at.slice(0, n.includes('.experts.experts.') ? 2 : 1)}`, basename(c.file));
        for (const [k, o] of s.objects) if (!k.startsWith('rng_state')) m.set(k, basename(o.file));
        return [...m].sort();
      };
      expect(placement(ours)).toEqual(placement(theirs));
      expect(new Set(placement(ours).map(([, f]) => f))).toEqual(new Set(['__0_0.distcp', '__1_0.distcp']));
      for (const n of theirs.names()) expect(Buffer.compare(await ours.read(n), await theirs.read(n)), n).toBe(0);
      await ours.close();
      await theirs.close();
      const back = join(tmp.dir, `dist-ep2-${v}-hf`);
      expect(runCli(['convert', out, '--to', 'hf', '-o', back]).code).toBe(0);
      expect(sha(readFileSync(join(back, 'model.safetensors')))).toBe(sha(readFileSync(join(TORCH, `mcore_torch_dist_${v}`, 'model.safetensors'))));
    });

  it('--format dcp: the converted tensors as a DCP folder, equal to what torch.distributed.checkpoint.save wrote for the same model', async () => {
    const out = join(tmp.dir, 'write-dcp');
    const r = runCli(['convert', join(FIXTURES, 'qwen3_moe'), '--to', 'hf-fused', '--format', 'dcp', '-o', out]);
    expect(r.code, r.stderr).toBe(0);
    const ours = await openStore(out);
    const theirs = await openStore(join(TORCH, 'dcp_qwen3_moe'));
    expect([ours.format, ours.names().sort()]).toEqual(['dcp', theirs.names().sort()]);
    for (const n of theirs.names()) expect(Buffer.compare(await ours.read(n), await theirs.read(n)), n).toBe(0);
    await ours.close();
    await theirs.close();
    const back = join(tmp.dir, 'write-dcp-hf');
    expect(runCli(['convert', out, '--to', 'hf', '-o', back]).code).toBe(0);
    expect(sha(readFileSync(join(back, 'model.safetensors')))).toBe(sha(readFileSync(join(FIXTURES, 'qwen3_moe', 'model.safetensors'))));
  });

  it('the pickles and zips moekit writes read back through the restricted unpickler under --strict', () => {
    const out = join(tmp.dir, 'write-strict');
    expect(runCli(['convert', join(FIXTURES, 'qwen3_moe'), '--to', 'megatron', '--format', 'torch_dist', '-o', out]).code).toBe(0);
    const r = runCli(['inspect', '--strict', out, '--json']);
    expect(r.code, r.stderr).toBe(0);
    expect(JSON.parse(r.stdout).family).toBe('qwen3_moe');
    expect(runCli(['convert', join(FIXTURES, 'qwen3_moe'), '--to', 'te', '--format', 'torch_dist', '-o', join(tmp.dir, 'never')]).stderr).toMatch(
      /use it with --to megatron/,
    );
  });
});

/** DeepSeek-V3 config fields the args of a Megatron MLA checkpoint determine */
const DERIVED = [
  'first_k_dense_replace',
  'q_lora_rank',
  'kv_lora_rank',
  'qk_nope_head_dim',
  'qk_rope_head_dim',
  'v_head_dim',
  'n_routed_experts',
  'n_shared_experts',
  'moe_intermediate_size',
  'intermediate_size',
  'n_group',
  'topk_group',
  'num_experts_per_tok',
  'norm_topk_prob',
  'routed_scaling_factor',
  'rms_norm_eps',
  'rope_interleave',
];

// fixtures/torch/mla-notes.md: what Megatron-Core 0.20 stores for DeepSeek-V3 (MLA, dense first
// layers, sigmoid router with a float32 expert_bias), read from its source
describe('DeepSeek-V3 (MLA) as Megatron-Core torch_dist', () => {
  const DS = join(FIXTURES, 'deepseek_v3');
  const hfOf = async (p: string) => (await import('./convert-helpers.js')).dump(p);
  const diffOf = async (a: string, b: string) => (await import('./convert-helpers.js')).diff(await hfOf(a), await hfOf(b));
  const out = join(tmp.dir, 'ds-mg');
  /** the config.json moekit derives from a Megatron folder's args alone (its config.json removed), field by field against `hf` */
  const derivedMatches = async (megatron: string, tag: string, hf: string) => {
    const bare = join(tmp.dir, tag);
    cpSync(megatron, bare, { recursive: true });
    rmSync(join(bare, 'config.json'));
    const st = await openStore(bare);
    const c = (await st.config()) as Record<string, unknown>;
    await st.close();
    const want = JSON.parse(readFileSync(join(hf, 'config.json'), 'utf8'));
    for (const k of DERIVED) expect(c[k], k).toEqual(want[k]);
    return bare;
  };

  it('per-layer keys with no layer axis, experts [E, 2I, H], MLA projections under their Megatron names, expert_bias in float32', async () => {
    const r = runCli(['convert', DS, '--to', 'megatron', '--format', 'torch_dist', '-o', out, '--json']);
    expect(r.code, r.stderr).toBe(0);
    const { DcpStore } = await import('../src/store/torch/dcp.js');
    const s = await DcpStore.open(join(out, 'iter_0000001'));
    const shape = (n: string) => [s.info(n).dtype, s.info(n).shape];
    expect(s.names().some((n) => n.startsWith('decoder.layers.mlp.') || n.startsWith('decoder.layers.self_attention.'))).toBe(false);
    expect(shape('decoder.layers.1.mlp.experts.experts.linear_fc1.weight')).toEqual(['F32', [16, 80, 48]]);
    expect(shape('decoder.layers.2.mlp.experts.experts.linear_fc2.weight')).toEqual(['F32', [16, 48, 40]]);
    expect(shape('decoder.layers.1.mlp.router.expert_bias')).toEqual(['F32', [16]]);
    expect(shape('decoder.layers.1.mlp.shared_experts.linear_fc1.weight')).toEqual(['F32', [80, 48]]);
    // layer 0 is dense: a SwiGLU fc1 [2F, H] and no router
    expect(shape('decoder.layers.0.mlp.linear_fc1.weight')).toEqual(['F32', [192, 48]]);
    expect(s.has('decoder.layers.0.mlp.router.weight')).toBe(false);
    expect(shape('decoder.layers.0.self_attention.linear_q_down_proj.weight')).toEqual(['F32', [24, 48]]);
    expect(shape('decoder.layers.0.self_attention.linear_q_up_proj.weight')).toEqual(['F32', [64, 24]]);
    expect(shape('decoder.layers.0.self_attention.linear_kv_down_proj.weight')).toEqual(['F32', [24, 48]]);
    expect(shape('decoder.layers.0.self_attention.linear_kv_up_proj.weight')).toEqual(['F32', [80, 16]]);
    expect(shape('decoder.layers.0.self_attention.q_layernorm.weight')).toEqual(['F32', [24]]);
    expect(shape('decoder.layers.0.self_attention.kv_layernorm.weight')).toEqual(['F32', [16]]);
    // gate rows first, then up (mlp.py apply_swiglu_sharded_factory), expert 5 of layer 2
    const ref = await openStore(DS);
    const fc1 = await s.read('decoder.layers.2.mlp.experts.experts.linear_fc1.weight');
    const rowBytes = 48 * 4;
    const e5 = fc1.subarray(5 * 80 * rowBytes, 6 * 80 * rowBytes);
    expect(Buffer.compare(e5.subarray(0, 40 * rowBytes), await ref.read('model.layers.2.mlp.experts.5.gate_proj.weight'))).toBe(0);
    expect(Buffer.compare(e5.subarray(40 * rowBytes), await ref.read('model.layers.2.mlp.experts.5.up_proj.weight'))).toBe(0);
    // the _extra_state objects Megatron's per-layer modules expect: experts at (e, E), others at (0, 1)
    expect(s.objects.has('decoder.layers.1.mlp.experts.experts.linear_fc1._extra_state/shard_15_16')).toBe(true);
    expect(s.objects.has('decoder.layers.0.self_attention.linear_kv_up_proj._extra_state/shard_0_1')).toBe(true);
    const args = ((await s.object('common_state/shard_0_1')) as PyDict[])[0]!.get('args') as PyObj;
    expect(args.field('moe_layer_freq')).toEqual([0, 1, 1]);
    expect([args.field('multi_latent_attention'), args.field('q_lora_rank'), args.field('kv_lora_rank'), args.field('qk_head_dim')]).toEqual([true, 24, 16, 8]);
    expect([args.field('moe_router_score_function'), args.field('moe_router_num_groups'), args.field('moe_router_group_topk')]).toEqual(['sigmoid', 4, 2]);
    await s.close();
    await ref.close();
  });

  it('reads back as HF DeepSeek-V3 tensor for tensor, and its MoE and dense blocks match transformers', async () => {
    const back = join(tmp.dir, 'ds-mg-hf');
    expect(runCli(['convert', out, '--to', 'hf', '-o', back]).code).toBe(0);
    expect(await diffOf(back, DS)).toEqual([]);
    const v = runCli(['verify', out, '--reference', join(DS, 'reference.safetensors'), '--cpu', '--json']);
    expect(v.code, v.stderr).toBe(0);
    const j = JSON.parse(v.stdout);
    expect(j.layers.map((l: { kind: string; pass: boolean }) => [l.kind, l.pass])).toEqual([
      ['dense', true],
      ['moe', true],
      ['moe', true],
    ]);
  });

  it("without the config.json beside it, the HF config is derived from Megatron's args and routes the same", async () => {
    const bare = await derivedMatches(out, 'ds-mg-bare', DS);
    const v = runCli(['verify', bare, '--reference', join(DS, 'reference.safetensors'), '--cpu']);
    expect(v.code, v.stderr + v.stdout).toBe(0);
  });

  it('bf16: the expert bias goes to float32 as Megatron keeps it, every other tensor byte for byte', async () => {
    const o = join(tmp.dir, 'ds-mg-bf16');
    expect(runCli(['convert', join(FIXTURES, 'deepseek_v3_bf16'), '--to', 'megatron', '--format', 'torch_dist', '-o', o]).code).toBe(0);
    const back = join(tmp.dir, 'ds-mg-bf16-hf');
    expect(runCli(['convert', o, '--to', 'hf', '-o', back]).code).toBe(0);
    const d = await diffOf(back, join(FIXTURES, 'deepseek_v3_bf16'));
    expect(d).toEqual([
      'model.layers.1.mlp.gate.e_score_correction_bias: F32[16] vs BF16[16]',
      'model.layers.2.mlp.gate.e_score_correction_bias: F32[16] vs BF16[16]',
    ]);
    const ours = await openStore(back);
    const theirs = await openStore(join(FIXTURES, 'deepseek_v3_bf16'));
    const f32 = new Float32Array(Uint8Array.from(await ours.read('model.layers.1.mlp.gate.e_score_correction_bias')).buffer);
    const bf = await theirs.read('model.layers.1.mlp.gate.e_score_correction_bias');
    expect([...f32]).toEqual(Array.from({ length: 16 }, (_, i) => new Float32Array(new Uint32Array([bf.readUInt16LE(2 * i) << 16]).buffer)[0]));
    await ours.close();
    await theirs.close();
  });

  it('shard --ep 2: experts 0-7 in rank 0, 8-15 in rank 1, and back to HF unchanged', async () => {
    const o = join(tmp.dir, 'ds-mg-ep2');
    const r = runCli(['shard', DS, '--ep', '2', '--to', 'megatron', '--format', 'torch_dist', '-o', o]);
    expect(r.code, r.stderr).toBe(0);
    const { DcpStore } = await import('../src/store/torch/dcp.js');
    const s = await DcpStore.open(join(o, 'iter_0000001'));
    type Chunked = { chunks: { at: number[]; file: string }[] };
    const files = (s.info('decoder.layers.2.mlp.experts.experts.linear_fc2.weight') as unknown as Chunked).chunks.map((c) => [c.at[0], basename(c.file)]);
    expect(files).toHaveLength(16);
    for (const [e, f] of files) expect(f).toBe(Number(e) < 8 ? '__0_0.distcp' : '__1_0.distcp');
    expect(basename((s.info('decoder.layers.1.self_attention.linear_q_up_proj.weight') as unknown as Chunked).chunks[0]!.file)).toBe('__0_0.distcp');
    await s.close();
    const back = join(tmp.dir, 'ds-mg-ep2-hf');
    expect(runCli(['convert', o, '--to', 'hf', '-o', back]).code).toBe(0);
    expect(await diffOf(back, DS)).toEqual([]);
  });

  it("an MTP layer (DeepSeek's release names, model.layers.<L>.) goes to mtp.layers.0 and back byte for byte", async () => {
    const { synth } = await import('./convert-helpers.js');
    const src = await openStore(DS);
    const shapes: Record<string, number[]> = {};
    for (const t of src.tensors.values()) {
      shapes[t.name] = t.shape;
      if (t.name.startsWith('model.layers.2.')) shapes[t.name.replace('model.layers.2.', 'model.layers.3.')] = t.shape;
    }
    await src.close();
    for (const n of ['enorm', 'hnorm', 'shared_head.norm']) shapes[`model.layers.3.${n}.weight`] = [48];
    shapes['model.layers.3.eh_proj.weight'] = [48, 96];
    const hf = join(tmp.dir, 'ds-mtp');
    await synth(hf, JSON.parse(readFileSync(join(DS, 'config.json'), 'utf8')), shapes);
    const o = join(tmp.dir, 'ds-mtp-mg');
    const r = runCli(['convert', hf, '--to', 'megatron', '--format', 'torch_dist', '-o', o]);
    expect(r.code, r.stderr).toBe(0);
    const { DcpStore } = await import('../src/store/torch/dcp.js');
    const s = await DcpStore.open(join(o, 'iter_0000001'));
    expect(s.info('mtp.layers.0.eh_proj.weight').shape).toEqual([48, 96]);
    expect(s.info('mtp.layers.0.final_layernorm.weight').shape).toEqual([48]);
    expect(s.info('mtp.layers.0.transformer_layer.mlp.experts.experts.linear_fc1.weight').shape).toEqual([16, 80, 48]);
    expect(s.info('mtp.layers.0.transformer_layer.self_attention.linear_q_up_proj.weight').shape).toEqual([64, 24]);
    expect(s.objects.has('mtp.layers.0.eh_proj._extra_state/shard_0_1')).toBe(true);
    expect(s.names().some((n) => n.startsWith('decoder.layers.3.'))).toBe(false);
    const args = ((await s.object('common_state/shard_0_1')) as PyDict[])[0]!.get('args') as PyObj;
    expect([args.field('num_layers'), args.field('mtp_num_layers')]).toEqual([3, 1]);
    await s.close();
    const back = join(tmp.dir, 'ds-mtp-hf');
    expect(runCli(['convert', o, '--to', 'hf', '-o', back]).code).toBe(0);
    expect(await diffOf(back, hf)).toEqual([]);
    // with num_nextn_predict_layers 0 the MTP layer has no place in the model: refused, not dropped
    const c = JSON.parse(readFileSync(join(hf, 'config.json'), 'utf8'));
    writeFileSync(join(hf, 'config.json'), JSON.stringify({ ...c, num_nextn_predict_layers: 0 }));
    const no = runCli(['convert', hf, '--to', 'megatron', '--format', 'torch_dist', '-o', join(tmp.dir, 'never-mtp')]);
    expect(no.code).not.toBe(0);
    expect(no.stderr).toMatch(/'model\.layers\.3\.[^']+' has no place in a Megatron deepseek_v3 model/);
  });

  // fixtures/torch/mcore_torch_dist_mla: written by Megatron-Core 0.20 itself (gen_mcore_mla.py: MLA with q LoRA,
  // layer 0 dense, 8 experts top-4 in 4 groups / 2, sigmoid + expert_bias, × 2.5, one shared expert)
  const MLA = join(TORCH, 'mcore_torch_dist_mla');
  it("Megatron-Core's own MLA checkpoint reads as its HF twin byte for byte and verifies against Megatron's block outputs", async () => {
    const back = join(tmp.dir, 'mla-hf');
    expect(runCli(['convert', MLA, '--to', 'hf', '-o', back]).code).toBe(0);
    expect(sha(readFileSync(join(back, 'model.safetensors')))).toBe(sha(readFileSync(join(MLA, 'model.safetensors'))));
    const v = runCli(['verify', MLA, '--reference', join(MLA, 'reference.safetensors'), '--json']);
    expect(v.code, v.stderr).toBe(0);
    expect(JSON.parse(v.stdout).layers.map((l: { kind: string; pass: boolean }) => [l.kind, l.pass])).toEqual([
      ['dense', true],
      ['moe', true],
      ['moe', true],
    ]);
    // with no config.json beside it, the one derived from Megatron's args says what the generator's HF config says
    await derivedMatches(MLA, 'mla-bare', MLA);
  });

  it('HF twin → torch_dist: the keys, global shapes, dtypes, bytes and objects Megatron-Core wrote for the MLA model', async () => {
    const o = join(tmp.dir, 'mla-ours');
    expect(runCli(['convert', join(MLA, 'model.safetensors'), '--to', 'megatron', '--format', 'torch_dist', '-o', o]).code).toBe(0);
    const { DcpStore } = await import('../src/store/torch/dcp.js');
    const ours = await DcpStore.open(join(o, 'iter_0000001'));
    const theirs = await DcpStore.open(join(MLA, 'iter_0000001'));
    expect(ours.names().sort()).toEqual(theirs.names().sort());
    for (const n of theirs.names()) {
      expect([ours.info(n).dtype, ours.info(n).shape], n).toEqual([theirs.info(n).dtype, theirs.info(n).shape]);
      expect(Buffer.compare(await ours.read(n), await theirs.read(n)), n).toBe(0);
    }
    expect([...ours.objects.keys()].sort()).toEqual([...theirs.objects.keys()].filter((k) => !k.startsWith('rng_state')).sort());
    await ours.close();
    await theirs.close();
  });

  it('refuses what Megatron would route differently, and the legacy format, each in one line', () => {
    const c = JSON.parse(readFileSync(join(DS, 'config.json'), 'utf8'));
    const bad = join(tmp.dir, 'ds-topk-group');
    mkdirSync(bad, { recursive: true });
    copyFileSync(join(DS, 'model.safetensors'), join(bad, 'model.safetensors'));
    writeFileSync(join(bad, 'config.json'), JSON.stringify({ ...c, topk_group: 1 }));
    const r = runCli(['convert', bad, '--to', 'megatron', '--format', 'torch_dist', '-o', join(tmp.dir, 'never1')]);
    expect(r.code).not.toBe(0);
    expect(r.stderr.trim().split('\n')).toHaveLength(1);
    expect(r.stderr).toMatch(/top 4 of each group, not HF's top 2/);
    writeFileSync(join(bad, 'config.json'), JSON.stringify({ ...c, norm_topk_prob: false }));
    expect(runCli(['convert', bad, '--to', 'megatron', '--format', 'torch_dist', '-o', join(tmp.dir, 'never2')]).stderr).toMatch(/norm_topk_prob false/);
    writeFileSync(join(bad, 'config.json'), JSON.stringify({ ...c, q_lora_rank: null }));
    expect(runCli(['convert', bad, '--to', 'megatron', '--format', 'torch_dist', '-o', join(tmp.dir, 'never4')]).stderr).toMatch(/q_lora_rank null/);
    const l = runCli(['shard', DS, '--ep', '2', '--to', 'megatron', '--format', 'torch', '-o', join(tmp.dir, 'never3')]);
    expect(l.code).not.toBe(0);
    expect(l.stderr).toMatch(/write deepseek_v3 as --format torch_dist/);
  });
});
