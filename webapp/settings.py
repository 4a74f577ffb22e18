"""Distillery settings: one flat module, read from environment variables.

Our own settings carry the prefix DISTILLERY_; the database and broker use the usual DATABASE_URL
and REDIS_URL. A bad value stops the process with a message naming the variable and what would be
accepted, instead of silently falling back to a default. See docs/web.md for the full list.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def envstr(name: str, default: str) -> str:
    """The variable's text, or default when it is unset or empty."""
    value = os.environ.get(name, "").strip()
    return value or default


def envbool(name: str, default: bool) -> bool:
    """A yes/no variable; anything but 1/0, true/false, yes/no, on/off is an error."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    if raw.lower() in _TRUE:
        return True
    if raw.lower() in _FALSE:
        return False
    raise ImproperlyConfigured(f"{name}={raw!r}: use 1/0, true/false, yes/no")


def envint(name: str, default: int, minimum: int | None = None) -> int:
    """A whole-number variable, optionally at least `minimum`."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ImproperlyConfigured(
            f"{name}={raw!r}: expected a whole number, e.g. {default}"
        ) from None
    if minimum is not None and value < minimum:
        raise ImproperlyConfigured(f"{name}={raw!r}: must be at least {minimum}")
    return value


def envlist(name: str, default: list[str]) -> list[str]:
    """A comma-separated variable as a list of non-empty items."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    return [item.strip() for item in raw.split(",") if item.strip()]


# -- mode ----------------------------------------------------------------------------------------
# Production turns on every protection `manage.py check --deploy` asks for and requires a real key.
DISTILLERY_PRODUCTION = envbool("DISTILLERY_PRODUCTION", False)
DEBUG = envbool("DISTILLERY_DEBUG", not DISTILLERY_PRODUCTION)

_DEV_SECRET_KEY = "dev-only-not-secret-0f3c9a7e5b2d4c6e8a1b3d5f7e9c2a4b6d8f0e1c3a5b7d9"
SECRET_KEY = envstr("DISTILLERY_SECRET_KEY", "")
if not SECRET_KEY:
    if DISTILLERY_PRODUCTION:
        raise ImproperlyConfigured(
            "DISTILLERY_SECRET_KEY is required when DISTILLERY_PRODUCTION=1: set it to 50 or more "
            "random characters, e.g. the output of "
            "python -c 'import secrets; print(secrets.token_urlsafe(50))'"
        )
    SECRET_KEY = _DEV_SECRET_KEY
elif DISTILLERY_PRODUCTION and (len(SECRET_KEY) < 50 or len(set(SECRET_KEY)) < 5):
    raise ImproperlyConfigured(
        f"DISTILLERY_SECRET_KEY is too weak ({len(SECRET_KEY)} characters): use 50 or more random "
        "characters, e.g. python -c 'import secrets; print(secrets.token_urlsafe(50))'"
    )

ALLOWED_HOSTS = envlist("DISTILLERY_ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]"])
CSRF_TRUSTED_ORIGINS = envlist("DISTILLERY_CSRF_TRUSTED_ORIGINS", [])

# -- apps ----------------------------------------------------------------------------------------
INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "django.contrib.humanize",
    "jobs",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "webapp.urls"
WSGI_APPLICATION = "webapp.wsgi.application"

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

# -- database ------------------------------------------------------------------------------------
try:
    _db = dj_database_url.config(
        default=f"sqlite:///{BASE_DIR / 'db.sqlite3'}",
        conn_max_age=envint("DISTILLERY_DB_CONN_MAX_AGE", 0, minimum=0),
        conn_health_checks=True,
    )
except ValueError as exc:
    raise ImproperlyConfigured(
        f"DATABASE_URL={os.environ.get('DATABASE_URL', '')!r} is not a database URL ({exc}); "
        "use e.g. postgres://user:password@host:5432/name or sqlite:////absolute/path.sqlite3"
    ) from None
if _db["ENGINE"] == "django.db.backends.sqlite3":
    # Web and workers write the same file: wait for locks instead of failing at once, take the
    # write lock when a transaction starts (no deadlock on upgrade), and let readers run
    # alongside the writer (WAL).
    _db.setdefault("OPTIONS", {}).update(
        {
            "timeout": 30,
            "transaction_mode": "IMMEDIATE",
            "init_command": "PRAGMA journal_mode=WAL;PRAGMA synchronous=NORMAL",
        }
    )
    # Tests get a file too (one per test process): the in-memory test database shares one cache
    # between threads, where a worker's heartbeat thread meets "database table is locked" at once
    # instead of waiting for the lock.
    _db["TEST"] = {"NAME": str(Path(tempfile.gettempdir()) / f"distillery-test-{os.getpid()}.db")}
DATABASES = {"default": _db}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# -- auth ----------------------------------------------------------------------------------------
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "runs"
LOGOUT_REDIRECT_URL = "login"

# -- i18n ----------------------------------------------------------------------------------------
LANGUAGE_CODE = "en-us"
TIME_ZONE = envstr("DISTILLERY_TIME_ZONE", "UTC")
USE_I18N = False
USE_TZ = True

# -- static and media ----------------------------------------------------------------------------
STATIC_URL = "/static/"
STATIC_ROOT = Path(envstr("DISTILLERY_STATIC_ROOT", str(BASE_DIR / "staticfiles")))
STATICFILES_DIRS = [BASE_DIR / "static"]
# Hashed, compressed names need `collectstatic`, which production deployments run; elsewhere
# whitenoise serves straight from static/ so gunicorn works without that step.
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": (
            "whitenoise.storage.CompressedManifestStaticFilesStorage"
            if DISTILLERY_PRODUCTION
            else "django.contrib.staticfiles.storage.StaticFilesStorage"
        )
    },
}
WHITENOISE_USE_FINDERS = not DISTILLERY_PRODUCTION
if WHITENOISE_USE_FINDERS:
    # Files come from static/ through the finders; a STATIC_ROOT not collected yet is expected.
    warnings.filterwarnings("ignore", message="No directory at: ")

MEDIA_ROOT = Path(envstr("DISTILLERY_MEDIA_ROOT", str(BASE_DIR / "media"))).resolve()
MEDIA_URL = "/media/"  # not served directly: files go out through login-checked views
FILE_UPLOAD_PERMISSIONS = 0o644
DISTILLERY_MAX_UPLOAD_MB = envint("DISTILLERY_MAX_UPLOAD_MB", 4096, minimum=1)
# Folders whose images may be registered as datasets by path from the web form.
DISTILLERY_DATASET_ROOTS = [
    Path(p).expanduser().resolve()
    for p in envlist("DISTILLERY_DATASET_ROOTS", [str(MEDIA_ROOT), str(BASE_DIR)])
]
# Teacher outputs cached by (teacher fingerprint, image hash, preprocessing); on the media volume
# so every worker shares one cache.
DISTILLERY_CACHE_DIR = Path(
    envstr("DISTILLERY_CACHE_DIR", str(MEDIA_ROOT / "teacher-cache"))
).expanduser()

# -- workers -------------------------------------------------------------------------------------
REDIS_URL = envstr("REDIS_URL", "redis://127.0.0.1:6379/0")
DISTILLERY_TASK_TIME_LIMIT = envint("DISTILLERY_TASK_TIME_LIMIT", 24 * 3600, minimum=60)
DISTILLERY_HEARTBEAT_STALE_SECONDS = envint("DISTILLERY_HEARTBEAT_STALE_SECONDS", 60, minimum=5)

CELERY_BROKER_URL = envstr("DISTILLERY_BROKER_URL", REDIS_URL)
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_BROKER_CONNECTION_TIMEOUT = 5
# With acks_late, Redis hands an unacknowledged task to another worker after the visibility
# timeout: it must outlast the longest task or a long training run would be started twice.
CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": DISTILLERY_TASK_TIME_LIMIT + 600}
CELERY_TASK_TIME_LIMIT = DISTILLERY_TASK_TIME_LIMIT
CELERY_TASK_IGNORE_RESULT = True  # the database holds every run's state
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]

# -- production ----------------------------------------------------------------------------------
if DISTILLERY_PRODUCTION:
    # Behind a TLS-terminating proxy that sets X-Forwarded-Proto (see docs/web.md).
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_SSL_REDIRECT = envbool("DISTILLERY_SSL_REDIRECT", True)
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_HSTS_SECONDS = envint("DISTILLERY_HSTS_SECONDS", 31536000, minimum=0)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = envbool("DISTILLERY_HSTS_INCLUDE_SUBDOMAINS", True)
    SECURE_HSTS_PRELOAD = envbool("DISTILLERY_HSTS_PRELOAD", False)
    # The health check behind the redirect must answer plain HTTP inside the container network.
    SECURE_REDIRECT_EXEMPT = [r"^healthz/$"]
    if not SECURE_HSTS_PRELOAD:
        # Preloading commits the whole domain to HTTPS in every browser, for good: the operator
        # opts in with DISTILLERY_HSTS_PRELOAD=1 rather than this app choosing it for them.
        SILENCED_SYSTEM_CHECKS = ["security.W021"]

SESSION_COOKIE_HTTPONLY = True
X_FRAME_OPTIONS = "DENY"

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": envstr("DISTILLERY_LOG_LEVEL", "INFO").upper()},
}
