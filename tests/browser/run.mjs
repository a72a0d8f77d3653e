#!/usr/bin/env node
// tests/browser/run.mjs: runs tests/browser/*.test.mjs: in Debian's headless Chromium, and
// Node clients (npm ws) that need no page, directly and through HAProxy and nginx.
//
//   tests/browser/install.sh && node tests/browser/run.mjs [WORD...]
//
// WORDs keep only the tests whose "file › name" contains one of them. A test file exports
//   tests: [{ name, run(t), timeout?, context? }]   t = { page, context, fixture }
//   (context: options for browser.newContext, e.g. { ignoreHTTPSErrors: true })
//   before(): optional, run once before its tests; what it returns is t.fixture
// Each test gets a fresh browser context (a test may ignore it). Processes and servers started
// through lib.mjs are ended after each file. Every wait is bounded: BROWSER_TEST_TIMEOUT_MS per
// test (default 30 s; a test's own timeout wins), 10 s per page action, BROWSER_RUN_TIMEOUT_MS
// for the whole run (default 10 min).
// BROWSER_DAEMON_BIN replaces target/release/wsechod; BROWSER_SCREENSHOTS=1 writes docs/*.png.
// The last line is "browser: N passed, N failed"; the exit status is 1 if any test failed.
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { endAll, killAllNow, outputs, requirePinned, withTimeout } from './lib.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
const CHROMIUM = '/usr/bin/chromium';
const ARGS = ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync'];
const TEST_TIMEOUT = Number(process.env.BROWSER_TEST_TIMEOUT_MS || 30000);
const ACTION_TIMEOUT = 10000;
const RUN_TIMEOUT = Number(process.env.BROWSER_RUN_TIMEOUT_MS || 600000);

const filters = process.argv.slice(2);
let passed = 0;
let failed = 0;
let browser = null;

function finish(code) {
  killAllNow();
  process.exit(code);
}
for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP']) {
  process.on(sig, () => {
    console.log(`\nbrowser: stopped by ${sig}`);
    finish(130);
  });
}
setTimeout(() => {
  console.log(`browser: the whole run took over ${RUN_TIMEOUT} ms, stopping`);
  console.log(`browser: ${passed} passed, ${failed + 1} failed`);
  finish(1);
}, RUN_TIMEOUT).unref();

const indent = (s, n = 6) => String(s).replace(/^/gm, ' '.repeat(n));

async function runTest(test, fixture) {
  const pageErrors = [];
  const consoleLines = [];
  const started = Date.now();
  let context;
  try {
    context = await withTimeout(browser.newContext({ viewport: { width: 900, height: 900 }, ...test.context }), ACTION_TIMEOUT, 'new context');
    context.setDefaultTimeout(ACTION_TIMEOUT);
    context.setDefaultNavigationTimeout(ACTION_TIMEOUT);
    const page = await context.newPage();
    page.on('pageerror', (e) => pageErrors.push(e.message));
    page.on('console', (m) => consoleLines.push(`${m.type()}: ${m.text()}`));
    await withTimeout(test.run({ page, context, fixture }), test.timeout || TEST_TIMEOUT, 'the test');
    if (pageErrors.length) throw new Error(`uncaught error in the page: ${pageErrors.join('; ')}`);
    passed++;
    console.log(`  ok    ${test.name} (${Date.now() - started} ms)`);
  } catch (e) {
    failed++;
    console.log(`  FAIL  ${test.name} (${Date.now() - started} ms)`);
    console.log(indent(e.stack || e));
    if (consoleLines.length) console.log(indent(`--- page console ---\n${consoleLines.slice(-20).join('\n')}`));
    const out = outputs();
    if (out) console.log(indent(out));
  } finally {
    if (context) await withTimeout(context.close(), ACTION_TIMEOUT, 'close context').catch(() => {});
  }
}

async function main() {
  const files = fs.readdirSync(here).filter((f) => f.endsWith('.test.mjs')).sort();
  const { module: playwright, version } = requirePinned('playwright-core');
  if (!fs.existsSync(CHROMIUM)) throw new Error(`${CHROMIUM} is missing: run tests/browser/install.sh`);
  const t0 = Date.now();
  browser = await withTimeout(playwright.chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: ARGS,
    timeout: 30000,
    handleSIGINT: false,
    handleSIGTERM: false,
    handleSIGHUP: false,
  }), 40000, 'launch chromium');
  console.log(`browser: Chromium ${browser.version()}, playwright-core ${version}, launched in ${Date.now() - t0} ms`);

  let selected = 0;
  for (const file of files) {
    const mod = await import(pathToFileURL(path.join(here, file)));
    const tests = (mod.tests || []).filter((t) => !filters.length || filters.some((w) => `${file} › ${t.name}`.includes(w)));
    if (!tests.length) continue;
    selected += tests.length;
    console.log(file);
    try {
      let fixture;
      try {
        fixture = mod.before ? await withTimeout(mod.before(), TEST_TIMEOUT, `${file} before()`) : undefined;
      } catch (e) {
        failed += tests.length;
        console.log(`  FAIL  before(), so its ${tests.length} tests did not run`);
        console.log(indent(e.stack || e));
        continue;
      }
      for (const test of tests) await runTest(test, fixture);
    } finally {
      await endAll();
    }
  }
  if (!selected) {
    failed++;
    console.log(`browser: no test selected${filters.length ? ` by ${filters.join(' ')}` : ''}`);
  }
  await withTimeout(browser.close(), ACTION_TIMEOUT, 'close chromium').catch((e) => console.log(`browser: ${e.message}`));
}

try {
  await main();
} catch (e) {
  failed++;
  console.log(`browser: ${e.stack || e}`);
}
console.log(`browser: ${passed} passed, ${failed} failed`);
finish(failed ? 1 : 0);
