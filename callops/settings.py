"""Django settings for callops. Every value that varies by deployment comes from
the environment through :mod:`callops.config`; see README.md for the variables."""

from __future__ import annotations

from datetime import timedelta

from callops.config import BASE_DIR, VAR_DIR, load_config

CONFIG = load_config()

DEBUG = CONFIG.debug
SECRET_KEY = CONFIG.secret_key
ALLOWED_HOSTS = list(CONFIG.allowed_hosts)
PUBLIC_BASE_URL = CONFIG.public_base_url
TWILIO_AUTH_TOKEN = CONFIG.twilio_auth_token
IVR_FALLBACK_NUMBER = CONFIG.fallback_phone_number
# Webhook transactions commit without waiting for the disk (see callops.ivr.service).
IVR_ASYNC_COMMIT = CONFIG.ivr_async_commit
# IVR (callops.ivr): failed attempts per stage before the call ends or goes to the
# fallback number, and how long the TwiML answer to a Twilio request is kept to
# replay it to a retry of that request (Twilio retries within seconds).
IVR_MAX_ATTEMPTS = 3
IVR_REPLAY_TTL = 600
NODE_ID = CONFIG.node_id
SIP_LISTEN = CONFIG.sip_listen
REDIS_URL = CONFIG.redis_url
VAR_DIR.mkdir(exist_ok=True)

# --- Transport security --------------------------------------------------------
# HTTPS_ONLY (on unless DEBUG is) makes `manage.py check --deploy` clean: plain
# HTTP is redirected, cookies travel over HTTPS only, and browsers are told (HSTS)
# to use nothing else. /healthz and /metrics are exempt from the redirect: load
# balancers and Prometheus probe them on the private network over plain HTTP.
SECURE_SSL_REDIRECT = CONFIG.https_only
SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^metrics$"]
SESSION_COOKIE_SECURE = CONFIG.https_only
CSRF_COOKIE_SECURE = CONFIG.https_only
SECURE_HSTS_SECONDS = CONFIG.hsts_seconds
SECURE_HSTS_INCLUDE_SUBDOMAINS = CONFIG.hsts_seconds > 0
SECURE_HSTS_PRELOAD = CONFIG.hsts_seconds > 0
# Behind TRUSTED_PROXIES (a TLS-terminating proxy) the request reaches us over
# HTTP; the proxy's X-Forwarded-Proto says whether the client used HTTPS. Only
# trust it with a proxy that sets or strips that header on every request.
TRUSTED_PROXIES = CONFIG.trusted_proxies
if TRUSTED_PROXIES:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")

# --- Health and metrics (callops.health, callops.views) --------------------------
# Details of /healthz (versions, workers, nodes, error texts) go to staff and to
# `Authorization: Bearer $HEALTH_TOKEN`; /metrics to `Bearer $METRICS_TOKEN` or a
# client in METRICS_ALLOWED_NETWORKS (default loopback only).
HEALTH_TOKEN = CONFIG.health_token
METRICS_TOKEN = CONFIG.metrics_token
METRICS_ALLOWED_NETWORKS = CONFIG.metrics_networks
# A report is reused this long (per process and, through Redis, by every process).
HEALTH_CACHE_SECONDS = 2.0
# Celery is failing when no worker has stamped its heartbeat for this long
# (workers stamp every 2 s; see callops.health.WorkerHeartbeat).
HEALTH_WORKER_MAX_AGE = 10.0
HEALTH_REDIS_TIMEOUT = 0.5  # seconds, connect and each reply
HEALTH_DB_TIMEOUT_MS = 1000  # statement timeout of the health query (PostgreSQL)

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_prometheus",
    "rest_framework",
    "rest_framework.authtoken",
    "drf_spectacular",
    "callops.apps.CallopsConfig",
    "sipcore.apps.SipcoreConfig",
]

MIDDLEWARE = [
    "django_prometheus.middleware.PrometheusBeforeMiddleware",
    "callops.middleware.RequestIdMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_prometheus.middleware.PrometheusAfterMiddleware",
]

ROOT_URLCONF = "callops.urls"
WSGI_APPLICATION = "callops.wsgi.application"
ASGI_APPLICATION = "callops.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASES = {"default": CONFIG.database}
if DATABASES["default"]["ENGINE"].endswith("sqlite3"):
    # SQLite serves concurrent webhooks (gunicorn workers, runserver threads) only if:
    # - a transaction takes the write lock when it begins, so two read-then-write
    #   transactions queue for it instead of one failing with "database is locked";
    # - WAL lets readers go on while one writes, and synchronous=NORMAL commits
    #   without an fsync each (still crash-safe; a power cut may lose the last ones).
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        transaction_mode="IMMEDIATE", init_command="PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL"
    )
    # Django's SQLite backend, with a flush the audit tables' triggers let through.
    DATABASES["default"]["ENGINE"] = "callops.db_backends.sqlite3"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

