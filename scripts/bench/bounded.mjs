// npm run bench:bounded — quality and speed of the bounded KV-cache policies (StreamingLLM,
// LaCache, H2O, Cascading, SnapKV) at one equal budget, with full attention as the reference, on
// the embedded models: retrieval accuracy against the distance of the asked fact, perplexity on a
// long held-out stream, and decode speed.
//
//   npm run bench:bounded -- [--model models,models/deep] [--budget 128] [--count 50]
//        [--distances 0.25,0.5,0.75,1,2,4,8] [--prefill-chunks capacity,16]
//        [--policies full,streaming,lacache,h2o,cascading,snapkv]
//        [--span N] [--stream-tokens 8000] [--stream-docs 5] [--ppl-chunk 1]
//        [--speed-prompt 100] [--speed-tokens 400] [--speed-rounds 7]
//        [--parts retrieval,ppl,speed] [--device cpu] [--start 0] [--threads N]
//        [--json bench/bounded.json] [--svg bench/bounded.svg] [--readme [README.md]]
//        [--render bench/bounded.json]   (chart and tables again from a report, nothing measured)
//
// Policies, all at budget B (default 128 tokens a layer):
//   streaming  policies.streaming({ sinks: 4, window: B - 4 })
//   lacache    policies.lacache({ budget: B, span, overlap: 0 }) (sinks 4, the default); span
//              must be below the layer count: 2 on a model of 3 or more layers, 1 on the 2-layer
//              model (--span overrides). Between steps a layer holds up to B + floor(R / 2)
//              (R: the slots a ladder block frees; 129 on the 6-layer model, 128 on the 2-layer).
//   h2o        policies.h2o({ budget: B, recent: B / 2 })
//   cascading  policies.cascading({ sinks: 4, cascades: 4, window: floor((B - 4) / 4), stride:
//              sinks + 4 * window }), beta and headReduction the defaults (0.9999, 'max'): a
//              capacity of sinks + cascades * window = B slots per layer and KV head (124 / 4 =
//              31 a cascade at B = 128). Sinks 4 as for streaming and LaCache (the authors use
//              64, far too many of a 128-token budget); 4 cascades as in the authors' PG19 and
//              BookSum scripts, so the last cascade keeps one token in 8 and reaches back about
//              31 * (1 + 2 + 4 + 8) = 465 tokens. The stride (prompt chunk) is the capacity, as
//              the other policies' prompts go in chunks of their capacity (the authors' default
//              is 1024, with caches of thousands of slots). Between steps it holds the B slots
//              and the newest token, which is inserted just before the next step (B + 1).
//   snapkv     policies.snapkv({ budget: B - 32, window: 32, kernel: 5 }) (the authors' window
//              and kernel; the window is B / 4 below B = 128): it compresses to budget tokens
//              each time the window's 32 newer tokens have come in, so a layer holds up to
//              budget + window = B tokens, like the others.
//   full       full attention: the reference, only where prompt and answer fit the model's
//              context T (512 positions); `full-unbounded` (not run by default) goes past T.
//   Each row reports the most tokens a layer held between steps (measured on the stream).
//
// (1) Retrieval against distance. Question i is held-out seed i (from --start), generated once
// with its answer document first and enough documents to pad the longest distance. The prompt
// is [BOS + instruction; the answer document; distractor documents of the same example; the
// question]: the distractors after the answer document are chosen (whole documents, the last one
// cut after a sentence; at short distances the answer document itself is cut after a sentence
// following the fact) so that the fact's sentence starts d tokens before the question, d as
// close as the sentence grain allows to each multiple of B in --distances (the mean and range
// of the real d are reported). Every policy answers the same prompts through
// model.generate(prompt, { policy, maxTokens: 16, temperature: 0 }), scored by exactMatch.
// How the prompt is fed matters: by default (`capacity`) a bounded policy's prompt goes in
// chunks of its capacity, each chunk attending to what the layers kept and to itself, so the
// last chunk (up to B tokens) sees itself whole whatever the policy. The engine does this itself
// for streaming, LaCache and H2O; for cascading the chunk is its stride, set to its capacity
// (above); SnapKV takes chunks as large as the model's prefillChunk, so for it the model is
// loaded with prefillChunk = budget + window (B). With `16` the model is loaded with
// prefillChunk 16, closer to reading the prompt one token at a time (cascading's stride and
// SnapKV's compressions then go 16 tokens at a time too). Both are measured by default
// (--prefill-chunks).
//
// (2) Perplexity on a long held-out stream: held-out examples (seeds from --start + 100000,
// --stream-docs documents each so that every example fits T alone), each [BOS prefix documents
// question answer </s>], concatenated up to --stream-tokens tokens. Each bounded policy reads the
// stream through one sequence, --ppl-chunk tokens per append (default 1: token by token, exactly
// the policies' decoding semantics; larger chunks attend within the chunk causally), with
// logits 'all'; the reference `full` reads each example alone with full attention (the stream
// as a whole is past T). Scored: every token predicted from the one before it, except each
// example's BOS (the reference cannot predict it); perplexity = exp(mean NLL) over those
// tokens, and over the answer's value tokens only (without </s>), with the share of answers
// whose every value token is the argmax (teacher-forced exact match).
//
// (3) Decode speed: after the first --speed-prompt tokens of a held-out prompt, each policy
// generates --speed-tokens tokens on one sequence, full attention included (100 + 400 fits T).
// The end-of-sequence token always ends a generation and these models write one after every
// answer, so decoding samples (temperature 1, seeded) and a call that ends early is followed by a
// BOS and another call until the count is reached (see decodeRun); decode tokens/s sums the
// engine's own decode timings of the calls (each call's tokens after the first). The policies
// run one after another in a rotated order each round; reported are medians over rounds of
// tokens/s and of the per-round ratio to full, and the wall time per token including restarts.
//
// Writes JSON (every point, the machine, the command), an SVG chart of accuracy against
// distance (one panel per model, one line per policy and prefill chunking), prints markdown
// tables, and with --readme replaces the block between the `bounded-table` markers there.
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { cpus, loadavg } from 'node:os';
import { dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

import { encodeExample, task, Tokenizer } from '../train/common.mjs';
import { flag, opt, positiveInt, threadsOption } from './args.mjs';
import { writeReadmeBlock } from './readme-block.mjs';

threadsOption(); // --threads N: before the addon loads (below)
const require = createRequire(import.meta.url);
const { loadModel, buildInfo, policies } = require('../../dist/cjs/index.js');
const { LaCachePlanner, resolveLaCache } = require('../../dist/cjs/policies/lacache.js');
const root = resolve(dirname(fileURLToPath(import.meta.url)), '../..');

const MAX_NEW_TOKENS = 16;
const embedded = [join(root, 'models'), join(root, 'models/deep')].filter((d) => existsSync(join(d, 'config.json')));
const modelDirs = String(opt('--model', embedded.join(','))).split(',').map((d) => resolve(d));
const budget = positiveInt('--budget', 128);
const count = positiveInt('--count', 50);
const distances = String(opt('--distances', '0.25,0.5,0.75,1,2,4,8')).split(',').map((s) => {
  const v = Number(s);
  if (!(v > 0)) throw new Error(`--distances: expected positive multiples of the budget but received ${s}`);
  return v;
});
const prefillChunks = String(opt('--prefill-chunks', 'capacity,16')).split(',').map((s) => {
  if (s === 'capacity') return s;
  const v = Number(s);
  if (!Number.isInteger(v) || v < 1) throw new Error(`--prefill-chunks: expected 'capacity' or positive integers but received ${s}`);
  return v;
});
const KNOWN = ['full', 'streaming', 'lacache', 'h2o', 'cascading', 'snapkv', 'full-unbounded'];
const policyNames = String(opt('--policies', 'full,streaming,lacache,h2o,cascading,snapkv')).split(',');
for (const p of policyNames) if (!KNOWN.includes(p)) throw new Error(`--policies: unknown policy ${p} (known: ${KNOWN.join(', ')})`);
const spanOverride = opt('--span', undefined);
const streamTokens = positiveInt('--stream-tokens', 8000);
const streamDocs = positiveInt('--stream-docs', 5);
const pplChunk = positiveInt('--ppl-chunk', 1);
const speedPrompt = positiveInt('--speed-prompt', 100);
const speedTokens = positiveInt('--speed-tokens', 400);
const speedRounds = positiveInt('--speed-rounds', 7);
const parts = new Set(String(opt('--parts', 'retrieval,ppl,speed')).split(','));
for (const p of parts) if (!['retrieval', 'ppl', 'speed'].includes(p)) throw new Error(`--parts: unknown part ${p}`);
const device = opt('--device', 'cpu');
const start = Number(opt('--start', 0));
const jsonPath = resolve(opt('--json', join(root, 'bench/bounded.json')));
const svgPath = resolve(opt('--svg', join(root, 'bench/bounded.svg')));
const readmeArg = opt('--readme', undefined);
const readmePath = flag('--readme') ? resolve(readmeArg && !readmeArg.startsWith('--') ? readmeArg : join(root, 'README.md')) : null;

const models = modelDirs.map((dir) => {
  const config = JSON.parse(readFileSync(join(dir, 'config.json'), 'utf8'));
  const rel = relative(root, dir);
  const label = rel && !rel.startsWith('..') ? rel : dir;
  return { dir, label, contextLength: config.max_position_embeddings, layers: config.num_hidden_layers };
});
const tok = await Tokenizer.load(modelDirs[0]);
for (const m of models.slice(1)) {
  if (readFileSync(join(m.dir, 'tokenizer.json'), 'utf8') !== readFileSync(join(modelDirs[0], 'tokenizer.json'), 'utf8')) throw new Error(`--model: ${m.dir} has another tokenizer than ${modelDirs[0]}`);
}

// Cascading at budget B: 4 sinks and 4 cascades sharing the rest; the stride is the capacity.
const CASCADES = 4;
const cascadeWindow = Math.floor((budget - 4) / CASCADES);
const cascadingOptions = { sinks: 4, cascades: CASCADES, window: cascadeWindow, stride: 4 + CASCADES * cascadeWindow };
// SnapKV at budget B: the authors' 32-token observation window (less on a small budget), the rest selected.
const snapWindow = Math.min(32, budget >> 2);
const snapkvOptions = { budget: budget - snapWindow, window: snapWindow, kernel: 5 };

/**
 * The policies of one model at budget B: name -> { policy, label, held (most tokens a layer
 * holds between steps), loadChunk (the model's prefillChunk for the 'capacity' prompt feeding,
 * where the engine does not chunk the policy's prompt by its capacity itself) }.
 */
function policySet(m) {
  const span = spanOverride !== undefined ? Number(spanOverride) : Math.min(2, m.layers - 1);
  const lacache = { name: 'lacache', budget, span, overlap: 0 };
  const c = cascadingOptions;
  const sk = snapkvOptions;
  const all = {
    full: { policy: policies.full(), label: 'full attention (reference; only where it fits T)', held: null },
    'full-unbounded': { policy: policies.full(), label: 'full attention past T', held: null },
    streaming: { policy: policies.streaming({ sinks: 4, window: budget - 4 }), label: `StreamingLLM (sinks 4, window ${budget - 4})`, held: budget - 1 },
    lacache: { policy: policies.lacache(lacache), label: `LaCache (budget ${budget}, span ${span}, overlap 0, sinks 4)`, held: new LaCachePlanner(resolveLaCache(lacache), m.layers).maxLength },
    h2o: { policy: policies.h2o({ budget, recent: budget >> 1 }), label: `H2O (budget ${budget}, recent ${budget >> 1})`, held: budget - 1 },
    cascading: {
      policy: policies.cascading(c),
      label: `Cascading (sinks ${c.sinks}, ${c.cascades} cascades of ${c.window}, stride ${c.stride}, beta 0.9999, max over heads)`,
      held: c.sinks + c.cascades * c.window,
    },
    snapkv: {
      policy: policies.snapkv(sk),
      label: `SnapKV (budget ${sk.budget}, window ${sk.window}, kernel ${sk.kernel})`,
      held: sk.budget + sk.window,
      loadChunk: sk.budget + sk.window,
    },
  };
  return Object.fromEntries(policyNames.map((n) => [n, all[n]]));
}

const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length ? (s[(s.length - 1) >> 1] + s[s.length >> 1]) / 2 : NaN;
};
const mean = (xs) => xs.reduce((a, b) => a + b, 0) / xs.length;
const chunkLabel = (c) => (c === 'capacity' ? 'capacity chunks' : `${c}-token chunks`);

