// Shared by the tests: where things are, and /proc look-ups for the leak checks.
import { readdirSync, readFileSync } from "node:fs";
import { dirname, resolve } from "node:path";
import { fileURLToPath } from "node:url";

import { KernelBridge, type ClientOptions, type StartOptions } from "../src/index.js";

/** The repository's root (the tests run from dist/test/). */
export const REPO = resolve(dirname(fileURLToPath(import.meta.url)), "../../../..");
/** The test fixtures' sources. */
export const FIXTURES = resolve(REPO, "clients/typescript/test/fixtures");
/** The example backends. */
export const EXAMPLES = resolve(REPO, "kernels/examples");
/** The Python with kernel-bridge: KERNEL_BRIDGE_PYTHON (make test sets it), else the venv's. */
export const PYTHON = process.env.KERNEL_BRIDGE_PYTHON ?? resolve(REPO, ".venv/bin/python");

/** A service for the tests of one file. */
export function startBridge(options: StartOptions & ClientOptions = {}): Promise<KernelBridge> {
  return KernelBridge.start({ python: PYTHON, poolSize: 1, startupTimeout: 90_000, ...options });
}

function stat(pid: number | string): string[] | undefined {
  try {
    const text = readFileSync(`/proc/${pid}/stat`, "utf8");
    return text.slice(text.lastIndexOf(")") + 2).split(" ");
  } catch {
    return undefined;
  }
}

/** Whether a process runs (a zombie counts as gone). */
export function alive(pid: number): boolean {
  const fields = stat(pid);
  return fields !== undefined && fields[0] !== "Z";
}

/** Every live descendant of a process (a service's kernels and their children). */
export function descendants(root: number): number[] {
  const children = new Map<number, number[]>();
  for (const entry of readdirSync("/proc")) {
    if (!/^\d+$/.test(entry)) continue;
    const fields = stat(entry);
    if (!fields || fields[0] === "Z") continue;
    const ppid = Number(fields[1]);
    const list = children.get(ppid) ?? [];
    list.push(Number(entry));
    children.set(ppid, list);
  }
  const found: number[] = [];
  const todo = [root];
  while (todo.length) {
    for (const child of children.get(todo.pop() as number) ?? []) {
      found.push(child);
      todo.push(child);
    }
  }
  return found;
}

/** The command line of a process. */
export function cmdline(pid: number): string {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, "utf8").replaceAll("\0", " ").trim();
  } catch {
    return "";
  }
}

/** Wait until *check* holds, polling; false if it never did within *ms*. */
export async function waitFor(check: () => boolean, ms: number): Promise<boolean> {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    if (check()) return true;
    await new Promise((r) => setTimeout(r, 100));
  }
  return check();
}

/** A promise that rejects after *ms* (to race a promise that must settle in time). */
export function within<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: ReturnType<typeof setTimeout>;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: not settled within ${ms} ms`)), ms);
  });
  return Promise.race([promise, late]).finally(() => clearTimeout(timer));
}

/** Wait until the async *check* holds, polling; false if it never did within *ms*. */
export async function eventually(check: () => Promise<boolean>, ms: number): Promise<boolean> {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    if (await check()) return true;
    await new Promise((r) => setTimeout(r, 100));
  }
  return check();
}
