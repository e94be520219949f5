// The shared harness of the end-to-end and browser tests: real `herald-server`
// processes on loopback (SQLite or PostgreSQL + Redis), a real nginx rendered from
// ops/nginx/herald.conf, client tokens minted here, and helpers to wait for and
// check what a client received.
//
// Every process a test starts is registered with the test's Scope and killed when the
// scope closes (also when the test fails or times out); a process-exit hook kills
// whatever is left. Every wait here has a deadline.
//
// Needs: the herald-server binary (HERALD_SERVER_BIN, default
// <repo>/target/debug/herald-server: `cargo build -p herald-server`), PostgreSQL on
// 127.0.0.1:5432 (trust auth, user root; each cluster test creates and drops a database
// `herald_js_<random>`), Redis (HERALD_TEST_REDIS_URL, default redis://127.0.0.1:6379;
// each cluster test uses its own key prefix and deletes its keys), nginx (on PATH or
// /usr/sbin/nginx), psql, redis-cli and curl; the browser test also needs Chromium
// (HERALD_CHROMIUM, default /usr/bin/chromium). Screenshots go to test/output/.

import { spawn, execFile } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { fileURLToPath, pathToFileURL } from 'node:url';
import WebSocket from 'ws';

const HERE = path.dirname(fileURLToPath(import.meta.url));
/** clients/js */
export const JS_ROOT = path.resolve(HERE, '..');
/** the Rust workspace */
export const REPO_ROOT = path.resolve(JS_ROOT, '../..');
export const SERVER_BIN =
  process.env.HERALD_SERVER_BIN || path.join(REPO_ROOT, 'target/debug/herald-server');
export const NGINX_TEMPLATE = path.join(REPO_ROOT, 'ops/nginx/herald.conf');
export const OUTPUT_DIR = path.join(JS_ROOT, 'test/output');
export const LIBRARY_PATH = path.join(JS_ROOT, 'src/herald.js');

const tag = () => crypto.randomBytes(6).toString('hex');
// At least 32 bytes, as every node requires.
export const JWT_SECRET = `jwt-${tag()}-${tag()}-${tag()}`;
export const API_KEY = `api-${tag()}`;
export const ADMIN_TOKEN = `admin-${tag()}`;
export const REDIS_URL = process.env.HERALD_TEST_REDIS_URL || 'redis://127.0.0.1:6379';
export const PG_HOST = '127.0.0.1';
export const PG_USER = 'root';

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// ---------------------------------------------------------------------------------
// Processes: every child is remembered so that a dying test process kills them all.

const children = new Set();
process.on('exit', () => {
  for (const c of children) {
    try {
      process.kill(c.pid, c.exitSignal || 'SIGKILL');
    } catch {}
  }
});

function track(child, exitSignal) {
  child.exitSignal = exitSignal;
  children.add(child);
  child.once('exit', () => children.delete(child));
  return child;
}

/** A bounded ring of a process's output, to show when a test fails. */
class LogTail {
  constructor(limit = 64 * 1024) {
    this.limit = limit;
    this.text = '';
  }
  push(chunk) {
    this.text += chunk.toString();
    if (this.text.length > this.limit) this.text = '…' + this.text.slice(-this.limit);
  }
}

function waitExit(child, ms) {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve(true);
  return new Promise((resolve) => {
    const t = setTimeout(() => resolve(false), ms);
    child.once('exit', () => {
      clearTimeout(t);
      resolve(true);
    });
  });
}

function run(cmd, args, { timeoutMs = 15000, input } = {}) {
  return new Promise((resolve, reject) => {
    const c = execFile(cmd, args, { timeout: timeoutMs }, (err, stdout, stderr) => {
      if (err) reject(new Error(`${cmd} ${args.join(' ')}: ${err.message}\n${stderr}`));
      else resolve(stdout);
    });
    if (input !== undefined) c.stdin.end(input);
  });
}

// ---------------------------------------------------------------------------------
// Scope: what one test started, torn down in reverse order.

export class Scope {
  constructor(name) {
    this.name = name;
    this.cleanups = [];
    this.logSources = [];
  }
  /** Runs `fn` when the scope closes (last registered, first run). */
  defer(fn) {
    this.cleanups.push(fn);
  }
  /** `fn()` returns text shown when the test fails. */
  addLog(name, fn) {
    this.logSources.push([name, fn]);
  }
  logs() {
    return this.logSources
      .map(([name, fn]) => {
        let text;
        try {
          text = fn();
        } catch (e) {
          text = `(log unavailable: ${e.message})`;
        }
        return `----- ${name}\n${text || '(empty)'}`;
      })
      .join('\n');
  }
  async close() {
    while (this.cleanups.length) {
      const fn = this.cleanups.pop();
      try {
        await withTimeout(Promise.resolve().then(fn), 20000, 'cleanup step');
      } catch (e) {
        console.error(`[${this.name}] cleanup failed: ${e.stack || e}`);
      }
    }
  }
}

