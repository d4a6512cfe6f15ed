/**
 * Starting `kernel-bridge serve` for the host: the process, its token file, its readiness,
 * and its end with {@link ServiceProcess.stop} or with the host.
 *
 * @module
 */

import { spawn, type ChildProcess } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

import { BridgeStartError } from "./errors.js";

/** How {@link KernelBridge.start} starts the service. */
export interface StartOptions {
  /**
   * The Python that has kernel-bridge installed; it runs the service and, unless told
   * otherwise, the kernels. Default: `KERNEL_BRIDGE_PYTHON`, else `python3`.
   */
  python?: string;
  /** Warm kernels for one-off calls (default 2). */
  poolSize?: number;
  /** Folders put on the kernels' `sys.path`. */
  pythonPaths?: string[];
  /** Extra environment variables for the service and its kernels. */
  env?: Record<string, string>;
  /** The folder `executeFile` may read scripts from (default: the host's working folder). */
  root?: string;
  /** Milliseconds the service gets to become ready (default 120000). */
  startupTimeout?: number;
  /** The service's log level (default `"warning"`); its log is kept, see {@link ServiceProcess.log}. */
  logLevel?: "debug" | "info" | "warning" | "error" | "critical";
  /** More arguments for `kernel-bridge serve`, such as `--BridgeApp.max_backends=4`. */
  args?: string[];
}

const LOG_KEPT = 64 * 1024;
const live = new Set<ChildProcess>();
let hooked = false;

/** The host's exit (Bun and Node) stops every service it started; the service's own
 * `--watch-stdin` covers a host that dies without running exit handlers. */
function hookExit(): void {
  if (hooked) return;
  hooked = true;
  process.on("exit", () => {
    for (const child of live) {
      try {
        child.kill("SIGTERM");
      } catch {
        // already gone
      }
    }
  });
}

/** A running `kernel-bridge serve` that this host started. */
export class ServiceProcess {
  /** The service's base URL, for example `http://127.0.0.1:38123/`. */
  readonly url: string;
  /** The token the service checks. */
  readonly token: string;
  /** The service's process id. */
  readonly pid: number;
  private readonly child: ChildProcess;
  private readonly output: { text: string };
  private readonly exited: Promise<void>;

  private constructor(url: string, token: string, child: ChildProcess, output: { text: string }, exited: Promise<void>) {
    this.url = url;
    this.token = token;
    this.child = child;
    this.pid = child.pid ?? 0;
    this.output = output;
    this.exited = exited;
  }

  /** The last 64 KB the service wrote (its log). */
  log(): string {
    return this.output.text;
  }

  /** Whether the service process still runs. */
  get running(): boolean {
    return this.child.exitCode === null && this.child.signalCode === null;
  }

