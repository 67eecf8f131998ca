// npm install hook: use a prebuilt binary when one loads on this host; otherwise build from
// source, with cmake-js (CUDA too when nvcc is found) when it and cmake are available, else
// with node-gyp from binding.gyp (CPU only).
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const require = createRequire(join(root, 'package.json'));

function run(cmd, args) {
  console.log(`kvfocus: ${cmd} ${args.join(' ')}`);
  const r = spawnSync(cmd, args, { cwd: root, stdio: 'inherit', shell: process.platform === 'win32' });
  return r.status === 0;
}

function has(cmd) {
  return spawnSync(cmd, ['--version'], { stdio: 'ignore' }).status === 0;
}

function prebuiltLoads() {
  try {
    const path = require('node-gyp-build').resolve(root);
    if (!path.includes(`${join('prebuilds', '')}`)) return false; // a local build: rebuild it
    const r = spawnSync(process.execPath, ['-e', `require(${JSON.stringify(path)}).buildInfo()`], { stdio: 'ignore' });
    return r.status === 0;
  } catch {
    return false;
  }
}

if (process.env.KVFOCUS_BUILD_FROM_SOURCE !== '1' && prebuiltLoads()) {
  console.log('kvfocus: using the prebuilt binary');
  process.exit(0);
}

let cmakeJs;
try {
  cmakeJs = require.resolve('cmake-js/bin/cmake-js');
} catch {
  cmakeJs = undefined;
}
if (cmakeJs && has('cmake') && run(process.execPath, [cmakeJs, 'compile', '--out', 'build'])) process.exit(0);

// node-gyp ships with npm; npm exposes its path to install scripts.
const nodeGyp = process.env.npm_config_node_gyp;
const ok = nodeGyp && existsSync(nodeGyp) ? run(process.execPath, [nodeGyp, 'rebuild']) : run('node-gyp', ['rebuild']);
if (!ok) {
  console.error('kvfocus: could not build the native addon. Install cmake (and a C++17 compiler), or node-gyp\'s prerequisites (python3, make, g++).');
  process.exit(1);
}