export function withTimeout(promise, ms, what) {
  let timer;
  return Promise.race([
    promise,
    new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error(`${what}: timed out after ${ms} ms`)), ms);
    }),
  ]).finally(() => clearTimeout(timer));
}

/**
 * A node:test test with a Scope: the body is bounded by `timeoutMs`, the scope is
 * always closed, and on failure the logs of every process are appended to the error.
 */
export function e2e(name, { timeoutMs = 60000, skip, todo } = {}, body) {
  return test(name, { timeout: timeoutMs + 30000, skip, todo }, async (t) => {
    const scope = new Scope(name);
    try {
      await withTimeout(body(scope, t), timeoutMs, `test "${name}"`);
    } catch (e) {
      const logs = scope.logs();
      if (e && typeof e === 'object') {
        try {
          e.message = `${e.message}\n===== logs of "${name}"\n${logs}`;
        } catch {
          console.error(logs);
        }
      }
      throw e;
    } finally {
      await scope.close();
    }
  });
}

// ---------------------------------------------------------------------------------
// Ports, tokens.

const handedOut = new Set();

/** A free TCP port on 127.0.0.1 (bound to port 0, then released), never the same twice. */
export async function freePort() {
  for (;;) {
    const port = await new Promise((resolve, reject) => {
      const s = net.createServer();
      s.unref();
      s.on('error', reject);
      s.listen(0, '127.0.0.1', () => {
        const { port: p } = s.address();
        s.close(() => resolve(p));
      });
    });
    if (!handedOut.has(port)) {
      handedOut.add(port);
      return port;
    }
  }
}

const b64url = (buf) => Buffer.from(buf).toString('base64url');

/** An HS256 client JWT: `sub`, `exp` = now + ttlS, optional `groups`. */
export function mintToken(sub, { ttlS = 3600, groups, secret = JWT_SECRET, exp } = {}) {
  const header = { alg: 'HS256', typ: 'JWT' };
  const claims = { sub, exp: exp ?? Math.floor(Date.now() / 1000) + ttlS };
  if (groups) claims.groups = groups;
  const signing = `${b64url(JSON.stringify(header))}.${b64url(JSON.stringify(claims))}`;
  const sig = crypto.createHmac('sha256', secret).update(signing).digest();
  return `${signing}.${b64url(sig)}`;
}

// ---------------------------------------------------------------------------------
// PostgreSQL and Redis.

async function psql(sql) {
  return run('psql', ['-h', PG_HOST, '-U', PG_USER, '-d', 'postgres', '-v', 'ON_ERROR_STOP=1', '-qAt', '-c', sql]);
}