// ---------------------------------------------------------------------------------------------
// (1) Retrieval prompts.

/** "Doc N. s1 s2 ...\n" -> { header: "Doc N.", sentences }. */
function splitDoc(text) {
  const pieces = text.replace(/\n$/, '').split(/(?<=\.) (?=\S)/);
  return { header: pieces[0], sentences: pieces.slice(1) };
}
const docText = (d, n) => `${d.header} ${d.sentences.slice(0, n).join(' ')}\n`;
const enc = (text) => [...tok.encode(text, { addSpecialTokens: false })];

let prefixMismatches = 0;
/** One question's prompts, one per distance: the same example, padded to each distance. */
function retrievalPrompts(i) {
  const maxD = Math.max(...distances) * budget;
  const numDocs = Math.ceil(maxD / 45) + 3;
  const ex = task.generateExample(task.heldOutSeed(start + i), { numDocs, answerPosition: 0 });
  const prefix = [...tok.encode(ex.prefix)];
  const question = enc(ex.question);
  const docs = ex.documents.map(splitDoc);
  const ans = docs[0];
  const fact = ans.sentences.findIndex((s) => s === `${ex.lead} ${ex.answer}.`);
  if (fact < 0) throw new Error(`seed ${ex.seed}: the fact sentence was not found in the answer document`);
  // Tokens of the answer document before the fact's sentence (its first token is " <Name>").
  const before = enc(`${ans.header}${fact > 0 ? ' ' : ''}${ans.sentences.slice(0, fact).join(' ')}`);
  const answerDoc = (n) => enc(docText(ans, n));
  {
    const whole = answerDoc(ans.sentences.length);
    if (!before.every((t, k) => whole[k] === t)) prefixMismatches++;
  }
  // Distractor k (1-based) with n sentences, token lengths cached.
  const cache = new Map();
  const distractor = (k, n) => {
    const key = `${k}:${n}`;
    if (!cache.has(key)) cache.set(key, enc(docText(docs[k], n)));
    return cache.get(key);
  };
  return distances.map((mult) => {
    const D = Math.round(mult * budget);
    const parts = [];
    const fullAnswer = answerDoc(ans.sentences.length);
    if (fullAnswer.length - before.length >= D) {
      // The answer document cut after a sentence from the fact's on.
      let best = null;
      for (let n = fact + 1; n <= ans.sentences.length; n++) {
        const t = answerDoc(n);
        if (!best || Math.abs(t.length - before.length - D) < Math.abs(best.length - before.length - D)) best = t;
      }
      parts.push(best);
    } else {
      parts.push(fullAnswer);
      let sum = fullAnswer.length - before.length;
      for (let k = 1; ; k++) {
        if (k >= docs.length) throw new Error(`seed ${ex.seed}: ran out of distractor documents for distance ${D}`);
        const whole = distractor(k, docs[k].sentences.length);
        if (sum + whole.length <= D) {
          parts.push(whole);
          sum += whole.length;
          continue;
        }
        let best = null; // null: no part of this document
        let err = D - sum;
        for (let n = 1; n <= docs[k].sentences.length; n++) {
          const t = distractor(k, n);
          if (Math.abs(sum + t.length - D) < err) [best, err] = [t, Math.abs(sum + t.length - D)];
        }
        if (best) parts.push(best);
        break;
      }
    }
    const body = parts.flat();
    const tokens = [...prefix, ...body, ...question];
    const factAt = prefix.length + before.length;
    const distance = prefix.length + body.length - factAt;
    return { mult, target: D, tokens, distance, answer: ex.answer, seed: ex.seed };
  });
}

