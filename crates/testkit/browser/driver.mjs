// A headless browser for Gatehouse's web-console tests, driven by crates/testkit/src/browser.rs.
//
//   node driver.mjs [<chromium executable>]
//
// Launches the machine's chromium (the argument, else $GATEHOUSE_TEST_CHROMIUM, else
// /usr/bin/chromium) once through playwright-core, prints `ready` on stdout, then answers one
// JSON object per line on stdin with one JSON line on stdout (see `commands` below; the loop is
// `serve` in ../lineproto.mjs). A request may carry an "id", which its answer repeats. Failures
// answer {"error": "..."}. Closing stdin closes the browser and ends the driver. Diagnostics go
// to stderr; stdout carries nothing but the protocol.
//
// Every page command names a browser context ("context": "alice"): a context is made on first
// use with its own cookies and storage, and holds one page. Selectors are Playwright selectors
// (CSS, `text=Sign in`, `role=button[name="Approve"]`, ...). Each context's console messages and
// uncaught page errors are written to stderr prefixed with its name; the page errors are also
// kept, for the `errors` command.
//
// playwright-core never downloads a browser by itself, and this script never asks it to: the
// executable is always given.

import { chromium } from 'playwright-core';

import { serve } from '../lineproto.mjs';

const DEFAULT_EXECUTABLE = '/usr/bin/chromium';
const DEFAULT_TIMEOUT_MS = 10_000;
const WAIT_STATES = ['visible', 'attached', 'detached', 'hidden'];
// How often `wait_text` looks at the text again.
const POLL_MS = 50;

// Anything a dependency logs must not end up in the protocol stream.
console.log = console.error;
console.info = console.error;
console.debug = console.error;

function log(message) {
  process.stderr.write(`driver.mjs: ${message}\n`);
}

function fail(message) {
  log(message);
  process.exit(1);
}

const executablePath = process.argv[2] || process.env.GATEHOUSE_TEST_CHROMIUM || DEFAULT_EXECUTABLE;