/** A database of its own (`herald_js_<random>`), dropped when the scope closes. */
export async function pgDatabase(scope) {
  const name = `herald_js_${tag()}`;
  await psql(`CREATE DATABASE ${name}`);
  scope.defer(() => psql(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`));
  return `postgres://${PG_USER}@${PG_HOST}:5432/${name}`;
}

/** A Redis prefix of its own; its keys are deleted when the scope closes. */
export function redisPrefix(scope) {
  const prefix = `hjs${tag()}`;
  scope.defer(async () => {
    const u = new URL(REDIS_URL);
    const base = ['-h', u.hostname, '-p', u.port || '6379'];
    for (const pattern of [`{${prefix}}:*`, `${prefix}:*`]) {
      const keys = (await run('redis-cli', [...base, '--scan', '--pattern', pattern]))
        .split('\n')
        .filter(Boolean);
      if (keys.length) await run('redis-cli', [...base, 'DEL', ...keys]);
    }
  });
  return prefix;
}

export function tempDir(scope, prefix = 'herald-js-') {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
  scope.defer(() => fs.rmSync(dir, { recursive: true, force: true }));
  return dir;
}

// ---------------------------------------------------------------------------------
// Chromium, for the browser tests.

/** Debian's Chromium (`apt-get install chromium`), never a downloaded build. */
const CHROMIUM = process.env.HERALD_CHROMIUM || '/usr/bin/chromium';
const CHROMIUM_ARGS = [
  '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync',
];

/**
 * A headless Chromium with a profile of its own, closed (and the profile removed) with
 * the scope. `options` go to playwright's `launchPersistentContext` (a viewport, say).
 */
export async function launchChromium(scope, options = {}) {
  assert.ok(fs.existsSync(CHROMIUM), `${CHROMIUM} is missing: apt-get install -y chromium`);
  const { chromium } = await import('playwright-core');
  const context = await chromium.launchPersistentContext(tempDir(scope, 'herald-js-chromium-'), {
    executablePath: CHROMIUM,
    headless: true,
    args: CHROMIUM_ARGS,
    ...options,
  });
  scope.defer(() => context.close());
  return context;
}

/** A new tab of `context`, and the uncaught errors on it (shown if the test fails). */
export async function newPage(scope, context) {
  const page = await context.newPage();
  const errors = [];
  page.on('pageerror', (e) => errors.push(String(e.stack || e)));
  scope.addLog('page errors', () => errors.join('\n'));
  return { page, errors };
}

// ---------------------------------------------------------------------------------
// herald-server nodes.

export class HeraldNode {
  /**
   * @param {Scope} scope
   * @param {object} o
   *   name, port, adminPort, dataDir, databaseUrl (default SQLite in dataDir),
   *   redisUrl + redisPrefix (cluster mode), nodeId, args (extra flags), env (extra vars)
   */
  constructor(scope, o) {
    this.scope = scope;
    this.name = o.name || 'node';
    this.port = o.port;
    this.adminPort = o.adminPort;
    this.dataDir = o.dataDir;
    this.databaseUrl = o.databaseUrl || `sqlite://${o.dataDir}/herald.db`;
    this.redisUrl = o.redisUrl;
    this.redisPrefix = o.redisPrefix;
    this.nodeId = o.nodeId || this.name;
    this.args = o.args || [];
    this.env = o.env || {};
    this.log = new LogTail();
    this.child = null;
    this.starts = 0;
    scope.addLog(`${this.name} (herald-server :${this.port}) output`, () => this.log.text);
    scope.defer(() => this.kill9());
  }

  static async create(scope, o = {}) {
    const dataDir = o.dataDir || tempDir(scope, `herald-js-${o.name || 'node'}-`);
    const node = new HeraldNode(scope, {
      ...o,
      dataDir,
      port: o.port || (await freePort()),
      adminPort: o.adminPort || (await freePort()),
    });
    if (o.start !== false) await node.start();
    return node;
  }

  get url() {
    return `http://127.0.0.1:${this.port}`;
  }
  get wsUrl() {
    return `ws://127.0.0.1:${this.port}`;
  }
  get adminUrl() {
    return `http://127.0.0.1:${this.adminPort}`;
  }
  get running() {
    return !!this.child && this.child.exitCode === null && this.child.signalCode === null;
  }

  /** Spawns the process and waits until it serves (admin status 200, /readyz 200). */
  async start({ ready = true } = {}) {
    if (!fs.existsSync(SERVER_BIN)) {
      throw new Error(`${SERVER_BIN} not found: build it (cargo build -p herald-server) or set HERALD_SERVER_BIN`);
    }
    const args = [
      '--listen', `127.0.0.1:${this.port}`,
      '--admin-listen', `127.0.0.1:${this.adminPort}`,
      '--data-dir', this.dataDir,
      '--database-url', this.databaseUrl,
      '--node-id', this.nodeId,
      '--shutdown-drain-s', '1',
      '--db-pool', '4',
    ];
    if (this.redisUrl) args.push('--redis-url', this.redisUrl, '--redis-prefix', this.redisPrefix, '--channels-prefix', '');
    args.push(...this.args);
    const env = {
      ...process.env,
      HERALD_JWT_SECRET: JWT_SECRET,
      HERALD_API_KEY: API_KEY,
      HERALD_ADMIN_TOKEN: ADMIN_TOKEN,
      RUST_LOG: process.env.RUST_LOG || 'info',
      NO_COLOR: '1',
      ...this.env,
    };
    this.starts += 1;
    this.log.push(`===== start #${this.starts}: ${SERVER_BIN} ${args.join(' ')}\n`);
    const child = spawn(SERVER_BIN, args, { env, stdio: ['ignore', 'pipe', 'pipe'] });
    track(child, 'SIGKILL');
    child.stdout.on('data', (d) => this.log.push(d));
    child.stderr.on('data', (d) => this.log.push(d));
    child.on('exit', (code, sig) => this.log.push(`===== exited: code ${code} signal ${sig}\n`));
    this.child = child;
    if (ready) await this.waitReady();
    return this;
  }

  async waitReady(timeoutMs = 20000) {
    const deadline = Date.now() + timeoutMs;
    let last = '';
    while (Date.now() < deadline) {
      if (!this.running) throw new Error(`${this.name} exited during start-up`);
      try {
        const st = await fetch(`${this.adminUrl}/admin/status`, {
          headers: { authorization: `Bearer ${ADMIN_TOKEN}` },
          signal: AbortSignal.timeout(1000),
        });
        if (st.status === 200) {
          const r = await fetch(`${this.url}/readyz`, { signal: AbortSignal.timeout(1000) });
          if (r.status === 200) return;
          last = `readyz ${r.status}`;
        } else last = `admin status ${st.status}`;
      } catch (e) {
        last = e.cause?.code || e.message;
      }
      await sleep(25);
    }
    throw new Error(`${this.name} not ready within ${timeoutMs} ms (last: ${last})`);
  }

  /** SIGKILL, then waits for the exit. */
  async kill9() {
    if (!this.running) return;
    this.child.kill('SIGKILL');
    await waitExit(this.child, 5000);
  }

  /** SIGTERM (the node drains over --shutdown-drain-s), SIGKILL if it lingers. */
  async stop(timeoutMs = 15000) {
    if (!this.running) return;
    this.child.kill('SIGTERM');
    if (!(await waitExit(this.child, timeoutMs))) await this.kill9();
  }

  /** Starts again on the same ports, data dir and database. */
  async restart() {
    await this.kill9();
    return this.start();
  }

  async admin(method, p, body) {
    const r = await fetch(`${this.adminUrl}${p}`, {
      method,
      headers: { authorization: `Bearer ${ADMIN_TOKEN}`, 'content-type': 'application/json' },
      body: body === undefined ? undefined : JSON.stringify(body),
      signal: AbortSignal.timeout(5000),
    });
    const text = await r.text();
    if (r.status >= 300) throw new Error(`${this.name} ${method} ${p}: ${r.status} ${text}`);
    return JSON.parse(text);
  }

  status() {
    return this.admin('GET', '/admin/status');
  }
  drain(windowS) {
    return this.admin('POST', '/admin/drain', { window_s: windowS });
  }
  undrain() {
    return this.admin('POST', '/admin/undrain', {});
  }

  async metricsText() {
    const r = await fetch(`${this.adminUrl}/metrics`, {
      headers: { authorization: `Bearer ${ADMIN_TOKEN}` },
      signal: AbortSignal.timeout(5000),
    });
    return r.text();
  }

  /** The sum of a metric's series whose labels include `labels` (0 when absent). */
  async metric(name, labels = {}) {
    return metricValue(await this.metricsText(), name, labels);
  }

  /** Publishes through this node's API; returns the stored notification's id. */
  publish(user, message) {
    return publish(this.url, user, message);
  }
}

/** The sum of the series of `name` whose labels include `labels`. */
export function metricValue(text, name, labels = {}) {
  let sum = 0;
  for (const line of text.split('\n')) {
    if (line.startsWith('#')) continue;
    const m = line.match(/^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([^}]*)\})?\s+(\S+)/);
    if (!m || m[1] !== name) continue;
    const have = {};
    for (const kv of (m[3] || '').matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) have[kv[1]] = kv[2];
    if (Object.entries(labels).every(([k, v]) => have[k] === String(v))) sum += Number(m[4]);
  }
  return sum;
}