/** Retrieval accuracy of the policies `names` at every distance, for one model and one prefill chunking. */
async function retrieval(m, model, prompts, chunk, names) {
  const set = policySet(m);
  const rows = [];
  for (const [name, p] of Object.entries(set).filter(([n]) => names.includes(n))) {
    for (let di = 0; di < distances.length; di++) {
      let correct = 0;
      let run = 0;
      const ttft = [];
      for (const ps of prompts) {
        const pr = ps[di];
        if (name === 'full' && pr.tokens.length + MAX_NEW_TOKENS > m.contextLength) continue;
        const r = await model.generate(pr.tokens, { policy: p.policy, maxTokens: MAX_NEW_TOKENS, temperature: 0 }).result;
        run++;
        if (task.exactMatch(r.text, pr.answer)) correct++;
        ttft.push(r.timings.timeToFirstTokenMs);
      }
      const ds = prompts.map((ps) => ps[di].distance);
      const row = {
        model: m.label,
        policy: name,
        prefillChunk: chunk,
        multiple: distances[di],
        targetDistance: Math.round(distances[di] * budget),
        meanDistance: +mean(ds).toFixed(1),
        minDistance: Math.min(...ds),
        maxDistance: Math.max(...ds),
        meanPromptTokens: +mean(prompts.map((ps) => ps[di].tokens.length)).toFixed(1),
        count: prompts.length,
        run,
        correct,
        accuracy: run ? correct / run : null,
        ttftMsMedian: run ? +median(ttft).toFixed(2) : null,
      };
      rows.push(row);
      console.log(JSON.stringify(row));
    }
  }
  return rows;
}

