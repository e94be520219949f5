// Compile-only check of src/herald.d.ts from an application's point of view
// (`npm run typecheck`; never run). `@ts-expect-error` lines must stay errors.
import {
  HeraldClient,
  HeraldError,
  backoffDelay,
  decideClose,
  type HeraldNotification,
  type HeraldState,
  type MarkedReadReply,
} from '../../src/herald.js';

const client = new HeraldClient({
  url: 'http://127.0.0.1:8000',
  token: async () => 'jwt',
  transport: 'auto',
  groups: ['org_5'],
  keep: 20,
  backoff: { initialMs: 250, maxMs: 10_000 },
});
const off: () => void = client.on('notification', (n: HeraldNotification) => void n.id);
client.on('state', (s: HeraldState) => void s);
client.on('error', (e: HeraldError) => void (e.fatal && e.code));
client.on('event', ({ group, payload }) => void [group, payload]);
client.on('change', ({ unreadCount, notifications }) => void [unreadCount + 1, notifications[0]?.id]);
client.on('open', (info) => void info.heartbeatS);
client.on('disconnect', (info) => void info.willReconnect);
// @ts-expect-error unknown event type
client.on('nope', () => {});
off();
client.connect().close();
const reply: Promise<MarkedReadReply> = client.markRead([1, 2]);
void reply;
void client.markAllRead();
void client.subscribe('org_5');
void client.unsubscribe('org_5');
const n: number = client.unreadCount;
const last: number | null = client.lastId;
void [n, last, client.notifications.length, client.transport, client.state];
void backoffDelay(3, { initialMs: 100 });
void decideClose(1012).action;
// @ts-expect-error token is required
new HeraldClient({ url: 'x' });
