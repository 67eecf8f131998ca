// Command-line options shared by the benchmark scripts: `--name value` pairs and `--flag`s.
const argv = process.argv.slice(2);

/** The value after `name`, or `fallback`. */
export function opt(name, fallback) {
  const i = argv.indexOf(name);
  return i >= 0 ? argv[i + 1] : fallback;
}

/** Whether `name` was passed. */
export function flag(name) {
  return argv.includes(name);
}

export function positiveInt(name, fallback) {
  const v = Number(opt(name, fallback));
  if (!Number.isInteger(v) || v < 1) throw new Error(`${name}: expected a positive integer but received ${opt(name, fallback)}`);
  return v;
}

export function intList(name, fallback) {
  return String(opt(name, fallback)).split(',').map((s) => {
    const n = Number(s);
    if (!Number.isInteger(n) || n < 1) throw new Error(`${name}: expected comma-separated positive integers but received ${s}`);
    return n;
  });
}

/** --threads N: the CPU backend's thread count, set before the addon loads (it reads KVFOCUS_THREADS then). */
export function threadsOption() {
  const v = opt('--threads', undefined);
  if (v === undefined) return;
  positiveInt('--threads', 1);
  process.env.KVFOCUS_THREADS = v;
}