// ---------------------------------------------------------------------------------------------
// (2) Perplexity stream.

function buildStream() {
  const ids = [];
  const examples = []; // { start, end, answer: [a, b) value tokens }
  for (let i = 0; ; i++) {
    const ex = task.generateExample(task.heldOutSeed(start + 100000 + i), { numDocs: streamDocs });
    const e = encodeExample(tok, ex);
    if (ids.length + e.ids.length > streamTokens && examples.length > 0) break;
    const [a, b] = e.answers[0];
    examples.push({ start: ids.length, end: ids.length + e.ids.length, answer: [ids.length + a, ids.length + b - 1] }); // without </s>
    ids.push(...e.ids);
  }
  return { ids, examples };
}

/** -log p(target) from one row of logits, and whether target is the argmax. */
function nll(logits, offset, vocab, target) {
  let max = -Infinity;
  let arg = 0;
  for (let v = 0; v < vocab; v++) {
    const x = logits[offset + v];
    if (x > max) [max, arg] = [x, v];
  }
  let sum = 0;
  for (let v = 0; v < vocab; v++) sum += Math.exp(logits[offset + v] - max);
  return { nll: Math.log(sum) + max - logits[offset + target], top: arg === target };
}

/** Scores every stream token but the examples' BOS; `rowOf(t)` gives [logits, offset] of the row that predicts token t. */
function score(stream, vocab, rowOf) {
  const isStart = new Set(stream.examples.map((e) => e.start));
  let all = 0;
  let n = 0;
  let ans = 0;
  let na = 0;
  let exact = 0;
  for (const e of stream.examples) {
    let ok = true;
    for (let t = e.start + 1; t < e.end; t++) {
      if (isStart.has(t)) continue;
      const [logits, off] = rowOf(t);
      const s = nll(logits, off, vocab, stream.ids[t]);
      all += s.nll;
      n++;
      if (t >= e.answer[0] && t < e.answer[1]) {
        ans += s.nll;
        na++;
        ok &&= s.top;
      }
    }
    if (ok) exact++;
  }
  return { tokens: n, perplexity: Math.exp(all / n), meanNll: all / n, answerTokens: na, answerPerplexity: Math.exp(ans / na), answerExactMatch: exact / stream.examples.length };
}

