// The console page (src/console/console.html) against the real daemon, in Chromium.
//
// The daemon serves the page itself at [console] path (/console), and the page connects to
// the daemon's WebSocket path on the origin that served it. It is read through its test hook,
// window.wsechodConsole, and through its data-testid attributes. One Node server on loopback
// serves the source file under another origin, for the test of a socket that cannot be
// reached.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { closedPort, root, screenshots, serveStatic, startDaemon, withTimeout } from './lib.mjs';

const html = fs.readFileSync(path.join(root, 'src/console/console.html'), 'utf8');
const META = '<meta name="wsechod-ws-path" content="/ws">';

export async function before() {
  assert.ok(html.includes(META), `console.html must carry ${META}: the daemon substitutes its path there`);
  const daemon = await startDaemon({ WSECHOD_SERVER__SUBPROTOCOLS: 'echo.v1' });
  const web = await serveStatic({ '/console.html': { body: html, type: 'text/html; charset=utf-8' } });
  return { daemon, web };
}

const tid = (page, id) => page.getByTestId(id);
const state = (page) => page.evaluate(() => window.wsechodConsole.state());
const log = (page) => page.evaluate(() => window.wsechodConsole.log());

/** Opens the page the daemon serves at /console (plus `query`). */
async function openConsole(page, daemon, query = {}) {
  const q = new URLSearchParams(query).toString();
  const url = `${daemon.origin}/console${q ? `?${q}` : ''}`;
  assert.equal((await page.goto(url)).status(), 200, `GET ${url}`);
}

/** Waits for the page's socket to leave "connecting"; throws unless it is then open. */
async function waitOpen(page) {
  await page.waitForFunction(() => window.wsechodConsole.state().readyState !== 'connecting');
  const s = await state(page);
  if (s.readyState !== 'open') throw new Error(`the page's socket is ${s.readyState}, not open: ${JSON.stringify(s)}`);
}

const waitState = (page, rs) =>
  page.waitForFunction((want) => window.wsechodConsole.state().readyState === want, rs);

const TEXT = 'hello 안녕하세요 wsechod';
const FILE = Buffer.from(Array.from({ length: 3000 }, (_, i) => (i * 7 + (i >> 8)) & 255));

