// permessage-deflate (RFC 7692) between Chromium and the daemon.
//
// Chromium offers permessage-deflate on every WebSocket and compresses every message it
// sends once it is agreed; the daemon agrees by default ([websocket] compression). The page
// is the daemon's own console page (an origin Chromium lets reach 127.0.0.1), but the
// sockets are the page script's own, so that the test reads the bytes it got back.
import assert from 'node:assert/strict';
import { bookkeeping, scrape, startDaemon } from './lib.mjs';

export async function before() {
  return { daemon: await startDaemon() };
}

/**
 * In the page: opens a WebSocket to `url`, sends each message of `plan` in order, waits for
 * every echo, closes with 1000. Messages are built in the page (a 1 MiB string would be a
 * slow argument). Returns the socket's extensions, the close event, and per message the
 * type, the sent and received sizes, their SHA-256 and whether they are identical.
 */
async function echoInPage(url) {
  const enc = new TextEncoder();
  const hex = async (bytes) => Array.from(new Uint8Array(await crypto.subtle.digest('SHA-256', bytes)),
    (b) => b.toString(16).padStart(2, '0')).join('');
  // A 16-symbol stream from an LCG: about half compressible, not a trivial run.
  const lcgBytes = (n, seed) => {
    const b = new Uint8Array(n);
    let x = seed;
    for (let i = 0; i < n; i++) {
      x = (Math.imul(x, 1103515245) + 12345) >>> 0;
      b[i] = 0x40 + ((x >>> 24) & 15);
    }
    return b;
  };
  const random = (n) => {
    const b = new Uint8Array(n);
    for (let i = 0; i < n; i += 65536) crypto.getRandomValues(b.subarray(i, i + 65536));
    return b;
  };
  const plan = [
    { name: 'Korean text', data: '안녕하세요, wsechod! 압축된 메아리 ✓' },
    { name: 'Korean text, 60 KiB', data: '서버에서 응답: 안녕하세요. '.repeat(2000) },
    { name: 'binary 0..255', data: Uint8Array.from({ length: 256 }, (_, i) => i) },
    { name: 'binary 1 MiB', data: lcgBytes(1 << 20, 7) },
    { name: 'random binary 64 KiB', data: random(65536) },
    { name: 'empty text', data: '' },
  ];

  const ws = new WebSocket(url);
  ws.binaryType = 'arraybuffer';
  const got = [];
  let wake = () => {};
  ws.onmessage = (ev) => { got.push(ev.data); wake(); };
  const closed = new Promise((resolve) => { ws.onclose = (ev) => { resolve(ev); wake(); }; });
  await new Promise((resolve, reject) => {
    ws.onopen = resolve;
    ws.onerror = () => reject(new Error(`the WebSocket to ${url} failed before it opened`));
  });
  const extensions = ws.extensions;
  for (const m of plan) ws.send(m.data);
  while (got.length < plan.length && ws.readyState === WebSocket.OPEN) await new Promise((resolve) => { wake = resolve; });
  ws.close(1000, 'done');
  const ev = await closed;

  const results = [];
  for (let i = 0; i < plan.length; i++) {
    const { name, data } = plan[i];
    const type = typeof data === 'string' ? 'text' : 'binary';
    const sent = type === 'text' ? enc.encode(data) : data;
    const echo = got[i];
    const r = { name, type, sentBytes: sent.length, sentSha: await hex(sent) };
    if (echo !== undefined) {
      const echoType = typeof echo === 'string' ? 'text' : 'binary';
      const bytes = echoType === 'text' ? enc.encode(echo) : new Uint8Array(echo);
      Object.assign(r, {
        echoType,
        echoBytes: bytes.length,
        echoSha: await hex(bytes),
        identical: type === 'text' ? echo === data : bytes.length === sent.length && bytes.every((b, j) => b === sent[j]),
      });
    }
    results.push(r);
  }
  return { extensions, close: { code: ev.code, reason: ev.reason, wasClean: ev.wasClean }, results, extra: got.length - plan.length };
}

export const tests = [
  {
    name: 'negotiates permessage-deflate; text, Korean, binary and 1 MiB echo exactly; the daemon inflated less wire than payload',
    async run({ page, fixture: { daemon } }) {
      assert.equal((await page.goto(`${daemon.origin}/console?connect=0`)).status(), 200, 'GET /console');
      const out = await page.evaluate(echoInPage, daemon.url);

      assert.match(out.extensions, /^permessage-deflate(;|$)/, `ws.extensions is "${out.extensions}"`);
      // etc/wsechod.toml's default: one compressor per thread, reset after every message.
      assert.match(out.extensions, /(^|; )server_no_context_takeover(;|$)/, `ws.extensions is "${out.extensions}"`);
      for (const r of out.results) {
        assert.equal(r.echoType, r.type, `${r.name}: echoed as ${r.echoType}`);
        assert.equal(r.echoBytes, r.sentBytes, `${r.name}: size`);
        assert.equal(r.echoSha, r.sentSha, `${r.name}: SHA-256`);
        assert.equal(r.identical, true, `${r.name}: not identical`);
      }
      assert.equal(out.extra, 0, 'echoes beyond those of the messages sent');
      assert.deepEqual(out.close, { code: 1000, reason: 'done', wasClean: true });

      const get = await scrape(daemon);
      const sent = out.results.reduce((n, r) => n + r.sentBytes, 0);
      const rx = {
        payload: get('wsechod_compression_payload_bytes_total{direction="received"}'),
        wire: get('wsechod_compression_wire_bytes_total{direction="received"}'),
      };
      const tx = {
        payload: get('wsechod_compression_payload_bytes_total{direction="sent"}'),
        wire: get('wsechod_compression_wire_bytes_total{direction="sent"}'),
      };
      const show = JSON.stringify({ sent, rx, tx });
      assert.equal(get('wsechod_connections_compressed_total'), 1, show);
      assert.equal(get('wsechod_handshakes_total{http="1.1"}'), 1, show);
      const books = bookkeeping(get);
      assert.equal(books.accepted, books.accounted, `connection bookkeeping: ${JSON.stringify(books)}`);
      // Chromium compresses every message it sends (the 64 KiB of random bytes too, to a little
      // more than they were); the 1 MiB message compresses to about half.
      assert.equal(rx.payload, sent, `the daemon inflated not exactly what the page sent: ${show}`);
      assert.ok(rx.wire > 0 && rx.wire < rx.payload, `received wire bytes not below payload bytes: ${show}`);
      // And the daemon compressed its echoes.
      assert.ok(tx.payload >= (1 << 20) && tx.wire < tx.payload, `sent wire bytes not below payload bytes: ${show}`);
    },
  },
];
