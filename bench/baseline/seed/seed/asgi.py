"""ASGI entry point: Django for HTTP, Channels for the WebSocket.

Run with `uvicorn seed.asgi:application` from this directory (serve.sh does).
"""

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "seed.settings")

from django.core.asgi import get_asgi_application  # noqa: E402

# Set up Django (apps, models) before anything imports models.
django_asgi_app = get_asgi_application()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

from notifications.auth import JWTAuthMiddleware  # noqa: E402
from notifications.routing import websocket_urlpatterns  # noqa: E402

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        "websocket": JWTAuthMiddleware(URLRouter(websocket_urlpatterns)),
    }
)

# serve.sh waits until every worker has loaded the application.
if os.environ.get("BASELINE_READY_DIR"):
    open(os.path.join(os.environ["BASELINE_READY_DIR"], str(os.getpid())), "w").close()
