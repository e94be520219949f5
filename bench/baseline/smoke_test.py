"""Contract smoke test of a running baseline (or any node speaking the contract).

    .venv/bin/python smoke_test.py [--url http://127.0.0.1:18100] [--jwt-secret S] [--api-key K]

Checks: bad tokens refused, welcome + initial_state (50 newest unread, newest first,
unread_count), live notification, ping, subscribe (allowed / forbidden), events,
unsubscribe, mark_read, bad frames, the API's auth and validation errors. Exits 1 on
the first failed check.
"""

import argparse
import asyncio
import json
import re
import sys
import time
import urllib.error
import urllib.request
import uuid

import jwt
import websockets

ap = argparse.ArgumentParser()
ap.add_argument("--url", default="http://127.0.0.1:18100")
ap.add_argument("--jwt-secret", default="S")
ap.add_argument("--api-key", default="K")
args = ap.parse_args()
WS = args.url.replace("http://", "ws://") + "/ws/notifications/"
passed = 0


def check(cond, what):
    global passed
    if not cond:
        print(f"FAIL: {what}")
        sys.exit(1)
    passed += 1
    print(f"ok: {what}")


def token(sub, groups=None, exp=3600, secret=None):
    claims = {"sub": sub, "exp": int(time.time()) + exp}
    if groups is not None:
        claims["groups"] = groups
    return jwt.encode(claims, secret or args.jwt_secret, algorithm="HS256")


def api(method, path, body=None, key=None, raw=None):
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request(args.url + path, data=data, method=method)
    req.add_header("Authorization", f"Bearer {key or args.api_key}")
    req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        text = e.read()
        try:
            return e.code, json.loads(text)
        except ValueError:
            return e.code, text


async def recv(ws, timeout=5):
    return json.loads(await asyncio.wait_for(ws.recv(), timeout))


async def recv_type(ws, t, timeout=5):
    while True:
        f = await recv(ws, timeout)
        if f["type"] == t:
            return f


async def refused(url):
    try:
        async with websockets.connect(url, open_timeout=5):
            return None
    except websockets.exceptions.InvalidStatus as e:
        return e.response.status_code


