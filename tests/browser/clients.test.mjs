// A real WebSocket client, Node's ws, sees the close code the daemon fails a connection with,
// directly and through HAProxy and nginx (issue 10, defect 1).
//
// The race: the daemon fails a connection while the client is still sending (a 20 MiB message
// over the 16 MiB limit, or an unmasked or invalid UTF-8 frame followed by 8 MiB more). Its
// close frame goes out at once. If the client's data then meets a closed socket, the kernel
// answers with a reset; ws, still writing, drops the connection on the write error (EPIPE,
// ECONNRESET) without reading the close frame that has arrived, and reports 1006. So the
// daemon must go on reading what the client sends after failing it (connection::linger).
// Through a proxy that is not enough: HAProxy in `mode http` and nginx both close the client's
// side as soon as the daemon's side ends (they do not keep half-closed tunnels), so a FIN from
// the daemon while the client is still sending resets the client just the same.
//
// Every try must see the code, so a reset that wins even once fails the test. The clients use
// ws's defaults, so permessage-deflate is agreed, but the large payloads go out uncompressed
// (ws's per-message `compress: false`): compressing 20 MiB of random bytes costs ws about a
// second a try and changes nothing on the wire, and a compressed follow-up would never be
// sent at all (ws drops a message still in its compressor when the connection closes).
// CLIENTS_TRIES sets the tries per case (default 10).
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import { requirePinned, scrape, startDaemon, startHaproxy, startNginx, tempDir, withTimeout } from './lib.mjs';

const { module: WebSocket, version: wsVersion } = requirePinned('ws');
const TRIES = Number(process.env.CLIENTS_TRIES || 10);
const MiB = 1024 * 1024;
const TRY_TIMEOUT = 15000;

export async function before() {
  const dir = tempDir();
  const daemon = await startDaemon();
  const routes = {
    directly: daemon.url,
    'through HAProxy': (await startHaproxy(daemon.port, dir)).url,
    'through nginx': (await startNginx(daemon.port, dir)).url,
  };
  // Each route echoes before any test relies on it.
  for (const [route, url] of Object.entries(routes)) {
    const r = await oneTry(url, (ws) => ws.send('hello'), (ws, data) => ws.close(1000, String(data) === 'hello' ? 'echoed' : 'wrong echo'));
    assert.deepEqual([r.code, r.reason], [1000, 'echoed'], `a plain echo ${route}: ${JSON.stringify(r)}`);
  }
  console.log(`  ws ${wsVersion}, ${TRIES} tries per case`);
  return { daemon, routes, big: crypto.randomBytes(20 * MiB), more: crypto.randomBytes(8 * MiB) };
}

/**
 * One ws client: connects to `url`, calls send(ws, sent) once open and onMessage(ws, data) at
 * the first message; send passes `sent` as the callback of its last ws.send. Resolves with the
 * 'close' event's code and reason, the errors seen before it, the extensions agreed, and
 * `written`: whether ws had handed all of the last message to the socket (true), had failed
 * to (its error code), or neither yet (null). After TRY_TIMEOUT the socket is terminated and
 * code is 'timeout'.
 */
function oneTry(url, send, onMessage = () => {}) {
  const ws = new WebSocket(url);
  const errors = [];
  let written = null;
  const sent = (e) => { written = e ? (e.code || e.message) : true; };
  const result = (code, reason) => ({ code, reason, errors, extensions: ws.extensions, written });
  const closed = new Promise((resolve) => {
    ws.on('open', () => send(ws, sent));
    ws.once('message', (data) => onMessage(ws, data));
    ws.on('error', (e) => errors.push(e.code || e.message));
    ws.on('close', (code, reason) => resolve(result(code, reason.toString())));
  });
  return withTimeout(closed, TRY_TIMEOUT, `ws to ${url}`).catch(() => {
    ws.terminate();
    return result('timeout', '');
  });
}

/** "1009 ×10" or "1009 ×7, 1006 ×3". */
const tally = (codes) => Object.entries(codes.reduce((m, c) => ({ ...m, [c]: (m[c] || 0) + 1 }), {}))
  .map(([c, n]) => `${c} ×${n}`).join(', ');

const CASES = [
  {
    what: 'a 20 MiB binary message (limit 16 MiB)',
    code: 1009,
    reason: 'message too big',
    send: (ws, { big }, sent) => ws.send(big, { compress: false }, sent),
  },
  {
    what: 'an unmasked frame, then 8 MiB',
    code: 1002,
    reason: 'Protocol violation',
    // ws masks client frames unless told not to; a server must fail an unmasked one.
    send: (ws, { more }, sent) => { ws.send('unmasked', { mask: false }); ws.send(more, { compress: false }, sent); },
  },
  {
    what: 'a text message of invalid UTF-8, then 8 MiB',
    code: 1007,
    reason: 'invalid UTF-8 in text message',
    // ws sends a Buffer as text without checking it.
    send: (ws, { more }, sent) => {
      ws.send(Buffer.from([0x68, 0x69, 0xc3, 0x28, 0xff]), { binary: false });
      ws.send(more, { compress: false }, sent);
    },
  },
];

export const tests = CASES.flatMap((c) => ['directly', 'through HAProxy', 'through nginx'].map((route) => ({
  name: `${c.what}: ws sees ${c.code} in every try, ${route}`,
  timeout: Math.max(90000, TRIES * 9000),
  async run({ fixture }) {
    const sentBefore = (await scrape(fixture.daemon))(`wsechod_close_frames_sent_total{code="${c.code}"}`);
    const results = [];
    for (let i = 0; i < TRIES; i++) results.push(await oneTry(fixture.routes[route], (ws, sent) => c.send(ws, fixture, sent)));
    const daemonSent = (await scrape(fixture.daemon))(`wsechod_close_frames_sent_total{code="${c.code}"}`) - sentBefore;
    const codes = results.map((r) => r.code);
    const line = `${route}: ws saw ${tally(codes)} in ${TRIES} tries (the last message written: ` +
      `${tally(results.map((r) => (r.written === true ? 'all' : r.written)))}); the daemon sent ${c.code} ×${daemonSent}`;
    console.log(`        ${line}`);
    const bad = results.filter((r) => r.code !== c.code || r.reason !== c.reason);
    assert.equal(bad.length, 0, `${line}; not ${c.code} "${c.reason}": ${JSON.stringify(bad)}`);
    assert.equal(daemonSent, TRIES, line);
  },
})));