async function perplexity(m, model, stream) {
  const vocab = model.config.vocabSize;
  const rows = [];
  for (const [name, p] of Object.entries(policySet(m))) {
    if (name === 'full-unbounded') continue;
    const t0 = performance.now();
    let res;
    let held = null;
    if (name === 'full') {
      // Each example alone, full attention: row t - e.start - 1 of its logits predicts token t.
      const per = new Map();
      for (const e of stream.examples) per.set(e.start, await model.logits(stream.ids.slice(e.start, e.end), { all: true }));
      const exOf = (t) => stream.examples.find((e) => t > e.start && t < e.end);
      res = score(stream, vocab, (t) => {
        const e = exOf(t);
        return [per.get(e.start), (t - e.start - 1) * vocab];
      });
    } else {
      // One sequence reads the whole stream, pplChunk tokens an append; row t - 1 predicts t.
      const rows = new Array(stream.ids.length);
      held = 0;
      const seq = model.sequence({ policy: p.policy });
      try {
        for (let a = 0; a < stream.ids.length; a += pplChunk) {
          const chunk = stream.ids.slice(a, a + pplChunk);
          const out = await seq.append(chunk, { logits: 'all' });
          for (let j = 0; j < chunk.length; j++) rows[a + j] = out.subarray(j * vocab, (j + 1) * vocab);
          if ((a / pplChunk) % 61 === 0 || a + pplChunk >= stream.ids.length) for (const l of seq.layout().layers) held = Math.max(held, l.source.length);
        }
      } finally {
        seq.dispose();
      }
      res = score(stream, vocab, (t) => [rows[t - 1], 0]);
    }
    const row = {
      model: m.label,
      policy: name,
      streamTokens: stream.ids.length,
      examples: stream.examples.length,
      chunk: name === 'full' ? 'each example alone' : pplChunk,
      heldMax: held,
      ...Object.fromEntries(Object.entries(res).map(([k, v]) => [k, Number.isInteger(v) ? v : +v.toFixed(4)])),
      seconds: +((performance.now() - t0) / 1000).toFixed(2),
    };
    rows.push(row);
    console.log(JSON.stringify(row));
  }
  return rows;
}

// ---------------------------------------------------------------------------------------------
// (3) Decode speed.

/**
 * One decode run: the prompt appended to a sequence, then --speed-tokens tokens generated. The
 * model's end-of-sequence token always ends a generation (stopTokens cannot turn it off) and the
 * embedded models write one after each answer (then nothing else is likely), so when a call ends
 * early the run appends a BOS (a new example starts, as in training) and generates on; each call
 * samples (temperature 1, its own seed). Every call's decode steps (its tokens after the first)
 * and decode time, from the engine's own timings, are summed.
 */
async function decodeRun(model, policy, prompt, seedBase, limit) {
  const seq = model.sequence({ policy });
  try {
    await seq.append(prompt);
    let generated = 0;
    let steps = 0;
    let ms = 0;
    let calls = 0;
    const t = performance.now();
    for (let seed = seedBase; generated < speedTokens; seed++) {
      if (++calls > 1000) throw new Error('speed: the model ends every generation at once');
      // Full attention stops at the model's context (the BOS tokens take room too).
      const room = Math.min(speedTokens - generated, limit - seq.tokenCount - 1);
      if (room < 1) break;
      const r = await seq.generate({ maxTokens: room, temperature: 1, seed, stopTokens: [] }).result;
      generated += r.completionTokens;
      // After an answer the model is sure of </s>: a BOS starts a new example (not timed).
      if (generated < speedTokens) await seq.append([tok.bosTokenId]);
      if (r.completionTokens > 1) {
        steps += r.completionTokens - 1;
        ms += ((r.completionTokens - 1) * 1000) / r.timings.decodeTokensPerSecond;
      }
    }
    return { tps: (steps * 1000) / ms, calls, generated, wallMsPerToken: (performance.now() - t) / generated, held: Math.max(...seq.layout().layers.map((l) => l.source.length)) };
  } finally {
    seq.dispose();
  }
}

async function speed(m, model, prompt) {
  const set = Object.entries(policySet(m)).filter(([n]) => n !== 'full-unbounded');
  if (speedPrompt + speedTokens > m.contextLength) console.warn(`speed: ${speedPrompt} + ${speedTokens} tokens are past T = ${m.contextLength}; full attention will refuse`);
  const runs = Object.fromEntries(set.map(([n]) => [n, []]));
  const ratios = Object.fromEntries(set.map(([n]) => [n, []]));
  // One warm-up run each, not counted.
  for (const [name, p] of set) await decodeRun(model, p.policy, prompt, 1, name === 'full' ? m.contextLength : Infinity);
  for (let r = 0; r < speedRounds; r++) {
    const order = set.map((_, k) => set[(k + r) % set.length]);
    const round = {};
    for (const [name, p] of order) {
      const res = await decodeRun(model, p.policy, prompt, 1000 * (r + 1), name === 'full' ? m.contextLength : Infinity);
      round[name] = res.tps;
      runs[name].push(res);
    }
    if (round.full) for (const [name] of set) ratios[name].push(round[name] / round.full);
  }
  return set.map(([name]) => {
    const t = median(runs[name].map((x) => x.tps));
    const row = {
      model: m.label,
      policy: name,
      promptTokens: prompt.length,
      generatedTokens: speedTokens,
      generatedTokensMin: Math.min(...runs[name].map((x) => x.generated)),
      rounds: speedRounds,
      decodeTokensPerSecond: +t.toFixed(1),
      msPerToken: +(1000 / t).toFixed(3),
      ratioToFull: ratios[name].length ? +median(ratios[name]).toFixed(3) : null,
      wallMsPerTokenMedian: +median(runs[name].map((x) => x.wallMsPerToken)).toFixed(3),
      callsPerRunMedian: median(runs[name].map((x) => x.calls)),
      heldAtEnd: runs[name][0].held,
      tokensPerSecondRuns: runs[name].map((x) => +x.tps.toFixed(1)),
    };
    console.log(JSON.stringify(row));
    return row;
  });
}

