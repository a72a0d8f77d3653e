// tests/browser/lib.mjs: what browser test files share: the daemon and its metrics, a
// loopback page server, temporary directories, a self-signed certificate, bounded waits.
//
// Every process, server and temporary directory made here is registered, and run.mjs ends
// them all after each test file (endAll) and, if it must stop early, at exit (killAllNow).
// Test files need no teardown of their own.
import { execFile, spawn } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import { createRequire } from 'node:module';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const root = fileURLToPath(new URL('../..', import.meta.url));
export const screenshots = process.env.BROWSER_SCREENSHOTS === '1';

const owned = [];

/**
 * An npm module as tests/browser/install.sh put it in the cache, or from
 * tests/browser/node_modules, at exactly the version package.json pins. Returns
 * { module, version }; throws, naming install.sh, when it is missing or another version.
 */
export function requirePinned(name) {
  const here = path.join(root, 'tests/browser');
  const want = JSON.parse(fs.readFileSync(path.join(here, 'package.json'), 'utf8')).dependencies[name];
  const cache = path.join(process.env.XDG_CACHE_HOME || path.join(os.homedir(), '.cache'), 'wsechod/browser');
  for (const base of [path.join(cache, 'package.json'), path.join(here, 'package.json')]) {
    const require = createRequire(base);
    let version;
    try {
      version = require(`${name}/package.json`).version;
    } catch {
      continue;
    }
    if (version !== want) throw new Error(`${name} ${version} found beside ${base}, package.json pins ${want}: run tests/browser/install.sh`);
    return { module: require(name), version };
  }
  throw new Error(`${name} is not installed: run tests/browser/install.sh (it uses ${cache})`);
}

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
    /** null while it runs, then its exit code or signal. */
    exited: () => exited,
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
 * Resolves once it logs "listening on ws://127.0.0.1:PORT/ws" (wss:// with [tls]) and
 * "metrics on http://127.0.0.1:PORT/metrics", with
 *   { url, port, origin, metricsUrl, process }
 * url is the WebSocket URL, origin "http://127.0.0.1:PORT" (https:// with [tls]).
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
  const m = await proc.waitFor(/listening on ((wss?):\/\/127\.0\.0\.1:(\d+)\/\S*)/, 10000);
  const metrics = await proc.waitFor(/metrics on (http:\/\/127\.0\.0\.1:\d+\/metrics)/, 10000);
  const scheme = m[2] === 'wss' ? 'https' : 'http';
  return { url: m[1], port: Number(m[3]), origin: `${scheme}://127.0.0.1:${m[3]}`, metricsUrl: metrics[1], process: proc };
}

/**
 * Scrapes the daemon's /metrics once. Resolves with get(series), the value of one series
 * written as in the exposition, e.g. get('wsechod_handshakes_total{http="2"}'); get throws
 * if the series is missing, so a renamed metric fails the test instead of reading as 0.
 */
export async function scrape(daemon) {
  const res = await withTimeout(fetch(daemon.metricsUrl), 5000, `GET ${daemon.metricsUrl}`);
  if (res.status !== 200) throw new Error(`GET ${daemon.metricsUrl}: ${res.status}`);
  const text = await res.text();
  const series = new Map();
  for (const line of text.split('\n')) {
    const m = line.match(/^([a-zA-Z_:][\w:]*(?:\{[^}]*\})?) (\S+)$/);
    if (m) series.set(m[1], Number(m[2]));
  }
  return (name) => {
    if (!series.has(name)) throw new Error(`${name} is not on ${daemon.metricsUrl}`);
    return series.get(name);
  };
}

/**
 * Scrapes until `ok(get)` holds (get as from scrape); throws after `ms` with what `show(get)`
 * returned at the last scrape.
 */
export async function waitForMetrics(daemon, ok, show, ms = 5000) {
  const until = Date.now() + ms;
  for (;;) {
    const get = await scrape(daemon);
    if (ok(get)) return get;
    if (Date.now() > until) throw new Error(`metrics not as expected within ${ms} ms: ${show(get)}`);
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

/**
 * The connection bookkeeping at one scrape (get as from scrape): accepted, and what it must
 * equal: closed + aborted + the four live gauges + the TCP connections that went on as HTTP/2
 * (from then on their streams are the connections; src/tracker.rs).
 */
export function bookkeeping(get) {
  const live = ['connecting', 'open', 'close_sent', 'close_received']
    .reduce((n, s) => n + get(`wsechod_connections{state="${s}"}`), 0);
  return {
    accepted: get('wsechod_connections_accepted_total'),
    accounted: get('wsechod_connections_ended_total{state="closed"}') + get('wsechod_connections_ended_total{state="aborted"}') +
      live + get('wsechod_http2_connections_total'),
  };
}

/** A new temporary directory, removed after the test file. */
export function tempDir() {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'wsechod-browser-'));
  owned.push({
    name: `temp dir ${dir}`,
    output: () => '',
    end: async () => fs.rmSync(dir, { recursive: true, force: true }),
    killNow: () => fs.rmSync(dir, { recursive: true, force: true }),
  });
  return dir;
}

