// The published package: `npm pack`, install the tarball into an empty project, and use it
// from CommonJS and from an ES module, as a user would.
import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

const root = join(__dirname, '..');
const prebuilt = join(root, 'prebuilds', `${process.platform}-${process.arch}`, 'kvfocus.node');
const work = mkdtempSync(join(tmpdir(), 'kvfocus-pack-'));
const consumer = join(work, 'consumer');
// The child processes must find the package's own binary, not a developer override.
const env = { ...process.env, KVFOCUS_BINARY: '' };
delete env.KVFOCUS_BINARY;

function sh(cmd: string, args: string[], cwd: string): string {
  return execFileSync(cmd, args, { cwd, env, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
}

beforeAll(() => {
  // npm 11 does not run dependencies' install scripts unless approved, so a user's install
  // relies on the prebuilt binary: make one (CPU) if this checkout has none yet.
  if (!existsSync(prebuilt)) sh(process.execPath, [join(root, 'scripts', 'prebuild.mjs'), '--cpu-only'], root);
  sh('npm', ['pack', '--pack-destination', work, '--silent'], root);
  const tarball = readdirSync(work).find((f) => f.endsWith('.tgz'));
  if (!tarball) throw new Error('npm pack wrote no tarball');
  execFileSync('mkdir', ['-p', consumer]);
  writeFileSync(join(consumer, 'package.json'), JSON.stringify({ name: 'consumer', version: '1.0.0', private: true }));
  sh('npm', ['install', join(work, tarball), '--prefer-offline', '--no-audit', '--no-fund', '--silent'], consumer);
}, 600_000);

afterAll(() => rmSync(work, { recursive: true, force: true }));

describe('npm pack', () => {
  it('installs with a prebuilt binary and loads through require()', () => {
    const out = sh(
      process.execPath,
      ['-e', `const k = require('kvfocus'); k.Tensor.from(new Float32Array([1.5, 2.5]), { dtype: 'bf16' }).toArray()
         .then((v) => console.log(JSON.stringify({ v: Array.from(v), binary: k.buildInfo().binary })));`],
      consumer,
    );
    const { v, binary } = JSON.parse(out) as { v: number[]; binary: string };
    expect(v).toEqual([1.5, 2.5]);
    expect(binary).toContain(join('node_modules', 'kvfocus', 'prebuilds'));
  });

  it('loads through import with named exports', () => {
    const out = sh(
      process.execPath,
      ['--input-type=module', '-e', `import { Tensor, ops, buildInfo, InvalidArgumentError } from 'kvfocus';
         const t = ops.softmax === undefined ? null : Tensor.zeros([2]);
         let named = false; try { Tensor.zeros([-1]); } catch (e) { named = e instanceof InvalidArgumentError; }
         console.log(JSON.stringify({ named, backend: buildInfo().backend, size: t.size }));`],
      consumer,
    );
    expect(JSON.parse(out)).toMatchObject({ named: true, size: 2 });
  });

  it('ships type declarations for both entry points and no test or build clutter', () => {
    const pkg = join(consumer, 'node_modules', 'kvfocus');
    expect(existsSync(join(pkg, 'dist', 'cjs', 'index.d.ts'))).toBe(true);
    expect(existsSync(join(pkg, 'dist', 'esm', 'index.d.mts'))).toBe(true);
    expect(existsSync(join(pkg, 'test'))).toBe(false);
    expect(existsSync(join(pkg, 'build'))).toBe(false);
  });
});