/**
 * POSTs JSON on a connection of its own (no keep-alive). A pooled connection to a node
 * that is restarting can be closed by the node just as a request goes out on it, and a
 * POST that failed that way cannot be retried blindly (it may have been stored): a
 * fresh connection per publish keeps "every publish answered" a statement about Herald.
 * @returns {Promise<{status: number, text: string}>}
 */
function postFresh(url, body, bearer) {
  return new Promise((resolve, reject) => {
    const data = Buffer.from(JSON.stringify(body));
    const req = http.request(
      url,
      {
        method: 'POST',
        agent: false,
        headers: {
          authorization: `Bearer ${bearer}`,
          'content-type': 'application/json',
          'content-length': data.length,
          connection: 'close',
        },
        timeout: 10000,
      },
      (res) => {
        let text = '';
        res.setEncoding('utf8');
        res.on('data', (c) => (text += c));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, text }));
        res.on('error', reject);
      },
    );
    req.on('timeout', () => req.destroy(new Error(`POST ${url}: no answer within 10 s`)));
    req.on('error', reject);
    req.end(data);
  });
}

/** POST /api/v1/notifications on `base` (a node or nginx); returns the new id. */
export async function publish(base, user, message) {
  const { status, text } = await postFresh(`${base}/api/v1/notifications`, { user, message }, API_KEY);
  if (status !== 201) throw new Error(`publish to ${user} via ${base}: ${status} ${text}`);
  const id = JSON.parse(text).id;
  assert.ok(Number.isSafeInteger(id) && id > 0, `publish answered id ${id}`);
  return id;
}

/** POST /api/v1/groups/<group>/events on `base`: an ephemeral event (202). */
export async function publishEvent(base, group, payload) {
  const { status, text } = await postFresh(`${base}/api/v1/groups/${group}/events`, { payload }, API_KEY);
  if (status !== 202) throw new Error(`event to ${group} via ${base}: ${status} ${text}`);
  return JSON.parse(text);
}

/**
 * Two or more nodes sharing a fresh PostgreSQL database and a fresh Redis prefix.
 * Nodes are named A, B, C... (node ids `A`..), started together.
 */
