"""The WebSocket endpoint /ws/notifications/ (contract section 3, the subset the
benchmark and a plain client use), written as a normal Channels app writes it."""

import json

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.conf import settings
from django.db import transaction

from .auth import GROUP_RE
from .models import Notification


class NotificationConsumer(AsyncJsonWebsocketConsumer):
    # Scope["jwt"] is set by JWTAuthMiddleware: no upgrade reaches here without it.

    async def connect(self):
        claims = self.scope.get("jwt")
        if not claims:
            await self.close()
            return
        self.user_id = claims["sub"]
        self.user_group = f"user_{self.user_id}"
        self.allowed = set(claims.get("groups") or ()) | {self.user_group}
        self.joined = set()
        await self.accept()
        await self.channel_layer.group_add(self.user_group, self.channel_name)
        self.joined.add(self.user_group)
        await self.send_json(
            {
                "type": "welcome",
                "user": self.user_id,
                "node": settings.NODE_NAME,
                "connection": self.channel_name,
                "heartbeat_s": settings.HEARTBEAT_S,
            }
        )
        unread, items = await self.load_initial_state()
        await self.send_json(
            {"type": "initial_state", "unread_count": unread, "notifications": items}
        )

    async def disconnect(self, code):
        for group in getattr(self, "joined", ()):
            await self.channel_layer.group_discard(group, self.channel_name)
        self.joined = set()

    # -- client frames ------------------------------------------------------------

    async def receive(self, text_data=None, bytes_data=None):
        if text_data is None:
            await self.close(code=1003)  # binary frames are not part of the protocol
            return
        try:
            frame = json.loads(text_data)
        except ValueError:
            await self.error("bad_request", "invalid JSON")
            return
        if not isinstance(frame, dict) or not isinstance(frame.get("type"), str):
            await self.error("bad_request", 'frame has no "type"')
            return
        handler = self.FRAMES.get(frame["type"])
        if handler is None:
            await self.error("bad_request", f"unknown frame type {frame['type']!r}")
            return
        await handler(self, frame)

    async def on_ping(self, frame):
        await self.send_json({"type": "pong"})

    async def on_subscribe(self, frame):
        group = frame.get("group")
        if not isinstance(group, str) or not GROUP_RE.match(group):
            await self.error("bad_request", "group must be 1-100 of [A-Za-z0-9_.-]")
            return
        if group not in self.allowed:
            await self.error("forbidden", f"token does not allow group {group}")
            return
        if group not in self.joined:
            await self.channel_layer.group_add(group, self.channel_name)
            self.joined.add(group)
        await self.send_json({"type": "subscribed", "group": group})

    async def on_unsubscribe(self, frame):
        group = frame.get("group")
        if not isinstance(group, str) or not GROUP_RE.match(group):
            await self.error("bad_request", "group must be 1-100 of [A-Za-z0-9_.-]")
            return
        if group in self.joined:
            await self.channel_layer.group_discard(group, self.channel_name)
            self.joined.discard(group)
        await self.send_json({"type": "unsubscribed", "group": group})

    async def on_mark_read(self, frame):
        ids = frame.get("ids")
        if not isinstance(ids, list) or not all(
            isinstance(i, int) and not isinstance(i, bool) and 0 < i < 2**63 for i in ids
        ):
            await self.error("bad_request", "ids must be a list of notification ids")
            return
        marked, unread = await self.mark_read(ids)
        await self.send_json({"type": "marked_read", "ids": marked, "unread_count": unread})

    async def on_mark_all_read(self, frame):
        await self.mark_all_read()
        await self.send_json({"type": "marked_read", "all": True, "unread_count": 0})

    FRAMES = {
        "ping": on_ping,
        "subscribe": on_subscribe,
        "unsubscribe": on_unsubscribe,
        "mark_read": on_mark_read,
        "mark_all_read": on_mark_all_read,
    }

    async def error(self, code, message):
        await self.send_json({"type": "error", "code": code, "message": message})

    # -- channel layer messages (group_send from the API) ----------------------

    async def notification_message(self, event):
        await self.send_json({"type": "notification", "notification": event["notification"]})

    async def group_event(self, event):
        await self.send_json(
            {"type": "event", "group": event["group"], "payload": event["payload"]}
        )

    # -- database ---------------------------------------------------------------

    @database_sync_to_async
    def load_initial_state(self):
        unread = Notification.objects.filter(user=self.user_id, read=False)
        count = unread.count()
        items = [n.to_dict() for n in unread.order_by("-id")[: settings.INITIAL_STATE_LIMIT]]
        return count, items

    @database_sync_to_async
    def mark_read(self, ids):
        with transaction.atomic():
            mine = sorted(
                Notification.objects.filter(user=self.user_id, id__in=ids).values_list(
                    "id", flat=True
                )
            )
            Notification.objects.filter(id__in=mine, read=False).update(read=True)
        unread = Notification.objects.filter(user=self.user_id, read=False).count()
        return mine, unread

    @database_sync_to_async
    def mark_all_read(self):
        Notification.objects.filter(user=self.user_id, read=False).update(read=True)