// ---------------------------------------------------------------------------------------------

/** Runs every part asked for and returns the report. */
async function measure() {
  const t0 = performance.now();
  const load0 = loadavg()[0];
  const prompts = parts.has('retrieval') ? Array.from({ length: count }, (_, i) => retrievalPrompts(i)) : [];
  if (prefixMismatches) console.warn(`retrieval: ${prefixMismatches} answer documents tokenized differently before the fact (distances off by a token or so)`);
  const stream = parts.has('ppl') ? buildStream() : null;
  const speedIds = (() => {
    const ex = task.generateExample(task.heldOutSeed(start + 200000), { numDocs: 4 });
    return [...tok.encode(task.formatPrompt(ex))].slice(0, speedPrompt);
  })();
  const longest = Math.max(0, ...prompts.flatMap((ps) => ps.map((p) => p.tokens.length)));

  const results = { retrieval: [], perplexity: [], speed: [] };
  const info = [];
  for (const m of models) {
    const set = policySet(m);
    info.push({ ...m, policies: Object.fromEntries(Object.entries(set).map(([n, p]) => [n, { policy: p.policy, label: p.label, heldBetweenSteps: p.held, ...(p.loadChunk ? { capacityPrefillChunk: p.loadChunk } : {}) }])) });
    const unbounded = policyNames.includes('full-unbounded') ? { maxSequenceTokens: longest + MAX_NEW_TOKENS, kvCacheTokens: Math.ceil((longest + MAX_NEW_TOKENS) / 16) * 16 + 512 } : {};
    if (parts.has('retrieval')) {
      for (const chunk of prefillChunks) {
        // The policies by the prefillChunk their model is loaded with (none: the default).
        const groups = new Map();
        for (const [name, p] of Object.entries(set)) {
          const load = chunk === 'capacity' ? p.loadChunk : chunk;
          groups.set(load, [...(groups.get(load) ?? []), name]);
        }
        const rows = [];
        for (const [load, names] of groups) {
          const model = await loadModel(m.dir, { device, ...unbounded, ...(load === undefined ? {} : { prefillChunk: load }) });
          try {
            rows.push(...(await retrieval(m, model, prompts, chunk, names)));
          } finally {
            model.dispose();
          }
        }
        const order = Object.keys(set);
        results.retrieval.push(...rows.sort((a, b) => order.indexOf(a.policy) - order.indexOf(b.policy)));
      }
    }
    if (parts.has('ppl') || parts.has('speed')) {
      const model = await loadModel(m.dir, { device });
      try {
        if (parts.has('ppl')) results.perplexity.push(...(await perplexity(m, model, stream)));
        if (parts.has('speed')) results.speed.push(...(await speed(m, model, speedIds)));
      } finally {
        model.dispose();
      }
    }
  }
  const seconds = (performance.now() - t0) / 1000;

  const bi = buildInfo();
  return {
    benchmark: 'bounded',
    command: ['npm run bench:bounded', ...(process.argv.length > 2 ? ['--', ...process.argv.slice(2)] : [])].join(' '),
    date: new Date().toISOString(),
    device,
    machine: { cpus: cpus().length, cpuModel: cpus()[0]?.model, threads: bi.cpuThreads, backend: bi.backend, loadAverageAtStart: +load0.toFixed(2) },
    budget,
    models: info,
    retrieval: { distances, prefillChunks, count, maxNewTokens: MAX_NEW_TOKENS, heldOutStart: start, answerDocument: 'first', prefixMismatches },
    stream: stream ? { tokens: stream.ids.length, examples: stream.examples.length, docsPerExample: streamDocs, chunk: pplChunk, heldOutStart: start + 100000 } : null,
    speed: { promptTokens: speedIds.length, generatedTokens: speedTokens, rounds: speedRounds, sampling: 'temperature 1, seeded; BOS appended after an end of sequence, then generation goes on' },
    seconds: +seconds.toFixed(1),
    results,
  };
}

// --render FILE: the chart and tables again from a report, measuring nothing.
const renderFrom = opt('--render', undefined);
const report = renderFrom ? JSON.parse(readFileSync(resolve(renderFrom), 'utf8')) : await measure();
const { results } = report;
if (!renderFrom) {
  mkdirSync(dirname(jsonPath), { recursive: true });
  writeFileSync(jsonPath, `${JSON.stringify(report, null, 2)}\n`);
}
if (results.retrieval.length) writeFileSync(svgPath, chart(report));
const table = boundedTable(report);
console.log(`\n${table}\n`);
if (readmePath) updateReadme(readmePath, table);
console.log(JSON.stringify({ json: jsonPath, svg: results.retrieval.length ? svgPath : null, readme: readmePath, seconds: report.seconds }));

