/**
 * The Node driver of the browser test (tests/tests/client_browser.rs): serves page.html and
 * the built bundle (../dist/switchboard.min.js) over http on a free loopback port, reports
 * `{"step":"serving","port"}`, then on `{"cmd":"open","urls":[...],"token","topic"}` launches
 * Chromium headless (puppeteer-core; `CHROMIUM` or /usr/bin/chromium) on the page and relays
 * the page's reports as JSON lines; `{"cmd":"collect","count"}` asks the page for what it
 * received.
 */

import { createServer } from "node:http";
import { readFileSync, existsSync } from "node:fs";
import { fileURLToPath } from "node:url";
import puppeteer from "puppeteer-core";
import { command, fail, report } from "./util.mjs";

const here = (p) => fileURLToPath(new URL(p, import.meta.url));
const bundle = here("../dist/switchboard.min.js");
if (!existsSync(bundle)) fail(new Error(`${bundle} is missing: run npm ci && npm run build in clients/js`));
const chromium = process.env.CHROMIUM || "/usr/bin/chromium";
if (!existsSync(chromium)) fail(new Error(`${chromium} is missing: install Debian's chromium (apt-get install chromium)`));

const files = {
  "/page.html": ["text/html; charset=utf-8", readFileSync(here("./page.html"))],
  "/switchboard.min.js": ["text/javascript; charset=utf-8", readFileSync(bundle)],
};
const server = createServer((req, res) => {
  const path = new URL(req.url, "http://x").pathname;
  if (path === "/favicon.ico") {
    res.writeHead(204).end();
    return;
  }
  const f = files[path];
  if (!f) {
    res.writeHead(404).end();
    return;
  }
  res.writeHead(200, { "content-type": f[0], "cache-control": "no-store" }).end(f[1]);
});
await new Promise((r) => server.listen(0, "127.0.0.1", r));
const port = server.address().port;
report({ step: "serving", port });

const open = await command();
const browser = await puppeteer.launch({
  executablePath: chromium,
  headless: true,
  args: ["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"],
});
const page = await browser.newPage();
page.on("console", (m) => process.stderr.write(`[page] ${m.text()}\n`));
page.on("pageerror", (e) => fail(e));
await page.exposeFunction("sbReport", (line) => {
  const v = JSON.parse(line);
  report(v);
  if (v.step === "error") process.exit(1);
});
const q = new URLSearchParams({ urls: open.urls.join(","), token: open.token, topic: open.topic });
await page.goto(`http://127.0.0.1:${port}/page.html?${q}`);

const { count } = await command();
const out = await page.evaluate((n) => window.sbCollect(n), count);
report(JSON.parse(out));
await browser.close();
server.close();
process.exit(0);
