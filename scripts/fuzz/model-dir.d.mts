// Types for model-dir.mjs (plain Node ESM, so it runs without a build step).

/** One mutation: plain data, printed with every finding and replayable from (seed, index). */
export type FuzzCase = { kind: string; file?: string; [key: string]: unknown };

export interface CaseResult {
  /** False for a finding. */
  ok: boolean;
  /** 'loaded', 'typed', or the finding: 'timeout', 'signal SIGTRAP', 'untyped error', ... */
  outcome: string;
  detail: string;
  ms: number;
}

export interface RunOptions {
  timeoutMs?: number;
  heapMb?: number;
  keep?: boolean;
  baseDir?: string;
}

export interface FuzzReport {
  seed: number;
  cases: number;
  findings: (CaseResult & { index: number; case: FuzzCase })[];
  outcomes: Record<string, number>;
  seconds: number;
  casesPerSecond: number;
}

export function makeCase(seed: number, index: number, baseDir?: string): FuzzCase;
export function buildCase(c: FuzzCase, work: string, baseDir?: string, canary?: string): string;
export function runCase(c: FuzzCase, options?: RunOptions): Promise<CaseResult>;
export function fuzz(options?: RunOptions & { seed?: number; cases?: number; first?: number; jobs?: number; log?: (index: number, c: FuzzCase, r: CaseResult) => void }): Promise<FuzzReport>;