export const tests = [
  {
    name: 'echoes Korean text and a binary file, marks both as matching, closes with 4000',
    async run({ page, fixture: { daemon } }) {
      await openConsole(page, daemon);
      await waitOpen(page);
      let s = await state(page);
      assert.equal(s.url, daemon.url, 'the page connects to its own origin and the daemon\'s path');
      assert.equal(s.httpVersion, 'http/1.1');
      assert.equal(await tid(page, 'http-version').textContent(), 'http/1.1');
      assert.match(s.extensions, /^permessage-deflate/);
      assert.equal(await tid(page, 'extensions').textContent(), s.extensions);
      assert.equal(await tid(page, 'protocol').textContent(), '(none)');

      await tid(page, 'text').fill(TEXT);
      await tid(page, 'send-text').click();
      await tid(page, 'file').setInputFiles({ name: 'sample.bin', mimeType: 'application/octet-stream', buffer: FILE });
      await tid(page, 'send-file').click();
      // The file is read asynchronously: wait for its send, so the order below holds.
      await page.waitForFunction(() => window.wsechodConsole.state().sent === 2);
      await tid(page, 'random-n').fill('100');
      await tid(page, 'send-random').click();
      await page.waitForFunction(() => window.wsechodConsole.state().received === 3);

      s = await state(page);
      assert.deepEqual([s.sent, s.received, s.matched, s.mismatched, s.pending], [3, 3, 3, 0, 0]);
      const got = (await log(page)).filter((e) => e.dir === 'received')
        .map(({ type, size, match, prefix }) => ({ type, size, match, prefix }));
      assert.deepEqual(got, [
        { type: 'text', size: Buffer.byteLength(TEXT), match: true, prefix: undefined },
        { type: 'binary', size: FILE.length, match: true, prefix: undefined },
        { type: 'binary', size: 100, match: true, prefix: undefined },
      ]);
      // What a person sees: three echoes marked ✓, the Korean text, its UTF-8 size.
      const echoed = page.locator('tr[data-dir=received]');
      assert.equal(await echoed.count(), 3);
      for (let i = 0; i < 3; i++) assert.match(await echoed.nth(i).locator('td').nth(4).textContent(), /^✓ \d+ ms$/);
      const textRow = await echoed.nth(0).locator('td').allTextContents();
      assert.equal(textRow[3], String(Buffer.byteLength(TEXT)));
      assert.equal(textRow[5], TEXT);
      const fileRow = await echoed.nth(1).locator('td').allTextContents();
      assert.equal(fileRow[5], `${FILE.subarray(0, 16).toString('hex').match(/../g).join(' ')} …`);

      const reason = 'done 안녕';
      await tid(page, 'close-code').fill('4000');
      await tid(page, 'close-reason').fill(reason);
      await tid(page, 'close').click();
      await waitState(page, 'closed');
      assert.deepEqual((await state(page)).close, { code: 4000, reason, wasClean: true });
      assert.equal(await tid(page, 'closed-code').textContent(), '4000');
      assert.equal(await tid(page, 'closed-reason').textContent(), reason);
      assert.equal(await tid(page, 'closed-clean').textContent(), 'true');
      assert.equal(await tid(page, 'status').textContent(), 'Closed (4000)');
      if (screenshots) await page.screenshot({ path: path.join(root, 'docs/console.png'), fullPage: true });
    },
  },
  {
    name: 'refuses a bad close code or reason, then reconnects with a subprotocol',
    async run({ page, fixture: { daemon } }) {
      await openConsole(page, daemon);
      await waitOpen(page);
      await tid(page, 'close-code').fill('1005');
      await tid(page, 'close').click();
      assert.match(await tid(page, 'close-error').textContent(), /1000 or 3000–4999/);
      await tid(page, 'close-code').fill('4001');
      await tid(page, 'close-reason').fill('é'.repeat(62));
      await tid(page, 'close').click();
      assert.match(await tid(page, 'close-error').textContent(), /124 bytes/);
      assert.equal((await state(page)).readyState, 'open');

      await tid(page, 'close-reason').fill('é'.repeat(61));
      await tid(page, 'close').click();
      await waitState(page, 'closed');
      assert.deepEqual((await state(page)).close, { code: 4001, reason: 'é'.repeat(61), wasClean: true });
      assert.equal(await tid(page, 'close-error').isVisible(), false);

      await tid(page, 'protocols').fill('chat, echo.v1');
      await tid(page, 'connect').click();
      await waitOpen(page);
      assert.equal((await state(page)).protocol, 'echo.v1');
      assert.equal(await tid(page, 'protocol').textContent(), 'echo.v1');
      await tid(page, 'text').fill('again, from the keyboard');
      await tid(page, 'text').press('Control+Enter');
      await page.waitForFunction(() => window.wsechodConsole.state().matched === 1);
      assert.equal((await state(page)).close, null, 'a new connection forgets the old close');
    },
  },
  {
    name: 'shows the failure when the socket cannot be reached',
    async run({ page, fixture: { web } }) {
      // The source file from another loopback server, pointed at a port nothing listens on.
      const url = `ws://127.0.0.1:${await closedPort()}/ws`;
      await page.goto(`${web.url}/console.html?${new URLSearchParams({ url })}`);
      // The check the other tests rely on must fail here.
      await assert.rejects(waitOpen(page), /socket is closed, not open/);
      const s = await state(page);
      assert.equal(s.close.code, 1006);
      assert.equal(s.close.wasClean, false);
      assert.match(s.error, /failed/);
      assert.equal(await tid(page, 'error').isVisible(), true);
      assert.equal(await tid(page, 'closed-code').textContent(), '1006');
      assert.ok(!(await log(page)).some((e) => e.type === 'open'), 'no open event');
      assert.equal(await tid(page, 'send-text').isDisabled(), true);
    },
  },
  {
    name: 'the daemon serves the page at [console] path with its [server] path in the meta tag',
    async run({ page, fixture: { daemon } }) {
      // With the default path the page is the source file, byte for byte.
      const res = await withTimeout(fetch(`${daemon.origin}/console`), 5000, 'GET /console');
      assert.equal(res.status, 200);
      assert.match(res.headers.get('content-type'), /^text\/html/);
      assert.equal(await res.text(), html, 'the daemon serves src/console/console.html as it is');

      // Other paths: the page connects to the one the daemon writes in, '&' escaped.
      const other = await startDaemon({ WSECHOD_SERVER__PATH: '/echo&x', WSECHOD_CONSOLE__PATH: '/.ws' });
      assert.equal((await withTimeout(fetch(`${other.origin}/console`), 5000, 'GET /console')).status, 404);
      assert.equal((await page.goto(`${other.origin}/.ws?connect=0`)).status(), 200);
      assert.equal((await state(page)).readyState, 'idle');
      assert.equal(await tid(page, 'url').inputValue(), `ws://127.0.0.1:${other.port}/echo&x`);
      await tid(page, 'connect').click();
      await waitOpen(page);
      assert.equal((await state(page)).url, other.url);
      await page.evaluate(() => window.wsechodConsole.sendText('path /echo&x'));
      await page.waitForFunction(() => window.wsechodConsole.state().matched === 1);
    },
  },
];