export async function startCluster(scope, n = 2, { args = [], env = {} } = {}) {
  const databaseUrl = await pgDatabase(scope);
  const prefix = redisPrefix(scope);
  const nodes = [];
  for (let i = 0; i < n; i++) {
    const name = String.fromCharCode(65 + i);
    nodes.push(
      await HeraldNode.create(scope, {
        name,
        databaseUrl,
        redisUrl: REDIS_URL,
        redisPrefix: prefix,
        args,
        env,
        start: false,
      }),
    );
  }
  // The first start runs the migrations; the others then start together.
  await nodes[0].start();
  await Promise.all(nodes.slice(1).map((nd) => nd.start()));
  return { nodes, databaseUrl, prefix };
}

// ---------------------------------------------------------------------------------
// nginx: ops/nginx/herald.conf rendered as server/tests/it/nginx.rs does.

export function nginxBinary() {
  const dirs = (process.env.PATH || '').split(':').filter(Boolean);
  for (const p of [...dirs.map((d) => path.join(d, 'nginx')), '/usr/sbin/nginx']) {
    if (fs.existsSync(p)) return p;
  }
  throw new Error('nginx not found on PATH or at /usr/sbin/nginx: apt-get install -y nginx-light');
}

/** The template with its upstream block, listen line and access log path replaced. */
export function renderNginxTemplate(template, upstreams, listen, accessLog) {
  const out = [];
  let inBlock = false;
  let seenBlock = false;
  let seenListen = false;
  let seenLog = false;
  let params = null;
  for (const line of template.split('\n')) {
    const trimmed = line.trimStart();
    if (trimmed.startsWith('# BEGIN HERALD_UPSTREAMS')) {
      inBlock = true;
      seenBlock = true;
      out.push(line);
    } else if (trimmed.startsWith('# END HERALD_UPSTREAMS')) {
      if (params === null) throw new Error(`${NGINX_TEMPLATE}: no server line inside HERALD_UPSTREAMS`);
      for (const a of upstreams) out.push(`    server ${a}${params};`);
      inBlock = false;
      out.push(line);
    } else if (inBlock) {
      if (trimmed.startsWith('server ') && params === null) {
        const rest = trimmed.slice('server '.length).trimEnd().replace(/;$/, '');
        const sp = rest.indexOf(' ');
        params = sp < 0 ? '' : ` ${rest.slice(sp + 1)}`;
      }
    } else if (line.includes('# HERALD_ACCESS_LOG')) {
      // The path only: the format (no query strings, so no tokens) is the file's own.
      const format = trimmed.startsWith('access_log ') ? trimmed.split(/\s+/)[2] : undefined;
      if (!format || seenLog) {
        throw new Error(`${NGINX_TEMPLATE}: # HERALD_ACCESS_LOG must mark exactly one access_log <path> <format>; line: ${line}`);
      }
      seenLog = true;
      out.push(`    access_log ${accessLog} ${format}  # HERALD_ACCESS_LOG`);
    } else if (line.includes('# HERALD_LISTEN')) {
      if (!trimmed.startsWith('listen ') || seenListen) {
        throw new Error(`${NGINX_TEMPLATE}: # HERALD_LISTEN must mark exactly one listen line: ${line}`);
      }
      seenListen = true;
      out.push(`    listen ${listen};  # HERALD_LISTEN`);
    } else {
      out.push(line);
    }
  }
  if (!seenBlock || inBlock) throw new Error(`${NGINX_TEMPLATE}: no BEGIN/END HERALD_UPSTREAMS block`);
  if (!seenListen) throw new Error(`${NGINX_TEMPLATE}: no # HERALD_LISTEN line`);
  if (!seenLog) throw new Error(`${NGINX_TEMPLATE}: no # HERALD_ACCESS_LOG line`);
  return out.join('\n') + '\n';
}

