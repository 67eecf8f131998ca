// The `kvfocus` command (bin/kvfocus.js). Arguments are parsed by commander; see `kvfocus --help`.
import { Command, InvalidArgumentError as OptionError } from 'commander';
import { KvfocusError } from '../errors.js';
import { build, CliError, formatReports, inspect } from './cache.js';

function positiveInt(v: string): number {
  const n = Number(v);
  if (!Number.isInteger(n) || n < 1) throw new OptionError('expected a positive integer');
  return n;
}

/** Runs the command line `argv` (process.argv's shape); resolves with the exit code. */
export async function main(argv: string[]): Promise<number> {
  const program = new Command('kvfocus').description('kvfocus: long-context LLM inference for Node.js').exitOverride();
  const cache = program.command('cache').description('the Context KV Cache Store on disk');
  let code = 0;
  cache
    .command('build')
    .description('compute and store the KV of every document of a JSONL file ({"id", "text"} or {"id", "tokens"} per line)')
    .argument('<docs.jsonl>', 'documents, one JSON object per line')
    .requiredOption('--model <dir>', "model folder (or 'default' for the embedded model, 'deep' for its 6-layer variant)")
    .requiredOption('--store <dir>', 'store folder (created if missing)')
    .option('--prefix <text>', 'shared prefix every document is encoded after (default: the start-of-text token alone)')
    .option('--device <device>', "'cpu', 'cuda', 'cuda:N' or 'auto'")
    .option('--dtype <dtype>', 'compute dtype of the weights: f32, f16, bf16')
    .option('--kv-dtype <dtype>', 'KV cache dtype: f32, f16, bf16')
    .option('--batch <n>', 'documents handed to putMany at once', positiveInt, 64)
    .option('--remote <url>', "also write every entry to this Redis (redis://host:port), for the hosts that share it; secret: KVFOCUS_REMOTE_SECRET")
    .option('--key-prefix <prefix>', "key prefix in Redis (with --remote; default 'kvfocus:')")
    .option('--no-progress', 'no progress bar')
    .action(async (docs: string, o) => {
      await build(docs, { model: o.model, store: o.store, prefix: o.prefix, device: o.device, dtype: o.dtype, kvDtype: o.kvDtype, batch: o.batch, progress: o.progress, remote: o.remote, keyPrefix: o.keyPrefix });
    });
  for (const verify of [false, true]) {
    cache
      .command(verify ? 'verify' : 'stats')
      .description(verify ? "read every entry and check its checksums; exit 1 if any is damaged" : 'entries, tokens and bytes of each store folder (headers only)')
      .argument('<dir>', 'store folder (the dir given to openStore)')
      .option('--json', 'print JSON')
      .action(async (dir: string, o: { json?: boolean }) => {
        const reports = await inspect(dir, verify);
        process.stdout.write(o.json ? JSON.stringify(reports, null, 2) + '\n' : formatReports(reports, verify));
        if (verify && reports.some((r) => (r.damaged?.length ?? 0) > 0)) code = 1;
      });
  }
  try {
    await program.parseAsync(argv);
  } catch (e) {
    const c = e as { code?: string; exitCode?: number };
    if (typeof c.code === 'string' && c.code.startsWith('commander.')) return c.exitCode ?? 2; // commander printed it
    if (e instanceof CliError || e instanceof KvfocusError) {
      process.stderr.write(`kvfocus: ${(e as Error).message}\n`);
      return e instanceof CliError ? e.exitCode : 1;
    }
    throw e;
  }
  return code;
}
