// The live page's script (served at /demo/demo.js; the page's CSP allows no inline
// scripts). It renders what the client reports and never builds HTML from data:
// textContent only.
import { HeraldClient } from './herald.js';

const $ = (id) => /** @type {HTMLElement} */ (document.getElementById(id));
const LOG_MAX = 100;

/** Reads `#token=...&transport=sse` and removes it from the address bar at once. */
function readFragment() {
  const params = new URLSearchParams(location.hash.replace(/^#/, ''));
  const token = params.get('token');
  if (token) history.replaceState(null, '', location.pathname + location.search);
  return { token, transport: params.get('transport') === 'sse' ? 'sse' : 'auto' };
}

function log(text, cls = '') {
  const li = document.createElement('li');
  li.textContent = `${new Date().toLocaleTimeString()} ${text}`;
  if (cls) li.className = cls;
  const list = $('log');
  list.prepend(li);
  while (list.children.length > LOG_MAX) list.lastElementChild?.remove();
}

function messageText(message) {
  return message && typeof message === 'object' && typeof message.text === 'string' ? message.text : JSON.stringify(message);
}

/** Shows the token form, with `error` (a token that could not be used) when given. */
function showForm(error = '') {
  $('token-form').hidden = false;
  $('app').hidden = true;
  const err = $('token-error');
  err.textContent = error;
  err.hidden = !error;
}

function start(token, transport) {
  let client;
  try {
    // Refuses a token it cannot send (a character outside a JWT's): say so in the
    // form rather than leave an empty page behind.
    client = new HeraldClient({ url: location.origin, token, transport });
  } catch (e) {
    showForm(`This token cannot be used: ${e instanceof Error ? e.message : e}`);
    return;
  }
  $('token-form').hidden = true;
  $('app').hidden = false;
  /** Every notification of the session, by id: the list shows each exactly once. */
  const items = new Map();
  const list = $('notifications');

  const setRead = (li, read) => {
    li.classList.toggle('unread', !read);
    const btn = li.querySelector('button');
    if (btn) btn.disabled = read;
  };

  client.on('notification', (n) => {
    if (items.has(n.id)) return;
    const li = document.createElement('li');
    li.dataset.id = String(n.id);
    const meta = document.createElement('div');
    meta.className = 'meta';
    meta.textContent = `#${n.id} · ${n.created_at}${n.user !== client.user ? ` · user ${n.user}` : ''}`;
    const text = document.createElement('div');
    text.className = 'text';
    text.textContent = messageText(n.message);
    const btn = document.createElement('button');
    btn.type = 'button';
    btn.textContent = 'mark read';
    btn.addEventListener('click', () => {
      btn.disabled = true;
      client.markRead([n.id]).catch((e) => {
        btn.disabled = false;
        log(`mark read failed: ${e.message}`, 'error');
      });
    });
    li.append(meta, text, btn);
    setRead(li, n.read);
    // Newest first: insert before the first item with a smaller id.
    const next = [...list.children].find((el) => Number(/** @type {HTMLElement} */ (el).dataset.id) < n.id);
    list.insertBefore(li, next ?? null);
    items.set(n.id, li);
    $('count').textContent = String(items.size);
  });

  client.on('change', ({ unreadCount, notifications }) => {
    $('unread').textContent = String(unreadCount);
    for (const n of notifications) {
      const li = items.get(n.id);
      if (li) setRead(li, n.read);
    }
  });

  client.on('state', (s) => {
    $('state').textContent = s;
    $('state').dataset.state = s;
    $('transport').textContent = client.transport ?? '–';
    log(`state ${s}`);
  });
  client.on('open', (o) => {
    $('user').textContent = o.user;
    $('transport').textContent = o.transport;
    log(`open via ${o.transport} on ${o.node} (${o.connection}), heartbeat ${o.heartbeatS}s`);
  });
  client.on('disconnect', (d) => {
    const why = d.status ? `HTTP ${d.status}` : `close ${d.code}`;
    log(`disconnected (${why}${d.reason ? `: ${d.reason}` : ''})${d.willReconnect ? `, retry in ${d.delayMs ?? '?'} ms` : ''}`);
  });
  client.on('event', (e) => log(`event ${e.group}: ${JSON.stringify(e.payload)}`));
  client.on('error', (e) => log(`error ${e.code}${e.fatal ? ' (fatal)' : ''}: ${e.message}`, 'error'));

  $('mark-all').addEventListener('click', () => {
    client.markAllRead().then(
      () => {
        for (const li of items.values()) setRead(li, true);
      },
      (e) => log(`mark all read failed: ${e.message}`, 'error'),
    );
  });

  client.connect();
  // A handle for debugging from the console.
  /** @type {any} */ (window).herald = client;
}

$('token-form').addEventListener('submit', (ev) => {
  ev.preventDefault();
  const value = /** @type {HTMLTextAreaElement} */ ($('token-input')).value.trim();
  if (!value) return;
  const sse = /** @type {HTMLInputElement} */ ($('sse-input')).checked;
  start(value, sse ? 'sse' : 'auto');
});
const { token, transport } = readFragment();
if (token) {
  start(token, transport);
} else {
  showForm();
}