// ---------------------------------------------------------------------------------------------

function escapeXml(s) {
  return String(s).replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');
}

/** Accuracy against the fact's distance (log scale), one panel per model, one line per policy and chunking. */
function chart(rep) {
  const panels = rep.models;
  const PW = 520;
  const PH = 330;
  const W = PW * panels.length;
  const H = PH + 24 + 18 * Math.max(Object.keys(rep.models[0].policies).length, rep.retrieval.prefillChunks.length);
  const m = { l: 56, r: 16, t: 52, b: 56 };
  const colors = { full: '#333333', 'full-unbounded': '#999999', streaming: '#1f77b4', lacache: '#d62728', h2o: '#2ca02c', cascading: '#9467bd', snapkv: '#ff7f0e' };
  const dashes = ['', '6 4', '2 3', '8 3 2 3'];
  const chunks = rep.retrieval.prefillChunks;
  const ds = rep.retrieval.distances.map((d) => d * rep.budget);
  const lo = Math.log2(Math.min(...ds) / 1.5);
  const hi = Math.log2(Math.max(...ds) * 1.5);
  const out = [];
  out.push(`<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="sans-serif" font-size="12">`);
  out.push(`<rect width="${W}" height="${H}" fill="white"/>`);
  out.push(`<text x="${W / 2}" y="20" text-anchor="middle" font-size="14">Retrieval at equal KV budget (${rep.budget} tokens a layer): exact match vs distance of the fact (${rep.retrieval.count} questions a point)</text>`);
  panels.forEach((pm, pi) => {
    const x0 = pi * PW;
    const X = (d) => x0 + m.l + ((Math.log2(d) - lo) / (hi - lo)) * (PW - m.l - m.r);
    const Y = (a) => PH - m.b - a * (PH - m.t - m.b);
    out.push(`<text x="${x0 + PW / 2}" y="${m.t - 14}" text-anchor="middle" font-size="13">${escapeXml(pm.label)} (${pm.layers} layers, T = ${pm.contextLength})</text>`);
    for (let a = 0; a <= 1.0001; a += 0.2) {
      out.push(`<line x1="${x0 + m.l}" x2="${x0 + PW - m.r}" y1="${Y(a)}" y2="${Y(a)}" stroke="#ddd"/>`);
      out.push(`<text x="${x0 + m.l - 6}" y="${Y(a) + 4}" text-anchor="end">${Math.round(a * 100)}%</text>`);
    }
    for (const d of ds) out.push(`<text x="${X(d)}" y="${PH - m.b + 16}" text-anchor="middle">${d}</text>`);
    out.push(`<line x1="${x0 + m.l}" x2="${x0 + PW - m.r}" y1="${PH - m.b}" y2="${PH - m.b}" stroke="#333"/>`);
    out.push(`<line x1="${x0 + m.l}" x2="${x0 + m.l}" y1="${m.t}" y2="${PH - m.b}" stroke="#333"/>`);
    out.push(`<text x="${x0 + (m.l + PW - m.r) / 2}" y="${PH - m.b + 34}" text-anchor="middle">tokens from the fact to the question (log scale)</text>`);
    const bx = X(rep.budget);
    out.push(`<line x1="${bx}" x2="${bx}" y1="${m.t}" y2="${PH - m.b}" stroke="#888" stroke-dasharray="5 4"/>`);
    out.push(`<text x="${bx + 4}" y="${m.t + 30}" fill="#555">budget ${rep.budget}</text>`);
    for (const [name] of Object.entries(pm.policies)) {
      chunks.forEach((chunk, ci) => {
        const rows = rep.results.retrieval.filter((r) => r.model === pm.label && r.policy === name && r.prefillChunk === chunk && r.accuracy !== null);
        if (!rows.length) return;
        const c = colors[name] ?? '#8c564b';
        const pts = rows.map((r) => `${X(r.meanDistance).toFixed(1)},${Y(r.accuracy).toFixed(1)}`).join(' ');
        out.push(`<polyline fill="none" stroke="${c}" stroke-width="2" stroke-dasharray="${dashes[ci % dashes.length]}" points="${pts}"/>`);
        for (const r of rows) out.push(`<circle cx="${X(r.meanDistance).toFixed(1)}" cy="${Y(r.accuracy).toFixed(1)}" r="3" fill="${c}"/>`);
      });
    }
  });
  // Legend: colors by policy, dashes by prefill chunking.
  const names = Object.keys(rep.models[0].policies);
  const ly = PH + 10;
  names.forEach((name, i) => {
    const c = colors[name] ?? '#8c564b';
    const y = ly + i * 18;
    out.push(`<line x1="20" x2="44" y1="${y}" y2="${y}" stroke="${c}" stroke-width="3"/>`);
    const labels = [...new Set(rep.models.map((pm) => pm.policies[name]?.label))].join('; ');
    out.push(`<text x="50" y="${y + 4}">${escapeXml(name)}: ${escapeXml(labels)}</text>`);
  });
  chunks.forEach((chunk, ci) => {
    const y = ly + ci * 18;
    out.push(`<line x1="${W - 240}" x2="${W - 200}" y1="${y}" y2="${y}" stroke="#555" stroke-width="2" stroke-dasharray="${dashes[ci % dashes.length]}"/>`);
    out.push(`<text x="${W - 194}" y="${y + 4}">prompt in ${escapeXml(chunkLabel(chunk))}</text>`);
  });
  out.push('</svg>');
  return `${out.join('\n')}\n`;
}