export class Nginx {
  static async start(scope, nodes, { template = NGINX_TEMPLATE } = {}) {
    const ng = new Nginx();
    ng.dir = tempDir(scope, 'herald-js-nginx-');
    fs.chmodSync(ng.dir, 0o755); // workers run as nobody
    ng.port = await freePort();
    const d = ng.dir;
    const rendered = renderNginxTemplate(
      fs.readFileSync(template, 'utf8'),
      nodes.map((n) => `127.0.0.1:${n.port}`),
      `127.0.0.1:${ng.port}`,
      path.join(ng.dir, 'access.log'),
    );
    fs.writeFileSync(path.join(d, 'herald.conf'), rendered);
    const main =
      `worker_processes 2;\n` +
      `pid ${d}/nginx.pid;\n` +
      `error_log ${d}/error.log info;\n` +
      `events { worker_connections 1024; }\n` +
      `http {\n` +
      `    client_body_temp_path ${d}/client_body;\n` +
      `    proxy_temp_path ${d}/proxy;\n` +
      `    fastcgi_temp_path ${d}/fastcgi;\n` +
      `    uwsgi_temp_path ${d}/uwsgi;\n` +
      `    scgi_temp_path ${d}/scgi;\n` +
      `    include ${d}/herald.conf;\n` +
      `}\n`;
    const conf = path.join(d, 'nginx.conf');
    fs.writeFileSync(conf, main);
    ng.log = new LogTail();
    ng.child = spawn(nginxBinary(), ['-p', d, '-c', conf, '-e', path.join(d, 'error.log'), '-g', 'daemon off;'], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    track(ng.child, 'SIGTERM');
    ng.child.stdout.on('data', (x) => ng.log.push(x));
    ng.child.stderr.on('data', (x) => ng.log.push(x));
    scope.addLog('nginx', () => ng.logs());
    scope.defer(() => ng.stop());
    await ng.waitUp();
    return ng;
  }

  get url() {
    return `http://127.0.0.1:${this.port}`;
  }

  read(name) {
    try {
      return fs.readFileSync(path.join(this.dir, name), 'utf8');
    } catch {
      return '';
    }
  }

  logs() {
    const tail = (s) => (s.length > 20000 ? '…' + s.slice(-20000) : s);
    return `--- output\n${this.log.text}--- error.log\n${tail(this.read('error.log'))}--- access.log\n${tail(this.read('access.log'))}`;
  }

  async waitUp(timeoutMs = 10000) {
    const deadline = Date.now() + timeoutMs;
    while (Date.now() < deadline) {
      if (this.child.exitCode !== null) throw new Error(`nginx exited with ${this.child.exitCode}`);
      try {
        const r = await fetch(`${this.url}/healthz`, { signal: AbortSignal.timeout(1000) });
        if (r.status === 200) return;
      } catch {}
      await sleep(50);
    }
    throw new Error(`nginx did not answer /healthz within ${timeoutMs} ms`);
  }

  async stop() {
    if (this.child.exitCode !== null || this.child.signalCode !== null) return;
    this.child.kill('SIGTERM');
    if (!(await waitExit(this.child, 5000))) {
      this.child.kill('SIGKILL');
      await waitExit(this.child, 2000);
    }
  }
}

// ---------------------------------------------------------------------------------
// A TCP proxy in front of a node: it can stop forwarding the node's bytes to the
// client (a client that stops reading), and refuse new connections (a client that
// cannot reach the node yet).

export class TcpProxy {
  static async start(scope, targetPort, targetHost = '127.0.0.1') {
    const p = new TcpProxy();
    p.targetPort = targetPort;
    p.targetHost = targetHost;
    p.pairs = new Set();
    p.paused = false;
    p.refusing = false;
    p.accepted = 0;
    p.server = net.createServer((client) => p.onClient(client));
    await new Promise((resolve, reject) => {
      p.server.once('error', reject);
      p.server.listen(0, '127.0.0.1', resolve);
    });
    p.port = p.server.address().port;
    scope.defer(() => p.close());
    return p;
  }

  get url() {
    return `http://127.0.0.1:${this.port}`;
  }

  onClient(client) {
    if (this.refusing) {
      client.destroy();
      return;
    }
    this.accepted += 1;
    const upstream = net.connect(this.targetPort, this.targetHost);
    const pair = { client, upstream, toClient: 0 };
    this.pairs.add(pair);
    const end = () => {
      client.destroy();
      upstream.destroy();
      this.pairs.delete(pair);
    };
    client.on('error', end);
    upstream.on('error', end);
    client.on('close', end);
    upstream.on('close', end);
    client.on('data', (d) => upstream.write(d));
    upstream.on('data', (d) => {
      pair.toClient += d.length;
      if (!client.write(d)) {
        upstream.pause();
        client.once('drain', () => {
          if (!this.paused) upstream.resume();
        });
      }
    });
    if (this.paused) upstream.pause();
  }

  /** Stops reading the node's side: its bytes pile up in the kernel buffers. */
  pauseToClient() {
    this.paused = true;
    for (const p of this.pairs) p.upstream.pause();
  }

  resumeToClient() {
    this.paused = false;
    for (const p of this.pairs) p.upstream.resume();
  }

  /** New connections are accepted and dropped at once (the client sees 1006). */
  refuse(on = true) {
    this.refusing = on;
  }

  /** Cuts every open connection. */
  cutAll() {
    for (const p of this.pairs) {
      p.client.destroy();
      p.upstream.destroy();
    }
    this.pairs.clear();
  }

