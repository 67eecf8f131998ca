// Installs the llama.cpp oracle (node-llama-cpp) into .oracle/ when it is missing, so that
// `npm test` is self-sufficient. It stays out of package.json and the lockfile on purpose:
// it is a test oracle, and it is installed with --omit=optional in its own prefix so that it
// cannot prune the project's own optional packages.
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
if (!existsSync(join(root, '.oracle', 'node_modules', 'node-llama-cpp', 'package.json'))) {
  console.log('Installing the llama.cpp oracle (node-llama-cpp 3.22.1) into .oracle/ ...');
  const r = spawnSync('npm', ['run', 'oracle:install', '--silent'], { cwd: root, stdio: 'inherit' });
  if (r.status !== 0) process.exit(r.status ?? 1);
}
