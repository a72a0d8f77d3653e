// WebSockets over HTTP/2 (RFC 8441) between Chromium and the daemon.
//
// With [tls], the daemon offers ALPN h2 and SETTINGS_ENABLE_CONNECT_PROTOCOL; Chromium then
// loads the console page over HTTP/2 and opens that origin's wss:// sockets as extended
// CONNECT streams of the same TCP connection. The certificate is self-signed, made here with
// openssl; the test's browser context ignores certificate errors.
import assert from 'node:assert/strict';
import { bookkeeping, scrape, selfSignedCert, startDaemon, tempDir, waitForMetrics } from './lib.mjs';

export async function before() {
  const { certFile, keyFile } = await selfSignedCert(tempDir());
  const daemon = await startDaemon({ WSECHOD_TLS__CERT_FILE: certFile, WSECHOD_TLS__KEY_FILE: keyFile });
  assert.match(daemon.url, /^wss:\/\//, 'the daemon serves wss:// with [tls]');
  return { daemon };
}

const SOCKETS = 5;
const tid = (page, id) => page.getByTestId(id);
const state = (page) => page.evaluate(() => window.wsechodConsole.state());

/**
 * In the page: opens `n` more WebSockets to `url`, each sends a Korean text and 1000 binary
 * bytes of its own, and waits for both echoes. The sockets stay open in window.extraSockets.
 * Returns per socket its extensions and whether each echo was identical.
 */
async function openMore({ url, n }) {
  const one = (i) => new Promise((resolve, reject) => {
    const ws = new WebSocket(url);
    ws.binaryType = 'arraybuffer';
    const text = `소켓 ${i}: 안녕하세요 over HTTP/2`;
    const bytes = Uint8Array.from({ length: 1000 }, (_, j) => (j * (i + 3)) & 255);
    const got = [];
    ws.onerror = () => reject(new Error(`socket ${i} failed`));
    ws.onclose = (ev) => reject(new Error(`socket ${i} closed (${ev.code}) before its echoes`));
    ws.onopen = () => { ws.send(text); ws.send(bytes); };
    ws.onmessage = (ev) => {
      got.push(ev.data);
      if (got.length < 2) return;
      ws.onclose = ws.onerror = null;
      const echo = new Uint8Array(got[1]);
      resolve({
        ws,
        extensions: ws.extensions,
        text: got[0] === text,
        binary: got[1] instanceof ArrayBuffer && echo.length === bytes.length && echo.every((b, j) => b === bytes[j]),
      });
    };
  });
  const opened = await Promise.all(Array.from({ length: n }, (_, i) => one(i + 1)));
  window.extraSockets = opened.map((o) => o.ws);
  return opened.map(({ extensions, text, binary }) => ({ extensions, text, binary }));
}

/** In the page: closes the sockets of openMore with 1000 and returns their close events. */
async function closeMore() {
  return Promise.all(window.extraSockets.map((ws) => new Promise((resolve) => {
    ws.onclose = (ev) => resolve({ code: ev.code, reason: ev.reason, wasClean: ev.wasClean });
    ws.close(1000, 'bye');
  })));
}

const series = [
  'wsechod_handshakes_total{http="2"}',
  'wsechod_handshakes_total{http="1.1"}',
  'wsechod_http2_connections_total',
  'wsechod_http2_connections',
  'wsechod_http2_streams',
  'wsechod_connections{state="open"}',
  'wsechod_connections_ended_total{state="closed"}',
];
const values = (get) => Object.fromEntries(series.map((s) => [s, get(s)]));

export const tests = [
  {
    name: `the console page over https:// is h2, and ${SOCKETS} wss:// sockets are streams of its one TCP connection`,
    context: { ignoreHTTPSErrors: true },
    async run({ page, fixture: { daemon } }) {
      // The page connects on load, to its own origin's WebSocket path.
      assert.equal((await page.goto(`${daemon.origin}/console`)).status(), 200, 'GET /console');
      await page.waitForFunction(() => window.wsechodConsole.state().readyState !== 'connecting');
      let s = await state(page);
      assert.equal(s.readyState, 'open', `the console's socket: ${JSON.stringify(s)}`);
      assert.equal(s.url, daemon.url);
      assert.equal(s.httpVersion, 'h2');
      assert.equal(await tid(page, 'http-version').textContent(), 'h2');
      assert.match(await tid(page, 'http-note').textContent(), /^HTTP\/2: /);
      assert.match(await tid(page, 'extensions').textContent(), /^permessage-deflate/);
      await tid(page, 'text').fill('안녕하세요 over h2');
      await tid(page, 'send-text').click();
      await page.evaluate(() => window.wsechodConsole.sendRandom(70000));
      await page.waitForFunction(() => window.wsechodConsole.state().received === 2);
      s = await state(page);
      assert.deepEqual([s.matched, s.mismatched], [2, 0]);

      const more = await page.evaluate(openMore, { url: daemon.url, n: SOCKETS - 1 });
      for (const [i, r] of more.entries()) {
        assert.deepEqual({ text: r.text, binary: r.binary }, { text: true, binary: true }, `socket ${i + 1}`);
        assert.match(r.extensions, /^permessage-deflate/, `socket ${i + 1}`);
      }

      // All of it came over one TCP connection: the page and every socket.
      const want = {
        'wsechod_handshakes_total{http="2"}': SOCKETS,
        'wsechod_handshakes_total{http="1.1"}': 0,
        'wsechod_http2_connections_total': 1,
        'wsechod_http2_connections': 1,
        'wsechod_http2_streams': SOCKETS,
        'wsechod_connections{state="open"}': SOCKETS,
        'wsechod_connections_ended_total{state="closed"}': 0,
      };
      const get = await scrape(daemon);
      assert.deepEqual(values(get), want);
      // The TCP connection, the page's stream and the sockets' streams are all accepted; the
      // TCP connection is accounted for as an HTTP/2 connection, the page as an abort
      // (console_page), the sockets as open.
      const books = bookkeeping(get);
      assert.equal(books.accepted, books.accounted, `connection bookkeeping: ${JSON.stringify(books)}`);

      await tid(page, 'close').click();
      await page.waitForFunction(() => window.wsechodConsole.state().readyState === 'closed');
      assert.deepEqual((await state(page)).close, { code: 1000, reason: '', wasClean: true });
      const closes = await page.evaluate(closeMore);
      assert.deepEqual(closes, Array(SOCKETS - 1).fill({ code: 1000, reason: 'bye', wasClean: true }));
      // (Not wsechod_http2_connections: the daemon closes a connection without a stream after
      // [server] handshake_timeout, and Chromium may close it sooner.)
      const after = {
        ...want,
        'wsechod_http2_connections': undefined,
        'wsechod_http2_streams': 0,
        'wsechod_connections{state="open"}': 0,
        'wsechod_connections_ended_total{state="closed"}': SOCKETS,
      };
      const end = await waitForMetrics(daemon, (g) => {
        const v = values(g);
        return Object.keys(after).every((k) => after[k] === undefined || v[k] === after[k]);
      }, (g) => JSON.stringify(values(g)));
      const endBooks = bookkeeping(end);
      assert.equal(endBooks.accepted, endBooks.accounted, `connection bookkeeping: ${JSON.stringify(endBooks)}`);
    },
  },
];
