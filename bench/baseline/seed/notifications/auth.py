"""JWT authentication of WebSocket upgrades (the usual Channels middleware pattern).

The token (HS256, HERALD_JWT_SECRET) comes from the `token` query parameter or an
`Authorization: Bearer` header; `sub` and `exp` are required, `groups` is an optional
list of extra groups the user may subscribe to. The claims go into scope["jwt"].

A bad token is refused before any upgrade. Where the server offers the ASGI
"websocket.http.response" extension (uvicorn does) the refusal is an HTTP 401 with a
JSON body, as the contract asks; otherwise the handshake is closed, which ASGI
servers answer with HTTP 403.
"""

import json
import re
from urllib.parse import parse_qs

import jwt
from django.conf import settings

USER_RE = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")
GROUP_RE = re.compile(r"^[A-Za-z0-9_.\-]{1,100}$")


def token_from_scope(scope):
    qs = parse_qs(scope.get("query_string", b"").decode("latin-1"))
    if qs.get("token"):
        return qs["token"][0]
    for name, value in scope.get("headers", []):
        if name == b"authorization":
            v = value.decode("latin-1")
            if v[:7].lower() == "bearer ":
                return v[7:].strip()
    return None


def decode_claims(token):
    """The token's claims, or an error text."""
    if not token:
        return None, "missing token"
    try:
        claims = jwt.decode(
            token,
            settings.HERALD_JWT_SECRET,
            algorithms=["HS256"],
            options={"require": ["sub", "exp"]},
        )
    except jwt.ExpiredSignatureError:
        return None, "token expired"
    except jwt.InvalidTokenError as e:
        return None, f"invalid token: {e}"
    sub = claims.get("sub")
    if not isinstance(sub, str) or not USER_RE.match(sub):
        return None, "invalid token: bad sub"
    groups = claims.get("groups") or []
    if not isinstance(groups, list) or not all(isinstance(g, str) for g in groups):
        return None, "invalid token: bad groups"
    return claims, None


class JWTAuthMiddleware:
    def __init__(self, inner):
        self.inner = inner

    async def __call__(self, scope, receive, send):
        if scope["type"] != "websocket":
            return await self.inner(scope, receive, send)
        if not settings.HERALD_JWT_SECRET:
            claims, err = None, "no HERALD_JWT_SECRET configured"
        else:
            claims, err = decode_claims(token_from_scope(scope))
        if claims is None:
            return await self.refuse(scope, receive, send, err)
        scope = dict(scope, jwt=claims)
        return await self.inner(scope, receive, send)

    @staticmethod
    async def refuse(scope, receive, send, err):
        msg = await receive()  # websocket.connect
        if msg["type"] != "websocket.connect":
            return
        if "websocket.http.response" in scope.get("extensions", {}):
            body = json.dumps({"error": err}).encode()
            await send(
                {
                    "type": "websocket.http.response.start",
                    "status": 401,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"content-length", str(len(body)).encode()),
                    ],
                }
            )
            await send({"type": "websocket.http.response.body", "body": body})
        else:
            await send({"type": "websocket.close", "code": 1008})