if REDIS_URL:
    CACHES = {
        "default": {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": "cache",
            "OPTIONS": {
                "SOCKET_CONNECT_TIMEOUT": 1,
                "SOCKET_TIMEOUT": 1,
                # A cache miss is better than a 500 while Redis is away.
                "IGNORE_EXCEPTIONS": True,
            },
        }
    }
else:
    # No Redis configured (a bare `manage.py migrate`, say): nothing durable
    # lives in the cache, so a per-process one is a safe stand-in.
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "static"

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAdminUser"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.LimitOffsetPagination",
    "PAGE_SIZE": 50,
}
SPECTACULAR_SETTINGS = {
    "TITLE": "callops API",
    "DESCRIPTION": "SIP transactions and IVR calls: list, inspect, snapshot, restore, migrate.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SERVE_PERMISSIONS": ["rest_framework.permissions.IsAdminUser"],  # like the API it describes
}

# --- Celery -----------------------------------------------------------------
# Redis is both broker and result backend; JSON only, so a message can never
# carry code (no pickle).
CELERY_BROKER_URL = REDIS_URL
CELERY_RESULT_BACKEND = REDIS_URL
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_RESULT_EXPIRES = timedelta(hours=1)
CELERY_TIMEZONE = TIME_ZONE
# Every task in this project takes ids, re-reads state and is safe to run twice,
# so a message is acknowledged only after the task finished: a worker that dies
# mid-task leaves it to be redelivered instead of lost.
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_TIME_LIMIT = 300
CELERY_TASK_SOFT_TIME_LIMIT = 240
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_BROKER_TRANSPORT_OPTIONS = {
    # Unacked messages come back after this long; no task here runs near it
    # and none is scheduled with a long ETA (durable timers live in Redis).
    "visibility_timeout": 3600,
    "socket_connect_timeout": 2,
    "socket_timeout": 5,
}
CELERY_REDIS_BACKEND_HEALTH_CHECK_INTERVAL = 10
CELERY_WORKER_HIJACK_ROOT_LOGGER = False  # keep our JSON logging
CELERY_BEAT_SCHEDULE_FILENAME = str(VAR_DIR / "celerybeat-schedule")
CELERY_BEAT_SCHEDULE = {
    # Proves end to end that beat schedules and a worker executes: the worker
    # stamps Redis, and /healthz shows how long ago that happened.
    "record-worker-heartbeat": {
        "task": "callops.tasks.record_worker_heartbeat",
        "schedule": 15.0,
        "options": {"expires": 14.0},
    },
    # Closes IVR call sessions whose Redis state expired without a final status
    # callback (caller went silent, callback lost), so none stays "in progress".
    "sweep-expired-call-states": {
        "task": "callops.tasks.sweep_expired_call_states",
        "schedule": 60.0,
        "options": {"expires": 55.0},
    },
}

# --- Logging ----------------------------------------------------------------
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"context": {"()": "callops.logging.ContextFilter"}},
    "formatters": {
        "json": {
            "()": "callops.logging.JsonFormatter",
            "fmt": "%(asctime)s %(levelname)s %(name)s %(message)s",
            "rename_fields": {"asctime": "time", "levelname": "level", "name": "logger"},
        },
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s [%(request_id)s%(task_id)s] %(message)s"},
    },
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "filters": ["context"],
            "formatter": "json" if CONFIG.log_json else "plain",
        }
    },
    "root": {"handlers": ["console"], "level": CONFIG.log_level},
    "loggers": {
        "django.db.backends": {"level": "INFO"},
        "django.server": {"handlers": ["console"], "level": "INFO", "propagate": False},
        "celery": {"level": CONFIG.log_level},
    },
}

# --- SIP transaction audit (sipcore.audit) --------------------------------------------
# The store appends each stored version to one of SIP_STORE_SHARDS Redis streams
# ({sip:<shard>}:audit); the ingester mirrors them into the database.
SIP_STORE_SHARDS = 16
# TransactionSnapshotRecord rows (and terminated SipTransaction rows) older than this are pruned.
SIP_AUDIT_RETENTION_DAYS = 30
# A pending entry idle this long belongs to a consumer presumed dead, and is claimed.
SIP_AUDIT_CLAIM_IDLE_MS = 60_000
