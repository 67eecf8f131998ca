// One fuzz case, in its own process: load the model directory given as argv[2], generate a few
// tokens (and render the chat template when there is one), and print one JSON line saying how
// it ended. The parent (model-dir.mjs) runs this under time and memory limits and treats a
// crash, a signal, a timeout or anything but this line as a finding.
import { createRequire } from 'node:module';

const require = createRequire(import.meta.url);
// KVFOCUS_FUZZ_PACKAGE: another build to fuzz (an older checkout's dist/cjs/index.js, say).
const { KvfocusError, loadModel } = require(process.env.KVFOCUS_FUZZ_PACKAGE ?? '../../dist/cjs/index.js');

const dir = process.argv[2];
const canary = process.env.KVFOCUS_FUZZ_CANARY ?? '';

function report(result) {
  process.stdout.write(`${JSON.stringify(result)}\n`);
}

// A rejection nobody handles would end the process with an error of Node's, not ours.
process.on('unhandledRejection', (reason) => {
  report({ status: 'unhandled', name: reason?.name, message: String(reason?.message ?? reason).slice(0, 300) });
  process.exit(3);
});

function classify(error, stage) {
  const typed = error instanceof KvfocusError;
  return {
    status: typed ? 'typed' : 'untyped',
    stage,
    name: error?.name,
    code: error?.code,
    message: String(error?.message ?? error).slice(0, 300),
    leak: canary !== '' && String(error?.message ?? error).includes(canary),
  };
}

const started = performance.now();
let model;
try {
  model = await loadModel(dir, { device: 'cpu' });
} catch (error) {
  report({ ...classify(error, 'load'), ms: Math.round(performance.now() - started) });
  process.exit(0);
}
try {
  let rendered = '';
  if (model.tokenizer.hasChatTemplate) {
    const messages = [{ role: 'user', content: 'Who wrote Doc 1?' }];
    rendered = model.tokenizer.applyChatTemplate(messages, { addGenerationPrompt: true });
    if (canary !== '' && rendered.includes(canary)) {
      report({ status: 'leak', stage: 'template', message: 'the rendered chat template holds the canary' });
      process.exit(0);
    }
    await model.generate({ messages }, { maxTokens: 2, temperature: 0 }).result;
  }
  const { text } = await model.generate('Doc 1.', { maxTokens: 3, temperature: 0 }).result;
  report({ status: 'loaded', text: text.slice(0, 40), ms: Math.round(performance.now() - started) });
} catch (error) {
  report({ ...classify(error, 'generate'), ms: Math.round(performance.now() - started) });
} finally {
  model.dispose();
}
