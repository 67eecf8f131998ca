// A real redis-server for the remote tier's tests: started on a free loopback port with no
// persistence, killed, stopped (SIGSTOP) and started again on the same port by the tests.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { createServer } from 'node:net';

/** The redis-server binary on PATH, or null. */
export function findRedisServer(): string | null {
  const r = spawnSync('sh', ['-c', 'command -v redis-server'], { encoding: 'utf8' });
  const path = r.stdout.trim();
  return r.status === 0 && path !== '' ? path : null;
}

/** A loopback TCP port nobody listens on now. */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const port = (s.address() as { port: number }).port;
      s.close(() => resolve(port));
    });
  });
}

export class RedisServer {
  readonly port: number;
  #child: ChildProcess | null = null;

  constructor(port: number) {
    this.port = port;
  }

  get url(): string {
    return `redis://127.0.0.1:${this.port}`;
  }

  get running(): boolean {
    return this.#child !== null;
  }

  /** Starts the server (no RDB snapshots, no AOF: an empty server each start); resolves once it accepts connections. */
  async start(): Promise<void> {
    if (this.#child) throw new Error('redis-server: already running');
    // Not under the sanitizer run's preloaded ASan runtime (scripts/ci/sanitize.sh): the server is not what is tested.
    const env = { ...process.env };
    delete env.LD_PRELOAD;
    const child = spawn('redis-server', ['--port', String(this.port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--daemonize', 'no'], {
      stdio: ['ignore', 'pipe', 'pipe'],
      env,
    });
    this.#child = child;
    let log = '';
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`redis-server on port ${this.port} did not start within 10 s:\n${log}`)), 10_000);
      const onData = (b: Buffer): void => {
        log += b;
        if (/Ready to accept connections/.test(log)) {
          clearTimeout(timer);
          resolve();
        }
      };
      child.stdout!.on('data', onData);
      child.stderr!.on('data', onData);
      child.once('error', (e) => {
        clearTimeout(timer);
        reject(e);
      });
      child.once('exit', (code) => {
        clearTimeout(timer);
        reject(new Error(`redis-server on port ${this.port} exited (${code}) before accepting connections:\n${log}`));
      });
    }).catch((e: unknown) => {
      child.kill('SIGKILL');
      this.#child = null;
      throw e;
    });
    child.stdout!.resume();
    child.stderr!.resume();
  }

  /** Kills the server (SIGKILL: no goodbye to its clients) and waits until it is gone. */
  async kill(): Promise<void> {
    const child = this.#child;
    if (!child) return;
    this.#child = null;
    if (child.exitCode !== null || child.signalCode !== null) return;
    const exited = new Promise((r) => child.once('exit', r));
    child.kill('SIGCONT'); // in case it was stopped
    child.kill('SIGKILL');
    await exited;
  }

  /** Freezes the server (connections stay open, nothing is answered) until resume(). */
  pause(): void {
    this.#child?.kill('SIGSTOP');
  }

  resume(): void {
    this.#child?.kill('SIGCONT');
  }
}

/** A server started on a free port. */
export async function startRedis(): Promise<RedisServer> {
  const server = new RedisServer(await freePort());
  await server.start();
  return server;
}
