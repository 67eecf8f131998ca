// npm run prebuild: the two linux-x64 binaries shipped in the package.
//   prebuilds/<platform>-<arch>/kvfocus.node        CPU only: prebuildify + node-gyp (binding.gyp)
//   prebuilds/<platform>-<arch>/cuda/kvfocus.node   CUDA: cmake-js with KVFOCUS_CUDA=on
// node-gyp-build picks the first; lib/loader.ts loads the second by path when a GPU is usable.
// node-gyp always builds into <cwd>/build, so the CPU binary is built in a staging copy of
// the sources: the development build in build/ is never touched.
import { spawnSync } from 'node:child_process';
import { copyFileSync, cpSync, mkdirSync, mkdtempSync, rmSync, symlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const require = createRequire(join(root, 'package.json'));
const platformDir = join(root, 'prebuilds', `${process.platform}-${process.arch}`);
const skipCuda = process.argv.includes('--cpu-only');

function run(args, env = {}, cwd = root) {
  console.log(`prebuild: ${args.join(' ')}`);
  const r = spawnSync(process.execPath, args, { cwd, stdio: 'inherit', env: { ...process.env, ...env } });
  if (r.status !== 0) {
    console.error(`prebuild: failed (${args[1] ?? args[0]} exited with ${r.status})`);
    process.exit(1);
  }
}

const stage = mkdtempSync(join(tmpdir(), 'kvfocus-prebuild-'));
try {
  for (const f of ['native', 'binding.gyp', 'package.json']) cpSync(join(root, f), join(stage, f), { recursive: true });
  symlinkSync(join(root, 'node_modules'), join(stage, 'node_modules'), 'dir');
  run([require.resolve('prebuildify/bin.js'), '--napi', '--strip', '--target', process.versions.node], {}, stage);
  mkdirSync(platformDir, { recursive: true });
  copyFileSync(join(stage, 'prebuilds', `${process.platform}-${process.arch}`, 'kvfocus.node'), join(platformDir, 'kvfocus.node'));
} finally {
  rmSync(stage, { recursive: true, force: true });
}

if (!skipCuda) {
  const out = join(root, 'build-cuda');
  run([require.resolve('cmake-js/bin/cmake-js'), 'compile', '--out', out], { KVFOCUS_CUDA: 'on' });
  mkdirSync(join(platformDir, 'cuda'), { recursive: true });
  copyFileSync(join(out, 'Release', 'kvfocus.node'), join(platformDir, 'cuda', 'kvfocus.node'));
  spawnSync('strip', ['--strip-unneeded', join(platformDir, 'cuda', 'kvfocus.node')], { stdio: 'inherit' });
}
console.log(`prebuild: done -> ${platformDir}`);