async def main():
    user = "smoke_" + uuid.uuid4().hex[:8]
    other = user + "_other"

    # Bad tokens.
    for what, url in [
        ("no token", WS),
        ("wrong signature", WS + "?token=" + token(user, secret="nope")),
        ("expired token", WS + "?token=" + token(user, exp=-60)),
        ("garbage token", WS + "?token=abc.def.ghi"),
    ]:
        status = await refused(url)
        check(status in (401, 403), f"{what} refused before upgrade (HTTP {status})")

    # API auth and validation.
    st, body = api("POST", "/api/v1/notifications", {"user": user, "message": 1}, key="wrong")
    check(st == 401 and "error" in body, f"wrong API key -> 401 {body}")
    st, body = api("POST", "/api/v1/notifications", raw=b"{not json")
    check(st == 400 and "error" in body, f"bad JSON -> 400 {body}")
    st, body = api("POST", "/api/v1/notifications", {"user": "bad user!", "message": 1})
    check(st == 400, "bad user id -> 400")
    st, body = api("GET", "/healthz")
    check(st == 200, "healthz 200")
    st, body = api("GET", "/nope")
    check(st == 404 and "error" in body, "unknown route -> 404 JSON")

    # 60 stored notifications (one single, the rest in a batch): initial_state has 50.
    st, n0 = api("POST", "/api/v1/notifications", {"user": user, "message": {"i": 0}})
    check(st == 201 and n0["user"] == user and n0["message"] == {"i": 0} and n0["read"] is False,
          f"single create -> 201 {n0}")
    check(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", n0["created_at"]) is not None,
          f"created_at RFC 3339 ms Z ({n0['created_at']})")
    items = [{"user": user, "message": {"i": i, "nested": [1, "x", None]}} for i in range(1, 60)]
    items.append({"user": other, "message": "just a string"})
    st, body = api("POST", "/api/v1/notifications/batch", {"notifications": items})
    check(st == 201 and len(body["notifications"]) == 60, "batch of 60 -> 201 with 60 N")
    ids = [n["id"] for n in body["notifications"]]
    check(ids == sorted(ids) and ids[0] > n0["id"], "batch ids increasing")
    st, _ = api("POST", "/api/v1/notifications/batch",
                {"notifications": [{"user": user, "message": 1}] * 1001})
    check(st == 400, "batch of 1001 -> 400")

    async with websockets.connect(WS + "?token=" + token(user, groups=["team_1"])) as ws:
        welcome = await recv(ws)
        check(welcome["type"] == "welcome" and welcome["user"] == user
              and welcome["heartbeat_s"] == 25 and welcome["connection"], f"welcome {welcome}")
        init = await recv(ws)
        check(init["type"] == "initial_state", "initial_state second")
        got = [n["id"] for n in init["notifications"]]
        check(init["unread_count"] == 60, f"unread_count 60 ({init['unread_count']})")
        mine = [n0["id"]] + ids[:59]
        check(got == sorted(mine, reverse=True)[:50], "50 newest unread, newest first")

        # Live notification, with arbitrary JSON.
        msg = {"sent_us": 123, "seq": 7, "deep": {"a": [1.5, True, None]}}
        st, n = api("POST", "/api/v1/notifications", {"user": user, "message": msg})
        f = await recv_type(ws, "notification")
        check(f["notification"] == n and f["notification"]["message"] == msg, "live notification == API answer")
        # Another user's notification does not arrive; the next own one does.
        api("POST", "/api/v1/notifications", {"user": other, "message": 0})
        st, n2 = api("POST", "/api/v1/notifications/batch", {"notifications": [{"user": user, "message": [1, 2]}]})
        f = await recv_type(ws, "notification")
        check(f["notification"]["id"] == n2["notifications"][0]["id"], "only own notifications arrive")

        await ws.send(json.dumps({"type": "ping"}))
        check((await recv(ws)) == {"type": "pong"}, "ping -> pong")

        await ws.send(json.dumps({"type": "subscribe", "group": "team_1"}))
        check((await recv(ws)) == {"type": "subscribed", "group": "team_1"}, "subscribe allowed group")
        await ws.send(json.dumps({"type": "subscribe", "group": "team_2"}))
        f = await recv(ws)
        check(f["type"] == "error" and f["code"] == "forbidden", f"subscribe other group -> forbidden {f}")

        st, body = api("POST", "/api/v1/groups/team_1/events", {"payload": {"sent_us": 1, "seq": 2}})
        check(st == 202 and body == {"accepted": True}, "event -> 202 accepted")
        f = await recv(ws)
        check(f == {"type": "event", "group": "team_1", "payload": {"sent_us": 1, "seq": 2}}, f"event frame {f}")
        st, _ = api("POST", f"/api/v1/groups/user_{user}/events", {"payload": "hi"})
        f = await recv(ws)
        check(f == {"type": "event", "group": f"user_{user}", "payload": "hi"}, "event to user_<id>")

        await ws.send(json.dumps({"type": "unsubscribe", "group": "team_1"}))
        check((await recv(ws)) == {"type": "unsubscribed", "group": "team_1"}, "unsubscribe")
        api("POST", "/api/v1/groups/team_1/events", {"payload": "after"})
        await ws.send(json.dumps({"type": "ping"}))
        check((await recv(ws)) == {"type": "pong"}, "no event after unsubscribe")

        foreign = body_other = None
        st, body_other = api("POST", "/api/v1/notifications", {"user": other, "message": 0})
        foreign = body_other["id"]
        await ws.send(json.dumps({"type": "mark_read", "ids": [got[0], got[1], foreign]}))
        f = await recv(ws)
        check(f["type"] == "marked_read" and sorted(f["ids"]) == sorted(got[:2])
              and f["unread_count"] == 62 - 2, f"mark_read ({f})")

        for bad in ["{nope", json.dumps({"type": "dance"}), json.dumps([1]),
                    json.dumps({"type": "mark_read", "ids": "x"})]:
            await ws.send(bad)
            f = await recv(ws)
            check(f["type"] == "error" and f["code"] == "bad_request", f"bad frame {bad!r} -> bad_request")
        await ws.send(json.dumps({"type": "ping"}))
        check((await recv(ws)) == {"type": "pong"}, "connection still open after bad frames")

    async with websockets.connect(WS, additional_headers={"Authorization": "Bearer " + token(user)}) as ws:
        await recv_type(ws, "welcome")
        init = await recv_type(ws, "initial_state")
        check(init["unread_count"] == 60, "Authorization: Bearer token accepted; unread after mark_read")

    print(f"{passed} passed, 0 failed")


asyncio.run(main())