  async close() {
    this.cutAll();
    await new Promise((r) => this.server.close(() => r()));
  }
}

// ---------------------------------------------------------------------------------
// SSE streams read by hand (Node's fetch), for tests that look at the wire.

/** Parses an SSE byte stream incrementally; calls onEvent({event, id, data, at}). */
export class SseParser {
  constructor(onEvent, onRetry, onComment) {
    this.buf = '';
    this.onEvent = onEvent;
    this.onRetry = onRetry || (() => {});
    this.onComment = onComment || (() => {});
    this.reset();
  }
  reset() {
    this.event = '';
    this.id = undefined;
    this.data = [];
  }
  push(text) {
    this.buf += text;
    let i;
    while ((i = this.buf.search(/\r\n|\n|\r/)) >= 0) {
      const line = this.buf.slice(0, i);
      const nl = this.buf.slice(i, i + 2) === '\r\n' ? 2 : 1;
      this.buf = this.buf.slice(i + nl);
      this.line(line);
    }
  }
  line(line) {
    if (line === '') {
      if (this.data.length || this.event) {
        this.onEvent({ event: this.event || 'message', id: this.id, data: this.data.join('\n'), at: Date.now() });
      }
      this.reset();
      return;
    }
    if (line.startsWith(':')) return this.onComment(line.slice(1));
    const c = line.indexOf(':');
    const field = c < 0 ? line : line.slice(0, c);
    let value = c < 0 ? '' : line.slice(c + 1);
    if (value.startsWith(' ')) value = value.slice(1);
    if (field === 'event') this.event = value;
    else if (field === 'data') this.data.push(value);
    else if (field === 'id') this.id = value;
    else if (field === 'retry') this.onRetry(Number(value));
  }
}

/** One SSE stream opened with fetch; `events` fills as they arrive. */
export class SseStream {
  static async open(scope, url, headers = {}) {
    const s = new SseStream();
    s.events = [];
    s.retries = [];
    s.comments = 0;
    s.ended = false;
    s.ctrl = new AbortController();
    scope.defer(() => s.ctrl.abort());
    const r = await fetch(url, { headers, signal: s.ctrl.signal });
    s.status = r.status;
    s.headers = r.headers;
    if (r.status !== 200) {
      s.body = await r.text();
      s.ended = true;
      return s;
    }
    const parser = new SseParser(
      (ev) => s.events.push(ev),
      (ms) => s.retries.push(ms),
      () => (s.comments += 1),
    );
    s.done = (async () => {
      const dec = new TextDecoder();
      try {
        for await (const chunk of r.body) parser.push(dec.decode(chunk, { stream: true }));
      } catch {}
      s.ended = true;
      s.endedAt = Date.now();
    })();
    return s;
  }
  close() {
    this.ctrl.abort();
  }
  frames(type) {
    return this.events.filter((e) => !type || e.event === type).map((e) => ({ ...e, json: JSON.parse(e.data) }));
  }
}

/** Spawns `curl -sN` on an SSE URL; `events` fills as they arrive. */
export function curlSse(scope, url, extraArgs = []) {
  const c = { events: [], raw: '', retries: [] };
  const parser = new SseParser((ev) => c.events.push(ev), (ms) => c.retries.push(ms));
  c.child = spawn('curl', ['-sN', '--max-time', '60', ...extraArgs, url], { stdio: ['ignore', 'pipe', 'pipe'] });
  track(c.child, 'SIGKILL');
  c.child.stdout.on('data', (d) => {
    c.raw += d.toString();
    parser.push(d.toString());
  });
  let err = '';
  c.child.stderr.on('data', (d) => (err += d));
  c.exited = new Promise((r) => c.child.once('exit', (code) => r(code)));
  c.kill = () => {
    if (c.child.exitCode === null && c.child.signalCode === null) c.child.kill('SIGKILL');
  };
  scope.defer(c.kill);
  scope.addLog(`curl ${url.replace(/token=[^&]+/, 'token=…')}`, () => `${c.raw}\n${err}`);
  c.frames = (type) => c.events.filter((e) => !type || e.event === type).map((e) => ({ ...e, json: JSON.parse(e.data) }));
  return c;
}

// ---------------------------------------------------------------------------------
// The library under test, and what its clients received.

/** Imports clients/js/src/herald.js (fresh per call is not needed: one module). */
export async function loadLibrary() {
  return import(pathToFileURL(LIBRARY_PATH).href);
}

export function libraryPresent() {
  return fs.existsSync(LIBRARY_PATH);
}

/**
 * A HeraldClient (Node: the `ws` package as its WebSocket, short backoff), recorded
 * and connected; closed when the scope closes.
 */
export async function newClient(scope, opts, label = 'client') {
  const { HeraldClient } = await loadLibrary();
  const client = new HeraldClient({ WebSocket, backoff: { initialMs: 100, maxMs: 1000 }, ...opts });
  const rec = record(scope, client, label);
  client.connect();
  return { client, rec };
}

/**
 * Records what a HeraldClient emits: notification ids (in arrival order), states,
 * errors and events, with timestamps. Closes the client when the scope closes.
 */
export function record(scope, client, label = 'client') {
  const rec = { label, ids: [], notifications: [], states: [], errors: [], events: [], disconnects: [], opens: [] };
  client.on('notification', (n) => {
    rec.ids.push(n.id);
    rec.notifications.push(n);
  });
  client.on('state', (s) => rec.states.push({ state: s, at: Date.now() }));
  client.on('error', (e) => rec.errors.push({ code: e?.code, message: e?.message, fatal: e?.fatal, at: Date.now() }));
  client.on('event', (e) => rec.events.push(e));
  client.on('disconnect', (d) => rec.disconnects.push({ ...d, at: Date.now() }));
  client.on('open', (o) => rec.opens.push({ ...o, at: Date.now() }));
  scope.defer(() => client.close());
  scope.addLog(`${label} record`, () =>
    JSON.stringify(
      {
        ids: rec.ids,
        states: rec.states.map((s) => s.state),
        opens: rec.opens.map((o) => `${o.transport}@${o.node}`),
        disconnects: rec.disconnects.map((d) => `${d.code}${d.status ? `/${d.status}` : ''} ${d.reason}`),
        errors: rec.errors,
        transport: client.transport,
        lastId: client.lastId,
      },
      null,
      0,
    ),
  );
  return rec;
}

/** Polls `pred` every 20 ms until it is truthy; throws `what()` after the deadline. */
export async function waitFor(pred, { timeoutMs = 10000, what = 'condition', interval = 20 } = {}) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await pred();
    if (v) return v;
    if (Date.now() > deadline) {
      throw new Error(`waited ${timeoutMs} ms for ${typeof what === 'function' ? what() : what}`);
    }
    await sleep(interval);
  }
}