let browser;
try {
  browser = await chromium.launch({
    executablePath,
    headless: true,
    args: [
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
  });
} catch (err) {
  fail(`cannot launch ${executablePath}: ${err?.stack ?? err}`);
}
let closing = false;
browser.on('disconnected', () => {
  if (!closing) fail(`${executablePath} exited or closed its connection`);
});
log(`launched ${executablePath} ${browser.version()}`);

/** name -> { context, page, errors }; made on first use. */
const contexts = new Map();

async function session(name) {
  if (typeof name !== 'string' || name === '') {
    throw new Error(`"context" must be a non-empty string, got ${JSON.stringify(name)}`);
  }
  let entry = contexts.get(name);
  if (entry === undefined) {
    const context = await browser.newContext();
    context.setDefaultTimeout(DEFAULT_TIMEOUT_MS);
    context.setDefaultNavigationTimeout(DEFAULT_TIMEOUT_MS);
    const page = await context.newPage();
    entry = { context, page, errors: [] };
    page.on('console', (msg) => {
      process.stderr.write(`[${name}] console.${msg.type()}: ${msg.text()}\n`);
    });
    page.on('pageerror', (err) => {
      entry.errors.push(String(err?.message ?? err));
      process.stderr.write(`[${name}] pageerror: ${err?.stack ?? err}\n`);
    });
    contexts.set(name, entry);
  }
  return entry;
}

function str(req, field) {
  const value = req[field];
  if (typeof value !== 'string') {
    throw new Error(`"${field}" must be a string, got ${JSON.stringify(value)}`);
  }
  return value;
}

function timeout(req) {
  const ms = req.timeout_ms;
  if (ms === undefined || ms === null) return DEFAULT_TIMEOUT_MS;
  if (!Number.isInteger(ms) || ms < 0) {
    throw new Error(`"timeout_ms" must be a non-negative integer, got ${JSON.stringify(ms)}`);
  }
  return ms;
}

const commands = {
  async goto(req) {
    const { page } = await session(req.context);
    const url = str(req, 'url');
    let response;
    // After a failed navigation (a refused connection, say) Chromium loads its own error page a
    // moment later, and a second or so after that reloads the failed address by itself; a
    // navigation under way meanwhile is interrupted by either. That is not this navigation's
    // failure: go again once the browser's own navigation is in (a few times at most).
    for (let attempt = 1; ; attempt += 1) {
      try {
        response = await page.goto(url);
        break;
      } catch (err) {
        const message = String(err?.message);
        const byErrorPage = message.includes('interrupted by another navigation to "chrome-error://');
        // Playwright names the address as the browser normalised it (a trailing slash added).
        const normalised = URL.canParse(url) ? new URL(url).href : url;
        const byReload = message.includes(`interrupted by another navigation to "${normalised}"`);
        if ((!byErrorPage && !byReload) || attempt === 3) throw err;
        if (byErrorPage) await page.waitForURL(/^chrome-error:/, { timeout: 5000 }).catch(() => {});
        else await page.waitForLoadState('load', { timeout: 5000 }).catch(() => {});
      }
    }
    // null for a same-document navigation (only the fragment changed).
    return { status: response === null ? null : response.status(), url: page.url() };
  },

  async click(req) {
    const { page } = await session(req.context);
    await page.click(str(req, 'selector'));
    return {};
  },

  async fill(req) {
    const { page } = await session(req.context);
    await page.fill(str(req, 'selector'), str(req, 'value'));
    return {};
  },

  async select(req) {
    const { page } = await session(req.context);
    const selected = await page.selectOption(str(req, 'selector'), str(req, 'value'));
    return { selected };
  },

  async check(req) {
    const { page } = await session(req.context);
    await page.check(str(req, 'selector'));
    return {};
  },

  async press(req) {
    const { page } = await session(req.context);
    await page.press(str(req, 'selector'), str(req, 'key'));
    return {};
  },

  async text(req) {
    const { page } = await session(req.context);
    return { text: await page.locator(str(req, 'selector')).first().innerText() };
  },

  async texts(req) {
    const { page } = await session(req.context);
    return { texts: await page.locator(str(req, 'selector')).allInnerTexts() };
  },

  async count(req) {
    const { page } = await session(req.context);
    return { count: await page.locator(str(req, 'selector')).count() };
  },

  async wait(req) {
    const { page } = await session(req.context);
    const state = req.state ?? 'visible';
    if (!WAIT_STATES.includes(state)) {
      throw new Error(`"state" must be one of ${WAIT_STATES.join(', ')}, got ${JSON.stringify(state)}`);
    }
    await page.locator(str(req, 'selector')).first().waitFor({ state, timeout: timeout(req) });
    return {};
  },

  /** Waits until the first match's innerText contains `text`. */
  async wait_text(req) {
    const { page } = await session(req.context);
    const selector = str(req, 'selector');
    const text = str(req, 'text');
    const ms = timeout(req);
    const deadline = Date.now() + ms;
    const first = page.locator(selector).first();
    // What the first match read last time, for the error message.
    let last = 'no element matched';
    for (;;) {
      const left = deadline - Date.now();
      if ((await first.count()) > 0) {
        try {
          const seen = await first.innerText({ timeout: Math.max(1, Math.min(left, 1000)) });
          if (seen.includes(text)) return { text: seen };
          last = `it read ${JSON.stringify(seen)}`;
        } catch (err) {
          last = `its text could not be read: ${String(err?.message ?? err).split('\n')[0]}`;
        }
      } else {
        last = 'no element matched';
      }
      if (Date.now() >= deadline) {
        throw new Error(`${selector} did not contain ${JSON.stringify(text)} within ${ms} ms: ${last}`);
      }
      await new Promise((resolve) => setTimeout(resolve, Math.min(POLL_MS, Math.max(0, deadline - Date.now()))));
    }
  },

  async url(req) {
    const { page } = await session(req.context);
    return { url: page.url() };
  },

  async title(req) {
    const { page } = await session(req.context);
    return { title: await page.title() };
  },

  async screenshot(req) {
    const { page } = await session(req.context);
    const path = str(req, 'path');
    await page.screenshot({ path, fullPage: req.full_page === true });
    return { path };
  },

  async cookies(req) {
    const { context } = await session(req.context);
    const cookies = (await context.cookies()).map((c) => ({
      name: c.name,
      value: c.value,
      domain: c.domain,
      path: c.path,
      expires: c.expires,
      httpOnly: c.httpOnly,
      secure: c.secure,
      sameSite: c.sameSite,
    }));
    return { cookies };
  },

  async eval(req) {
    const { page } = await session(req.context);
    const value = await page.evaluate(str(req, 'expression'));
    return { value: value === undefined ? null : value };
  },

  async errors(req) {
    const { errors } = await session(req.context);
    return { errors: [...errors] };
  },

  async close_context(req) {
    const name = req.context;
    const entry = contexts.get(name);
    if (entry === undefined) return { closed: false };
    contexts.delete(name);
    await entry.context.close();
    return { closed: true };
  },
};

process.stdout.write('ready\n');

await serve('driver.mjs', commands);

// stdin closed: the test process is done (or gone).
closing = true;
await browser.close().catch(() => {});
process.exit(0);
