"""Settings of the baseline: the seed's stack (Django Channels + channels_redis +
PostgreSQL), deployed lean as a tuned production site would be.

Everything that varies between runs comes from the environment:

- BASELINE_PG_DB (required), BASELINE_PG_HOST (127.0.0.1), BASELINE_PG_PORT (5432),
  BASELINE_PG_USER (root; trust auth, no password)
- BASELINE_PG_POOL_MAX: size of each worker's psycopg connection pool (default 10;
  0 = no pool, then BASELINE_CONN_MAX_AGE applies, default 0)
- REDIS_URL (redis://127.0.0.1:6379/0), BASELINE_REDIS_PREFIX (channels_redis prefix,
  default "asgi"), so that concurrent runs do not share groups or queues;
  BASELINE_REDIS_MAX_CONNECTIONS: Redis connections per worker (default 1000)
- HERALD_JWT_SECRET, HERALD_API_KEY: the same secrets herald-bench is given
"""

import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "baseline-only-no-sessions-no-signing")
DEBUG = False
ALLOWED_HOSTS = ["*"]

# Lean: no admin, auth, sessions, messages or static files; no middleware at all
# (the API is authenticated by a bearer key in the views, the WebSocket by a JWT).
INSTALLED_APPS = [
    "channels",
    "notifications",
]
MIDDLEWARE = []
ROOT_URLCONF = "seed.urls"
TEMPLATES = []
ASGI_APPLICATION = "seed.asgi.application"
WSGI_APPLICATION = None

# Reused DB connections. The classic CONN_MAX_AGE does not work under ASGI: Django
# keeps connections per thread, and every HTTP request runs in a thread of its own, so
# each request opens a connection that is never reused and lingers until garbage
# collection (measured here: PostgreSQL's 100 connections were gone within seconds of
# 32 concurrent batch requests, "FATAL: sorry, too many clients already"). Django
# 5.1+'s own psycopg pool is what replaces it for ASGI (and needs CONN_MAX_AGE = 0).
# BASELINE_PG_POOL_MAX=0 turns the pool off and falls back to BASELINE_CONN_MAX_AGE.
PG_POOL_MAX = int(os.environ.get("BASELINE_PG_POOL_MAX", "10"))
CONN_MAX_AGE = 0 if PG_POOL_MAX else int(os.environ.get("BASELINE_CONN_MAX_AGE", "0"))

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": os.environ.get("BASELINE_PG_DB", "herald_baseline"),
        "HOST": os.environ.get("BASELINE_PG_HOST", "127.0.0.1"),
        "PORT": os.environ.get("BASELINE_PG_PORT", "5432"),
        "USER": os.environ.get("BASELINE_PG_USER", "root"),
        "PASSWORD": os.environ.get("BASELINE_PG_PASSWORD", ""),
        "CONN_MAX_AGE": CONN_MAX_AGE,
        "CONN_HEALTH_CHECKS": False,
        "OPTIONS": {"pool": {"min_size": 2, "max_size": PG_POOL_MAX}} if PG_POOL_MAX else {},
    }
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

USE_TZ = True
TIME_ZONE = "UTC"
USE_I18N = False

# A batch of 1000 notifications is far above Django's 2.5 MB default only with big
# messages; allow what the contract allows (1000 x 16 KiB).
DATA_UPLOAD_MAX_MEMORY_SIZE = 17 * 1024 * 1024

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
# channels_redis takes one pooled Redis connection per command in flight. redis-py
# 6.x (pinned) lets that pool grow without bound, so that a mass disconnect (10,000
# group_discards at once per worker) would open as many Redis connections, past
# Redis's maxclients; redis-py 8 caps it at 100, which a burst of 200 connects
# already exceeds (MaxConnectionsError kills the consumer). A bound with room for a
# connect storm: beyond it a command fails rather than flooding Redis.
REDIS_MAX_CONNECTIONS = int(os.environ.get("BASELINE_REDIS_MAX_CONNECTIONS", "1000"))

# The article's tuning of the core layer: a deeper per-channel queue (default 100) and
# a shorter message expiry (default 60 s).
CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        "CONFIG": {
            "hosts": [{"address": REDIS_URL, "max_connections": REDIS_MAX_CONNECTIONS}],
            "capacity": 1500,
            "expiry": 10,
            "prefix": os.environ.get("BASELINE_REDIS_PREFIX", "asgi"),
        },
    }
}

HERALD_JWT_SECRET = os.environ.get("HERALD_JWT_SECRET", "")
HERALD_API_KEY = os.environ.get("HERALD_API_KEY", "")
NODE_NAME = os.environ.get("BASELINE_NODE_NAME", "baseline")
HEARTBEAT_S = 25
INITIAL_STATE_LIMIT = 50
BATCH_MAX = 1000

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": "WARNING"},
    # Every 4xx would be a log line; a production site keeps only errors.
    "loggers": {"django.request": {"level": "ERROR"}},
}
