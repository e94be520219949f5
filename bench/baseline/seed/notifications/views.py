"""Backend API (contract section 4, the create and event calls) as async Django views.

Authenticated by `Authorization: Bearer <HERALD_API_KEY>`; errors are `{"error": ...}`.
After the store commits, each notification is handed to the channel layer with one
group_send to `user_<id>`, as the seed does.
"""

import hmac
import json

from channels.layers import get_channel_layer
from django.conf import settings
from django.db.models import JSONField, Value
from django.http import JsonResponse
from django.views.decorators.http import require_GET, require_POST

from .auth import GROUP_RE, USER_RE
from .models import Notification


def respond(body, status=200):
    """A JSON answer with a Content-Length (no middleware adds one here)."""
    r = JsonResponse(body, status=status)
    r["Content-Length"] = str(len(r.content))
    return r


def error(status, message):
    return respond({"error": message}, status)


def authorized(request):
    key = settings.HERALD_API_KEY
    got = request.headers.get("Authorization", "")
    return bool(key) and hmac.compare_digest(got.encode(), f"Bearer {key}".encode())


def parse_body(request):
    """The JSON object of the body, or None."""
    try:
        body = json.loads(request.body)
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


def new_notification(item):
    """A validated unsaved Notification, or an error text."""
    if not isinstance(item, dict) or set(item) != {"user", "message"}:
        return None, 'each notification is {"user": ..., "message": ...}'
    user = item["user"]
    if not isinstance(user, str) or not USER_RE.match(user):
        return None, "user must be 1-64 of [A-Za-z0-9_.-]"
    message = item["message"]
    if message is None:
        # Python None would be SQL NULL; the contract's message may be JSON null.
        message = Value(None, JSONField())
    return Notification(user=user, message=message), None


def saved(n):
    """Back to plain JSON after a save that stored a JSON null."""
    if isinstance(n.message, Value):
        n.message = None
    return n


async def send_notification(layer, n):
    await layer.group_send(
        f"user_{n.user}", {"type": "notification.message", "notification": n.to_dict()}
    )


@require_POST
async def create_notification(request):
    if not authorized(request):
        return error(401, "missing or wrong API key")
    body = parse_body(request)
    if body is None:
        return error(400, "body must be a JSON object")
    n, err = new_notification(body)
    if err:
        return error(400, err)
    await n.asave()
    saved(n)
    await send_notification(get_channel_layer(), n)
    return respond(n.to_dict(), 201)


@require_POST
async def create_batch(request):
    if not authorized(request):
        return error(401, "missing or wrong API key")
    body = parse_body(request)
    items = body.get("notifications") if body is not None else None
    if not isinstance(items, list) or set(body) != {"notifications"}:
        return error(400, 'body must be {"notifications": [...]}')
    if len(items) > settings.BATCH_MAX:
        return error(400, f"at most {settings.BATCH_MAX} notifications per batch")
    objs = []
    for item in items:
        n, err = new_notification(item)
        if err:
            return error(400, err)
        objs.append(n)
    # One INSERT ... RETURNING, inside one transaction (bulk_create's own atomic block).
    if objs:
        await Notification.objects.abulk_create(objs)
        for n in objs:
            saved(n)
    layer = get_channel_layer()
    for n in objs:
        await send_notification(layer, n)
    return respond({"notifications": [n.to_dict() for n in objs]}, 201)


@require_POST
async def group_event(request, group):
    if not authorized(request):
        return error(401, "missing or wrong API key")
    if not GROUP_RE.match(group):
        return error(400, "group must be 1-100 of [A-Za-z0-9_.-]")
    body = parse_body(request)
    if body is None or set(body) != {"payload"}:
        return error(400, 'body must be {"payload": ...}')
    await get_channel_layer().group_send(
        group, {"type": "group.event", "group": group, "payload": body["payload"]}
    )
    return respond({"accepted": True}, 202)


@require_GET
async def healthz(request):
    return respond({"status": "ok"})


def not_found(request, exception=None):
    return error(404, "not found")


def bad_request(request, exception=None):
    return error(400, "bad request")


def server_error(request):
    return error(500, "internal error")