/** Waits until a client's state is `state` (checking `client.state`). */
export function waitState(client, state, timeoutMs = 10000) {
  return waitFor(() => client.state === state, {
    timeoutMs,
    what: () => `state ${state} (is ${client.state})`,
  });
}

/** Waits until `rec.ids` holds at least `sent.length` ids (then checks them exactly). */
export async function waitAll(rec, sent, timeoutMs = 15000) {
  await waitFor(() => rec.ids.length >= sent.length, {
    timeoutMs,
    what: () => `${rec.label}: ${sent.length} notifications, have ${rec.ids.length}; ${describeDiff(rec.ids, sent)}`,
  });
  assertExactlyOnce(rec.ids, sent, rec.label);
}

export function describeDiff(got, sent) {
  const want = new Set(sent);
  const seen = new Map();
  for (const id of got) seen.set(id, (seen.get(id) || 0) + 1);
  const missing = sent.filter((id) => !seen.has(id));
  const dups = [...seen].filter(([, n]) => n > 1).map(([id]) => id);
  const extra = got.filter((id) => !want.has(id));
  const disorder = got.findIndex((id, i) => i > 0 && id <= got[i - 1]);
  return `missing [${missing}] duplicated [${dups}] unexpected [${extra}] first out-of-order index ${disorder}`;
}

/** Every id of `sent` exactly once, in ascending order, nothing else. */
export function assertExactlyOnce(got, sent, label = 'client') {
  const sortedSent = [...sent].sort((a, b) => a - b);
  assert.deepStrictEqual(sent, sortedSent, `${label}: the API answered ids out of order: [${sent}]`);
  assert.deepStrictEqual(got, sent, `${label}: got [${got}]\nwant [${sent}]\n${describeDiff(got, sent)}`);
}

/** Publishes `count` notifications to `user`, one after another; returns the ids. */
export async function publishMany(base, user, count, make = (i) => ({ n: i })) {
  const ids = [];
  for (let i = 0; i < count; i++) ids.push(await publish(base, user, make(i)));
  return ids;
}

/**
 * Publishes in rounds until stopped: every round sends one notification to each user
 * concurrently (one user's notifications stay sequential, so their ids ascend).
 * Returns { stop(): Promise<sent>, sent: Map<user, ids[]>, errors }. With `scope`, it
 * also stops when the scope closes (a failed test).
 */
export function publishContinuously(base, users, { intervalMs = 100, message = (u, r) => ({ u, r }), scope } = {}) {
  const sent = new Map(users.map((u) => [u, []]));
  const errors = [];
  let stopped = false;
  let rounds = 0;
  scope?.defer(() => {
    stopped = true;
  });
  const loop = (async () => {
    while (!stopped) {
      const r = rounds++;
      await Promise.all(
        users.map(async (u) => {
          try {
            sent.get(u).push(await publish(typeof base === 'function' ? base() : base, u, message(u, r)));
          } catch (e) {
            errors.push(e);
          }
        }),
      );
      await sleep(intervalMs);
    }
  })();
  return {
    sent,
    errors,
    get rounds() {
      return rounds;
    },
    async stop() {
      stopped = true;
      await loop;
      return sent;
    },
  };
}
