// Finds and loads the native addon. Order:
//   1. KVFOCUS_BINARY (an explicit path, for development and device runs);
//   2. a local source build, build/Release/kvfocus.node (cmake-js or node-gyp);
//   3. the prebuilt CUDA binary, prebuilds/<platform>-<arch>/cuda/kvfocus.node, only when the
//      host looks like it has an NVIDIA GPU, and only after a child process has loaded it and
//      seen a device (a broken driver must not take this process down);
//   4. the prebuilt CPU binary through node-gyp-build (prebuilds/<platform>-<arch>/*.node).
// node-gyp-build ignores tags it does not know, so the CUDA binary lives in its own folder and
// is loaded by path.
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';

import type { BindingModule } from './binding.js';
import { errorFromNative, LoadError } from './errors.js';

export interface LoadedAddon {
  binding: BindingModule;
  /** Absolute path of the .node file in use. */
  path: string;
  /** Why a CUDA binary was not used although one was shipped, if that happened. */
  fallbackReason: string | undefined;
}

let loaded: LoadedAddon | undefined;

/** The package root: the nearest folder above this file whose package.json is kvfocus's. */
export function packageRoot(): string {
  let dir = __dirname;
  for (;;) {
    const pkg = join(dir, 'package.json');
    if (existsSync(pkg)) {
      try {
        if ((JSON.parse(readFileSync(pkg, 'utf8')) as { name?: string }).name === 'kvfocus') return dir;
      } catch {
        // not ours; keep walking
      }
    }
    const up = dirname(dir);
    if (up === dir) throw new LoadError(`kvfocus: cannot find the package root above ${__dirname}`);
    dir = up;
  }
}

function gpuLikelyPresent(): boolean {
  return existsSync('/dev/nvidiactl') || existsSync('/proc/driver/nvidia/version');
}

// Loads the CUDA binary in a throwaway child process first; returns a reason when unusable.
function probeCudaBinary(path: string): string | undefined {
  const script =
    `const b = require(${JSON.stringify(path)}); const i = b.buildInfo();` +
    `process.stdout.write(JSON.stringify({ devices: i.devices.length, reason: i.cudaUnavailableReason }));`;
  const r = spawnSync(process.execPath, ['-e', script], { encoding: 'utf8', timeout: 60_000 });
  if (r.error) return `probing the CUDA binary failed: ${r.error.message}`;
  if (r.status !== 0) return `the CUDA binary failed to load (exit ${r.status ?? r.signal}): ${(r.stderr || '').trim().split('\n').pop() ?? ''}`;
  try {
    const info = JSON.parse(r.stdout) as { devices: number; reason: string };
    return info.devices > 0 ? undefined : info.reason || 'no CUDA device found';
  } catch {
    return 'the CUDA binary probe printed no result';
  }
}

function requireAddon(path: string): BindingModule {
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  return require(path) as BindingModule;
}

function locate(): { path: string; fallbackReason: string | undefined } {
  const explicit = process.env.KVFOCUS_BINARY;
  if (explicit) return { path: explicit, fallbackReason: undefined };
  const root = packageRoot();
  const local = join(root, 'build', 'Release', 'kvfocus.node');
  if (existsSync(local)) return { path: local, fallbackReason: undefined };
  let fallbackReason: string | undefined;
  const cuda = join(root, 'prebuilds', `${process.platform}-${process.arch}`, 'cuda', 'kvfocus.node');
  if (existsSync(cuda) && process.env.KVFOCUS_DEVICE !== 'cpu') {
    if (gpuLikelyPresent()) {
      fallbackReason = probeCudaBinary(cuda);
      if (fallbackReason === undefined) return { path: cuda, fallbackReason };
    } else {
      fallbackReason = 'no NVIDIA GPU on this host';
    }
  }
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  const nodeGypBuild = require('node-gyp-build') as { resolve(dir: string): string };
  return { path: nodeGypBuild.resolve(root), fallbackReason };
}

/** Loads the addon once per process (per worker thread: each gets its own instance data). */
export function addon(): LoadedAddon {
  if (loaded) return loaded;
  let where: { path: string; fallbackReason: string | undefined };
  let binding: BindingModule;
  try {
    where = locate();
    binding = requireAddon(where.path);
  } catch (cause) {
    if (cause instanceof LoadError) throw cause;
    throw new LoadError(
      `kvfocus: could not load the native addon for ${process.platform}-${process.arch} (Node ${process.versions.node}). ` +
        `Possible fixes: reinstall with \`npm install kvfocus\` so a prebuilt binary or a source build is made; ` +
        `build from source with \`npm run build\` (needs cmake, or node-gyp for a CPU-only build); ` +
        `or point KVFOCUS_BINARY at a kvfocus.node. Cause: ${(cause as Error).message}`,
      { cause },
    );
  }
  binding.setErrorFactory((code, message) => errorFromNative(code, message));
  if (where.fallbackReason && gpuLikelyPresent()) {
    process.emitWarning(`kvfocus: using the CPU backend: ${where.fallbackReason}`);
  }
  loaded = { binding, path: where.path, fallbackReason: where.fallbackReason };
  return loaded;
}

/** The native module (loaded on first use). */
export function native(): BindingModule {
  return addon().binding;
}