/** Markdown: retrieval accuracy, perplexity, decode speed. */
function boundedTable(rep) {
  const lines = [];
  const many = rep.models.length > 1;
  const label = (model, name) => {
    const pm = rep.models.find((x) => x.label === model);
    return many ? `${model} (${pm.layers} layers), ${name}` : name;
  };
  const R = rep.results.retrieval;
  if (R.length) {
    const mults = rep.retrieval.distances;
    const dist = (k) => {
      const rows = R.filter((r) => r.multiple === k);
      return `${k}xB: ~${Math.round(mean(rows.map((r) => r.meanDistance)))} tok (${Math.min(...rows.map((r) => r.minDistance))}-${Math.max(...rows.map((r) => r.maxDistance))}), prompt ~${Math.round(mean(rows.map((r) => r.meanPromptTokens)))}`;
    };
    lines.push(`Retrieval: exact match on ${rep.retrieval.count} held-out questions a point, the asked fact's sentence starting d tokens before the question (B = ${rep.budget} tokens a layer for every bounded policy; greedy, ${rep.retrieval.maxNewTokens} new tokens; ${rep.device}). \`full\` only where prompt and answer fit T; "past T" where they do not.`);
    lines.push('');
    lines.push(`| model, policy | prompt fed in | ${mults.map(dist).join(' | ')} |`);
    lines.push(`| --- | --- | ${mults.map(() => '---:').join(' | ')} |`);
    const keys = [...new Set(R.map((r) => `${r.model}\u0000${r.policy}\u0000${r.prefillChunk}`))];
    for (const key of keys) {
      const [model, name, chunkS] = key.split('\u0000');
      const chunk = chunkS === 'capacity' ? 'capacity' : Number(chunkS);
      if (name === 'full' && chunk !== rep.retrieval.prefillChunks[0]) continue; // exact: chunking does not change it
      const cells = mults.map((k) => {
        const r = R.find((x) => x.model === model && x.policy === name && x.prefillChunk === chunk && x.multiple === k);
        if (!r || r.accuracy === null) return 'past T';
        return `${(r.accuracy * 100).toFixed(0)}%${r.run < r.count ? ` (${r.run} fit)` : ''}`;
      });
      lines.push(`| ${label(model, name)} | ${name.startsWith('full') ? 'any' : chunkLabel(chunk)} | ${cells.join(' | ')} |`);
    }
    lines.push('');
  }
  const P = rep.results.perplexity;
  if (P.length) {
    lines.push(`Perplexity on a held-out stream of ${rep.stream.tokens} tokens (${rep.stream.examples} examples of ${rep.stream.docsPerExample} documents, prompt + answer each), read ${rep.stream.chunk === 1 ? 'one token an append' : `${rep.stream.chunk} tokens an append`} (\`full\`: each example alone, all of it inside T). Answer: the value tokens of each example's answer; answer EM: every value token is the argmax.`);
    lines.push('');
    lines.push('| model, policy | tokens a layer holds (max between steps) | perplexity | answer perplexity | answer EM |');
    lines.push('| --- | ---: | ---: | ---: | ---: |');
    for (const r of P) lines.push(`| ${label(r.model, r.policy)} | ${r.heldMax ?? 'whole example'} | ${r.perplexity.toFixed(3)} | ${r.answerPerplexity.toFixed(2)} | ${(r.answerExactMatch * 100).toFixed(0)}% |`);
    lines.push('');
  }
  const S = rep.results.speed;
  if (S.length) {
    lines.push(`Decode speed: ${rep.speed.generatedTokens} tokens generated on one sequence after a ${rep.speed.promptTokens}-token prompt (sampled; after an end-of-sequence token a BOS is appended and generation goes on), the policies alternated, medians of ${rep.speed.rounds} rounds (${rep.machine.cpus} cores, load average ${rep.machine.loadAverageAtStart} at start):`);
    lines.push('');
    lines.push('| model, policy | decode tokens/s | ms per token | vs full | wall ms per token (with restarts) |');
    lines.push('| --- | ---: | ---: | ---: | ---: |');
    for (const r of S) lines.push(`| ${label(r.model, r.policy)}${r.generatedTokensMin < r.generatedTokens ? ` (${r.generatedTokensMin} tokens: T)` : ''} | ${r.decodeTokensPerSecond.toFixed(0)} | ${r.msPerToken.toFixed(3)} | ${r.ratioToFull === null ? '' : `${r.ratioToFull.toFixed(2)}x`} | ${r.wallMsPerTokenMedian.toFixed(3)} |`);
    lines.push('');
  }
  lines.push(`Produced by \`${rep.command}\` (${rep.date.slice(0, 10)}, ${rep.seconds} s); JSON in bench/bounded.json, chart in bench/bounded.svg.`);
  return lines.join('\n');
}

function updateReadme(path, table) {
  writeReadmeBlock(path, 'bounded-table', table);
}