/**
 * A self-signed P-256 certificate for localhost and 127.0.0.1, valid one day, made by
 * Debian's openssl binary in `dir`. Resolves with { certFile, keyFile }.
 */
export async function selfSignedCert(dir) {
  const certFile = path.join(dir, 'cert.pem');
  const keyFile = path.join(dir, 'key.pem');
  const args = ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-days', '1',
    '-subj', '/CN=localhost', '-addext', 'subjectAltName=DNS:localhost,IP:127.0.0.1',
    '-keyout', keyFile, '-out', certFile];
  await new Promise((resolve, reject) => {
    execFile('openssl', args, { timeout: 10000 }, (err, _stdout, stderr) =>
      err ? reject(new Error(`openssl ${args.join(' ')}: ${err.message}\n${stderr}`)) : resolve());
  });
  return { certFile, keyFile };
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

/**
 * Resolves once something accepts TCP connections on 127.0.0.1:port. Tries every 50 ms;
 * rejects when `proc` (from start) has exited, or after `ms`.
 */
export async function waitForPort(port, proc, ms) {
  const until = Date.now() + ms;
  for (;;) {
    const ok = await new Promise((resolve) => {
      const s = net.connect({ host: '127.0.0.1', port });
      s.once('connect', () => { s.destroy(); resolve(true); });
      s.once('error', () => resolve(false));
    });
    if (ok) return;
    if (proc.exited() !== null) throw new Error(`${proc.name} exited (${proc.exited()}) before it listened on :${port}\n${proc.output().slice(-4000)}`);
    if (Date.now() > until) throw new Error(`${proc.name}: nothing listens on :${port} after ${ms} ms\n${proc.output().slice(-4000)}`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

/**
 * Runs `make(port)` on ports that were free a moment ago until one start() works (another
 * process may take the port between closedPort and the bind): make returns the process,
 * which must listen on 127.0.0.1:port within 10 s. Three tries. Resolves with { port, process }.
 */
async function onFreePort(make) {
  let last;
  for (let i = 0; i < 3; i++) {
    const port = await closedPort();
    const proc = make(port);
    try {
      await waitForPort(port, proc, 10000);
      return { port, process: proc };
    } catch (e) {
      last = e;
      await proc.end();
    }
  }
  throw last;
}

/**
 * Debian's HAProxy (2.6) in the foreground, `mode http`, forwarding 127.0.0.1:PORT to
 * 127.0.0.1:backendPort, with its configuration in `dir`. Upgraded connections are
 * tunnels (timeout tunnel). Resolves with { url, port, process } once it accepts; url is
 * ws://127.0.0.1:PORT/ws.
 */
export async function startHaproxy(backendPort, dir) {
  const { port, process: proc } = await onFreePort((port) => {
    const cfg = path.join(dir, `haproxy-${port}.cfg`);
    fs.writeFileSync(cfg, `global
  maxconn 200
defaults
  mode http
  timeout connect 5s
  timeout client 30s
  timeout server 30s
  timeout tunnel 60s
  timeout client-fin 5s
  timeout server-fin 5s
frontend ws
  bind 127.0.0.1:${port}
  default_backend wsechod
backend wsechod
  server d 127.0.0.1:${backendPort}
`);
    return start('haproxy', '/usr/sbin/haproxy', ['-db', '-f', cfg]);
  });
  return { url: `ws://127.0.0.1:${port}/ws`, port, process: proc };
}

/**
 * Debian's nginx (1.22) in the foreground as one process (master_process off, so that
 * ending it leaves no worker behind), proxying 127.0.0.1:PORT to 127.0.0.1:backendPort
 * with the usual WebSocket block (HTTP/1.1, Upgrade and Connection passed on, no
 * buffering). Its prefix, pid file and temp paths are in `dir`, its error log on stderr.
 * Resolves with { url, port, process } once it accepts; url is ws://127.0.0.1:PORT/ws.
 * `extra` is added to the server block.
 */
export async function startNginx(backendPort, dir, extra = '') {
  const { port, process: proc } = await onFreePort((port) => {
    const cfg = path.join(dir, `nginx-${port}.conf`);
    fs.writeFileSync(cfg, `master_process off;
daemon off;
pid ${dir}/nginx-${port}.pid;
error_log stderr notice;
events { worker_connections 256; }
http {
  access_log off;
  client_body_temp_path ${dir}/client_body;
  proxy_temp_path ${dir}/proxy;
  fastcgi_temp_path ${dir}/fastcgi;
  uwsgi_temp_path ${dir}/uwsgi;
  scgi_temp_path ${dir}/scgi;
  server {
    listen 127.0.0.1:${port};
    location / {
      proxy_pass http://127.0.0.1:${backendPort};
      proxy_http_version 1.1;
      proxy_set_header Upgrade $http_upgrade;
      proxy_set_header Connection "upgrade";
      proxy_buffering off;
    }
${extra}
  }
}
`);
    return start('nginx', '/usr/sbin/nginx', ['-p', dir, '-e', 'stderr', '-c', cfg]);
  });
  return { url: `ws://127.0.0.1:${port}/ws`, port, process: proc };
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