  /**
   * Start the service and wait until its kernels are ready.
   *
   * @param options - see {@link StartOptions}
   */
  static async start(options: StartOptions = {}): Promise<ServiceProcess> {
    const python = options.python ?? process.env.KERNEL_BRIDGE_PYTHON ?? "python3";
    const token = randomBytes(24).toString("hex");
    // The token goes through a private file: a command line is visible to every user (ps).
    const folder = mkdtempSync(join(tmpdir(), "kernel-bridge-"));
    const tokenFile = join(folder, "token");
    writeFileSync(tokenFile, token, { mode: 0o600 });
    const args = ["-m", "bridge", "serve", "--port", "0", "--watch-stdin"];
    args.push("--log-level", options.logLevel ?? "warning");
    if (options.poolSize !== undefined) args.push("--pool-size", String(options.poolSize));
    if (options.pythonPaths?.length) args.push("--python-paths", options.pythonPaths.join(":"));
    if (options.root !== undefined) args.push("--root", options.root);
    args.push(...(options.args ?? []));
    const env: Record<string, string | undefined> = { ...process.env, ...options.env, JUPYTER_TOKEN_FILE: tokenFile };
    delete env.JUPYTER_TOKEN; // it would win over the file
    const timeout = options.startupTimeout ?? 120_000;

    let child: ChildProcess;
    try {
      child = spawn(python, args, { env, stdio: ["pipe", "pipe", "pipe"] });
    } catch (err) {
      rmSync(folder, { recursive: true, force: true });
      throw new BridgeStartError(`could not run ${python}: ${(err as Error).message}`);
    }
    live.add(child);
    hookExit();
    const output = { text: "" };
    const keep = (chunk: Buffer) => {
      output.text = (output.text + chunk.toString("utf8")).slice(-LOG_KEPT);
    };
    child.stderr?.on("data", keep);
    let stdout = "";
    const exited = new Promise<void>((resolve) => {
      child.once("exit", () => {
        live.delete(child);
        resolve();
      });
      child.once("error", () => {
        live.delete(child);
        resolve();
      });
    });

    try {
      const url = await new Promise<string>((resolve, reject) => {
        const timer = setTimeout(() => {
          reject(new BridgeStartError(`the kernel-bridge service did not become ready within ${timeout} ms`, output.text));
        }, timeout);
        const fail = (error: BridgeStartError) => {
          clearTimeout(timer);
          reject(error);
        };
        child.once("error", (err: NodeJS.ErrnoException) => {
          fail(
            new BridgeStartError(
              err.code === "ENOENT"
                ? `no Python at "${python}": install Python 3.10+ with kernel-bridge ` +
                    `("pip install 'kernel-bridge[server]'"), or name it with the python option or KERNEL_BRIDGE_PYTHON`
                : `could not run ${python}: ${err.message}`,
            ),
          );
        });
        child.once("exit", (code, signal) => fail(startFailure(python, code, signal, output.text)));
        child.stdout?.on("data", (chunk: Buffer) => {
          const text = chunk.toString("utf8");
          keep(chunk);
          stdout += text;
          const match = /serving at (\S+)\n/.exec(stdout);
          if (match?.[1]) {
            clearTimeout(timer);
            stdout = "";
            resolve(match[1]);
          }
        });
      });
      // Read the rest of stdout (and drop it): a full pipe would block the service.
      child.stdout?.removeAllListeners("data");
      child.stdout?.on("data", keep);
      // The host may exit without close(): the exit hook and --watch-stdin then stop it.
      child.unref();
      for (const stream of [child.stdin, child.stdout, child.stderr]) {
        (stream as unknown as { unref?: () => void } | null)?.unref?.();
      }
      return new ServiceProcess(url, token, child, output, exited);
    } catch (err) {
      if (child.exitCode === null && child.signalCode === null) {
        child.kill("SIGKILL");
        await exited;
      }
      throw err;
    } finally {
      rmSync(folder, { recursive: true, force: true });
    }
  }

  /**
   * Stop the service and every kernel it runs (SIGTERM, the service's clean stop); kill it if
   * it has not stopped within *timeoutMs*.
   */
  async stop(timeoutMs = 20_000): Promise<void> {
    if (!this.running) {
      await this.exited;
      return;
    }
    this.child.kill("SIGTERM");
    let timer: ReturnType<typeof setTimeout> | undefined;
    const late = new Promise<boolean>((resolve) => {
      timer = setTimeout(() => resolve(true), timeoutMs);
    });
    const killed = await Promise.race([this.exited.then(() => false), late]);
    clearTimeout(timer);
    if (killed) {
      this.child.kill("SIGKILL");
      await this.exited;
    }
  }
}

function startFailure(python: string, code: number | null, signal: NodeJS.Signals | null, log: string): BridgeStartError {
  const how = signal ? `was killed by ${signal}` : `exited with status ${code}`;
  if (/No module named '?bridge'?/.test(log) || /No module named bridge/.test(log)) {
    return new BridgeStartError(
      `${python} does not have kernel-bridge installed: install it with ` +
        `"${python} -m pip install 'kernel-bridge[server]'" (or point the python option or ` +
        `KERNEL_BRIDGE_PYTHON at a Python that has it)`,
      log,
    );
  }
  if (/serve needs Jupyter Server/.test(log)) {
    return new BridgeStartError(
      `${python} has kernel-bridge without its server: install it with ` +
        `"${python} -m pip install 'kernel-bridge[server]'"`,
      log,
    );
  }
  const tail = log.trim().split("\n").slice(-15).join("\n");
  return new BridgeStartError(`the kernel-bridge service ${how} before it was ready:\n${tail}`, log);
}
