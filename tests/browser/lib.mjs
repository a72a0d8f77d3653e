// tests/browser/lib.mjs: what browser test files share: the daemon, a loopback page server,
// bounded waits.
//
// Every process and server started here is registered, and run.mjs ends them all after each
// test file (endAll) and, if it must stop early, at exit (killAllNow). Test files need no
// teardown of their own.
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const root = fileURLToPath(new URL('../..', import.meta.url));
export const screenshots = process.env.BROWSER_SCREENSHOTS === '1';

const owned = [];

/** Rejects with `what` when `promise` has not settled within `ms`. */
export function withTimeout(promise, ms, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: no result within ${ms} ms`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/** Starts a process whose stderr (and stdout) is kept, last 64 KiB, for waitFor and failures. */
export function start(name, cmd, args, options = {}) {
  const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], ...options });
  let out = '';
  let exited = null;
  const waiters = new Set();
  const check = () => waiters.forEach((w) => w());
  const take = (chunk) => {
    out = (out + chunk.toString()).slice(-65536);
    check();
  };
  child.stdout.on('data', take);
  child.stderr.on('data', take);
  const done = new Promise((resolve) => child.on('close', (code, signal) => {
    exited = signal || code;
    check();
    resolve();
  }));
  child.on('error', (e) => { out += `\n[${name}: ${e.message}]`; exited ??= 'spawn error'; check(); });

  const proc = {
    name,
    pid: child.pid,
    output: () => out,
    /** Resolves with the match of `re` in the output; rejects at exit or after `ms`. */
    waitFor(re, ms) {
      return new Promise((resolve, reject) => {
        const timer = setTimeout(() => finish(new Error(`${name}: no ${re} within ${ms} ms`)), ms);
        const w = () => {
          const m = out.match(re);
          if (m) finish(null, m);
          else if (exited !== null) finish(new Error(`${name} exited (${exited}) before ${re}`));
        };
        function finish(err, m) {
          clearTimeout(timer);
          waiters.delete(w);
          if (err) reject(new Error(`${err.message}\n--- ${name} output ---\n${out.slice(-4000)}`));
          else resolve(m);
        }
        waiters.add(w);
        w();
      });
    },
    /** SIGTERM, then SIGKILL after 5 s; resolves once the process is gone. */
    async end() {
      if (exited !== null || child.pid === undefined) return;
      child.kill('SIGTERM');
      try {
        await withTimeout(done, 5000, `${name} after SIGTERM`);
      } catch {
        child.kill('SIGKILL');
        await withTimeout(done, 2000, `${name} after SIGKILL`).catch(() => {});
      }
    },
    killNow() {
      if (exited === null && child.pid !== undefined) child.kill('SIGKILL');
    },
  };
  owned.push(proc);
  return proc;
}

/**
 * Starts target/release/wsechod (or $BROWSER_DAEMON_BIN) with etc/wsechod.toml on loopback
 * port 0, plus `env`. WSECHOD_* variables of the caller's environment are not passed on: the
 * daemon reads every one of them as configuration.
 * Resolves with { url, port, process } once it logs "listening on ws://127.0.0.1:PORT/ws".
 */
export async function startDaemon(env = {}) {
  const bin = process.env.BROWSER_DAEMON_BIN || path.join(root, 'target/release/wsechod');
  if (!fs.existsSync(bin)) throw new Error(`${bin} is missing: run cargo build --release --locked`);
  const inherited = Object.entries(process.env).filter(([k]) => !k.startsWith('WSECHOD_'));
  const e = {
    ...Object.fromEntries(inherited),
    WSECHOD_SERVER__LISTEN: '127.0.0.1:0',
    WSECHOD_METRICS__LISTEN: '127.0.0.1:0',
    ...env,
  };
  for (const k of ['NOTIFY_SOCKET', 'LISTEN_FDS', 'LISTEN_PID', 'LISTEN_FDNAMES', 'RUST_LOG']) delete e[k];
  const proc = start('wsechod', bin, ['-c', path.join(root, 'etc/wsechod.toml')], { env: e });
  const m = await proc.waitFor(/listening on (ws:\/\/127\.0\.0\.1:(\d+)\/\S*)/, 10000);
  return { url: m[1], port: Number(m[2]), process: proc };
}

/**
 * Serves fixed files on http://127.0.0.1:PORT: `files` maps a path to { body, type }.
 * A real loopback server, because Chromium blocks pages it got through page.route or data:
 * URLs from reaching ws://127.0.0.1.
 */
export async function serveStatic(files) {
  const server = http.createServer((req, res) => {
    const f = files[new URL(req.url, 'http://x').pathname];
    if (!f) return res.writeHead(404).end();
    res.writeHead(200, { 'content-type': f.type, 'cache-control': 'no-store' }).end(f.body);
  });
  server.on('upgrade', (_req, socket) => socket.destroy());
  await withTimeout(new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', resolve);
  }), 5000, 'page server listen');
  const port = server.address().port;
  owned.push({
    name: `page server :${port}`,
    output: () => '',
    end: () => withTimeout(new Promise((resolve) => {
      server.close(resolve);
      server.closeAllConnections();
    }), 5000, 'page server close').catch(() => {}),
    killNow: () => server.closeAllConnections(),
  });
  return { url: `http://127.0.0.1:${port}`, port };
}

/** A loopback port that nothing listens on (it was free a moment ago). */
export async function closedPort() {
  const s = net.createServer();
  await new Promise((resolve) => s.listen(0, '127.0.0.1', resolve));
  const { port } = s.address();
  await new Promise((resolve) => s.close(resolve));
  return port;
}

/** Ends everything started since the last call, newest first. */
export async function endAll() {
  while (owned.length) await owned.pop().end();
}

/** At exit: kills what is left, synchronously. */
export function killAllNow() {
  while (owned.length) owned.pop().killNow();
}

/** The last lines of every process still registered, for a failure report. */
export function outputs(lines = 30) {
  return owned.filter((p) => p.output())
    .map((p) => `--- ${p.name} (last ${lines} lines) ---\n${p.output().trimEnd().split('\n').slice(-lines).join('\n')}`)
    .join('\n');
}
