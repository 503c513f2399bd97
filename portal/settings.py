"""Portal settings. The environment is read here and only here.

Every value goes through a small typed helper that raises ImproperlyConfigured on a
bad value, so a typo in production fails at start instead of running with a default.
The defaults make a bare checkout work: SQLite and media under var/, a local Redis.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
import tempfile
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import TypeVar

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent

_Number = TypeVar("_Number", int, float)
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def env_str(name: str, default: str = "") -> str:
    return os.environ.get(name, default)


def env_bool(name: str, default: bool = False) -> bool:
    raw = os.environ.get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ImproperlyConfigured(
        f"{name} must be a boolean (true/false/1/0), got {raw!r}"
    )


def env_int(name: str, default: int, *, minimum: int | None = None) -> int:
    return _env_number(name, default, int, "an integer", minimum)


def env_float(name: str, default: float, *, minimum: float | None = None) -> float:
    return _env_number(name, default, float, "a number", minimum)


def _env_number(
    name: str,
    default: _Number,
    convert: Callable[[str], _Number],
    kind: str,
    minimum: _Number | None,
) -> _Number:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = convert(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be {kind}, got {raw!r}") from None
    if isinstance(value, float) and not math.isfinite(value):
        raise ImproperlyConfigured(f"{name} must be a finite number, got {raw!r}")
    if minimum is not None and value < minimum:
        raise ImproperlyConfigured(f"{name} must be >= {minimum}, got {value}")
    return value


def env_list(name: str, default: list[str]) -> list[str]:
    raw = os.environ.get(name)
    if raw is None:
        return default
    return [item.strip() for item in raw.split(",") if item.strip()]


def env_choice(name: str, default: str, choices: tuple[str, ...]) -> str:
    value = os.environ.get(name, default).strip().lower()
    if value not in choices:
        raise ImproperlyConfigured(
            f"{name} must be one of {', '.join(choices)}, got {value!r}"
        )
    return value


def env_path(name: str, default: Path) -> Path:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    path = Path(raw).expanduser()
    return path if path.is_absolute() else BASE_DIR / path


def env_rate(name: str, default: str) -> str:
    """A throttle rate such as "120/minute" (second, minute, hour or day)."""
    value = os.environ.get(name, default).strip()
    count, _, period = value.partition("/")
    if not count.isdigit() or period[:1] not in ("s", "m", "h", "d"):
        raise ImproperlyConfigured(
            f"{name} must look like 120/minute (per second, minute, hour or day), "
            f"got {value!r}"
        )
    return value


def _ae_title(name: str, value: str) -> str:
    """A DICOM AE title: 1-16 printable ASCII characters, no backslash."""
    title = value.strip()
    if not 1 <= len(title) <= 16 or not all(
        " " <= c <= "~" and c != "\\" for c in title
    ):
        raise ImproperlyConfigured(
            f"{name}: {value!r} is not an AE title (1-16 printable ASCII characters, "
            "no backslash)"
        )
    return title


def _allowed_calling_entry(name: str, value: str) -> str:
    """An allow-list entry: an AE title, or TITLE@ADDRESS (an IP address or network)."""
    title, at, address = value.strip().rpartition("@")
    if not at:
        return _ae_title(name, value)
    try:
        network = ipaddress.ip_network(address.strip(), strict=False)
    except ValueError:
        raise ImproperlyConfigured(
            f"{name}: {value!r} pairs an AE title with {address!r}, which is not an IP "
            "address or network (write TITLE@10.1.2.3 or TITLE@10.1.2.0/24)"
        ) from None
    return f"{_ae_title(name, title)}@{network}"


def env_ae_title(name: str, default: str) -> str:
    return _ae_title(name, os.environ.get(name, default))


def env_dicom_destination(name: str) -> dict[str, object] | None:
    """AE_TITLE@HOST:PORT of a DICOM node, or None when unset."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return None
    title, at, address = raw.partition("@")
    host, colon, port = address.rpartition(":")
    if not at or not colon or not host or not port.isdigit():
        raise ImproperlyConfigured(
            f"{name} must look like PACS_AE@pacs.example.org:104, got {raw!r}"
        )
    if not 1 <= int(port) <= 65535:
        raise ImproperlyConfigured(f"{name}: port must be 1-65535, got {port}")
    return {
        "ae_title": _ae_title(name, title),
        "host": host.strip("[]"),
        "port": int(port),
    }


DEBUG = env_bool("DEBUG", False)

SECRET_KEY = env_str("SECRET_KEY")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured("SECRET_KEY is required unless DEBUG is true")
    SECRET_KEY = "insecure-development-key-never-use-in-production"

ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]"])
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "auditlog",
    "axes",
    "csp",
    # Before portal.accounts, whose admin replaces knox's (which would show digests).
    "knox",
    "portal.accounts",
    "portal.clinical",
    "portal.registry",
    "portal.analyses",
    "portal.review",
    "portal.audit",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",  # Swagger UI served from our own static files
    "portal.ingest",
    "portal.api",
    "portal.dicomnet",
    "portal.pages",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    # Static files, before the login requirement: gunicorn has no file handler of its own.
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "csp.middleware.CSPMiddleware",
    "portal.security.SecurityHeadersMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "portal.security.SessionIdleTimeoutMiddleware",
    "portal.logs.RequestContextMiddleware",
    "django.contrib.auth.middleware.LoginRequiredMiddleware",
    # Puts the signed-in user and client address on every audit log entry.
    "portal.audit.middleware.AuditlogMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Last, as axes asks: it sees the response of a refused login.
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "portal.urls"
WSGI_APPLICATION = "portal.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "portal" / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "portal.review.context_processors.navigation",
            ],
        },
    },
]

VAR_DIR = BASE_DIR / "var"

DATABASE_URL = env_str("DATABASE_URL", f"sqlite:///{VAR_DIR / 'portal.sqlite3'}")
try:
    DATABASES = {"default": dj_database_url.parse(DATABASE_URL, conn_max_age=60)}
except ValueError as exc:
    raise ImproperlyConfigured(
        f"DATABASE_URL is not a valid database URL: {exc}"
    ) from None
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # A file (not in-memory) test database, so a worker subprocess in the end-to-end
    # tests can open the same database as the test process; one per test run (pid), so
    # runs side by side in one checkout do not delete each other's database.
    _sqlite_name = Path(DATABASES["default"]["NAME"])
    _sqlite_name.parent.mkdir(parents=True, exist_ok=True)
    DATABASES["default"]["TEST"] = {
        "NAME": str(Path(tempfile.gettempdir()) / f"test_portal_{os.getpid()}.sqlite3"),
    }
    # Workers write from several threads: take the write lock when a transaction starts
    # (so a busy database waits instead of failing) and let readers run beside a writer.
    DATABASES["default"]["OPTIONS"] = {
        "timeout": 30,
        "transaction_mode": "IMMEDIATE",
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }
    DATABASES["default"]["CONN_MAX_AGE"] = 0
elif DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
    # No JIT compilation: it pays off for long reports, not for a page's queries. At a
    # million analyses the planner's cost of a 50-row dashboard page crossed
    # jit_above_cost and compiling took seconds longer than running the query.
    DATABASES["default"].setdefault("OPTIONS", {})["options"] = "-c jit=off"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {
        "NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"
    },
    {
        "NAME": "django.contrib.auth.password_validation.MinimumLengthValidator",
        "OPTIONS": {"min_length": 12},
    },
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "review:dashboard"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "static"
STATICFILES_DIRS = [BASE_DIR / "portal" / "static"]
# WhiteNoise serves them in every process (gunicorn included), from STATIC_ROOT when
# collected (the image) and straight from the apps' folders otherwise (make run, tests).
WHITENOISE_USE_FINDERS = True
WHITENOISE_MAX_AGE = 3600
# Uncollected outside the image (the finders serve the files then); WhiteNoise warns on
# every request when the folder is missing, so it is made empty.
STATIC_ROOT.mkdir(parents=True, exist_ok=True)

# Storage: originals and artifacts go through Django's storage API. There is no
# MEDIA_URL serving: every download passes through a login-protected view.
STORAGE_BACKEND = env_choice("STORAGE_BACKEND", "local", ("local", "s3"))
MEDIA_ROOT = env_path("MEDIA_ROOT", VAR_DIR / "media")


def s3_storage(
    *, bucket: str, region: str, endpoint_url: str, addressing_style: str
) -> dict[str, object]:
    """The default storage for STORAGE_BACKEND=s3 (portal/storage.py): private objects,
    no storage URLs. Credentials come from boto3's usual sources (AWS_ACCESS_KEY_ID and
    AWS_SECRET_ACCESS_KEY, a profile, an instance role)."""
    if not bucket:
        raise ImproperlyConfigured(
            "AWS_STORAGE_BUCKET_NAME is required when STORAGE_BACKEND=s3"
        )
    if endpoint_url and not endpoint_url.startswith(("https://", "http://")):
        raise ImproperlyConfigured(
            f"AWS_S3_ENDPOINT_URL must start with https:// or http://, got {endpoint_url!r}"
        )
    return {
        "BACKEND": "portal.storage.PrivateS3Storage",
        "OPTIONS": {
            "bucket_name": bucket,
            "region_name": region or None,
            "endpoint_url": endpoint_url or None,
            # S3-compatible stores on a plain host name (MinIO) usually need "path".
            "addressing_style": None
            if addressing_style == "auto"
            else addressing_style,
            "file_overwrite": False,
        },
    }


if STORAGE_BACKEND == "s3":
    AWS_STORAGE_BUCKET_NAME = env_str("AWS_STORAGE_BUCKET_NAME").strip()
    _default_storage = s3_storage(
        bucket=AWS_STORAGE_BUCKET_NAME,
        region=env_str("AWS_S3_REGION_NAME").strip(),
        endpoint_url=env_str("AWS_S3_ENDPOINT_URL").strip(),
        addressing_style=env_choice(
            "AWS_S3_ADDRESSING_STYLE", "auto", ("auto", "path", "virtual")
        ),
    )
else:
    _default_storage = {
        "BACKEND": "django.core.files.storage.FileSystemStorage",
        "OPTIONS": {"location": str(MEDIA_ROOT)},
    }
STORAGES = {
    "default": _default_storage,
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}

# Uploads: every file is decoded before it is accepted; these bound the work.
UPLOAD_MAX_BYTES = env_int("UPLOAD_MAX_BYTES", 50 * 1024 * 1024, minimum=1)
UPLOAD_MAX_PIXELS = env_int("UPLOAD_MAX_PIXELS", 40_000_000, minimum=1)
# Shapes no ultrasound scan has (a 1x1 pixel, a 60000x1 strip) are refused at upload
# rather than analysed: the shorter side in pixels, and longer side / shorter side.
UPLOAD_MIN_SIDE = env_int("UPLOAD_MIN_SIDE", 32, minimum=1)
UPLOAD_MAX_ASPECT_RATIO = env_float("UPLOAD_MAX_ASPECT_RATIO", 10.0, minimum=1.0)
# Uploaded files stream to temporary files on disk; only files under 64 KB stay in
# memory, so a request of many files or one large zip never sits whole in the process.
FILE_UPLOAD_MAX_MEMORY_SIZE = 64 * 1024
DATA_UPLOAD_MAX_NUMBER_FILES = 200
# Zips are read member by member without extracting them; these stop zip bombs.
INGEST_ZIP_MAX_FILES = env_int("INGEST_ZIP_MAX_FILES", 5000, minimum=1)
INGEST_ZIP_MAX_TOTAL_BYTES = env_int(
    "INGEST_ZIP_MAX_TOTAL_BYTES", 4 * 1024**3, minimum=1
)
INGEST_ZIP_MAX_RATIO = env_int("INGEST_ZIP_MAX_RATIO", 100, minimum=1)
# 1: only the uploaded zip is opened; 2: zips inside it too (not deeper).
INGEST_ZIP_MAX_DEPTH = env_int("INGEST_ZIP_MAX_DEPTH", 2, minimum=1)

# Machine learning
ML_WEIGHTS_DIR = env_path("ML_WEIGHTS_DIR", BASE_DIR / "ml" / "weights")
# Model versions installed beside the shipped one (manage.py install_model), one folder
# per version named by it; web and workers must see the same folder.
ML_MODELS_DIR = env_path("ML_MODELS_DIR", BASE_DIR / "var" / "models")
# The most a model version's files may hold when an administrator uploads them (zipped)
# on the model registry page; the shipped Lite0 is 14 MB.
MODEL_UPLOAD_MAX_BYTES = env_int("MODEL_UPLOAD_MAX_BYTES", 200 * 1024 * 1024, minimum=1)
BUSI_DIR = env_path("BUSI_DIR", BASE_DIR.parent / "shared" / "data" / "busi")

# Celery (workers/ reads every CELERY_* name through config_from_object)
REDIS_URL = env_str("REDIS_URL", "redis://127.0.0.1:6379/0")
CELERY_INFERENCE_QUEUE = env_str("CELERY_INFERENCE_QUEUE", "inference")
ANALYSIS_TIME_LIMIT = env_int("ANALYSIS_TIME_LIMIT", 600, minimum=10)
# Analyses waiting in the queue are claimed together and run as one model batch.
ANALYSIS_BATCH_SIZE = env_int("ANALYSIS_BATCH_SIZE", 8, minimum=1)
ANALYSIS_MAX_ATTEMPTS = env_int("ANALYSIS_MAX_ATTEMPTS", 3, minimum=1)
# Threads that draw and store result images while the model runs the next batch
# (0: do it inline, in the task's own thread).
ANALYSIS_RENDER_THREADS = env_int(
    "ANALYSIS_RENDER_THREADS", min(8, max(1, (os.cpu_count() or 2) - 1)), minimum=0
)

CELERY_BROKER_URL = REDIS_URL
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_RESULT_BACKEND = None
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_TIME_LIMIT = ANALYSIS_TIME_LIMIT
CELERY_TASK_SOFT_TIME_LIMIT = int(ANALYSIS_TIME_LIMIT * 0.9)
CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": int(ANALYSIS_TIME_LIMIT * 1.1)}
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# Declared, so that `celery -A workers worker` with no -Q consumes every queue (the
# analyses and the reconciler's sweeps); `-Q inference` still makes a worker that only
# runs analyses. Undeclared, a plain worker would listen on "celery" alone and every
# analysis would stay queued.
CELERY_TASK_DEFAULT_QUEUE = "celery"
# The shadow model version (registry role shadow) runs on new scans in a task of its own
# (workers.tasks.shadow_analyses), sent once a batch's results are stored: no analysis
# waits for it. Its messages are sent at Redis's lowest priority, so a worker consuming
# this queue beside others takes them only when nothing else waits (kombu's BRPOP lists
# every queue's priority-0 list before any priority-9 one); `-Q inference,shadow` runs
# analyses first, `-Q shadow` makes a worker (a spare GPU) for comparisons only.
CELERY_SHADOW_QUEUE = env_str("CELERY_SHADOW_QUEUE", "shadow")
# A shadow run that met a passing fault (the database, storage) is tried again this many
# times, SHADOW_RETRY_DELAY seconds later, doubling each time, then given up (logged).
SHADOW_MAX_RETRIES = env_int("SHADOW_MAX_RETRIES", 5, minimum=0)
SHADOW_RETRY_DELAY = env_float("SHADOW_RETRY_DELAY", 10, minimum=0)
# Each queue on an exchange of its own name: what Celery creates for a queue named at send
# time, so a sender with another queue list (a test, an older release) still matches.
# In this order: a plain worker lists the analyses' queue first.
CELERY_TASK_QUEUES = {
    name: {"exchange": name, "routing_key": name}
    for name in (CELERY_INFERENCE_QUEUE, CELERY_TASK_DEFAULT_QUEUE, CELERY_SHADOW_QUEUE)
}
# Each pool process holds a model (and a GPU's memory): one per worker unless asked,
# not Celery's default of one per CPU.
CELERY_WORKER_CONCURRENCY = env_int("CELERY_WORKER_CONCURRENCY", 1, minimum=1)
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
CELERY_TIMEZONE = TIME_ZONE
# A lost message or a dead worker leaves a row behind; the reconciler sweeps them
# (portal/analyses/reconciler.py), run by every worker process beside its tasks
# (workers/liveness.py): no Celery beat needed. A running row's worker process stamps
# heartbeat_at every ANALYSIS_HEARTBEAT_SECONDS; one with no stamp for
# ANALYSIS_STALE_RUNNING_SECONDS has lost its process and is requeued. A queued row is
# resent only when its message is gone from the broker.
ANALYSIS_HEARTBEAT_SECONDS = env_int("ANALYSIS_HEARTBEAT_SECONDS", 10, minimum=1)
ANALYSIS_STALE_RUNNING_SECONDS = env_int(
    "ANALYSIS_STALE_RUNNING_SECONDS", 45, minimum=1
)
if ANALYSIS_STALE_RUNNING_SECONDS < 3 * ANALYSIS_HEARTBEAT_SECONDS:
    raise ImproperlyConfigured(
        "ANALYSIS_STALE_RUNNING_SECONDS must be at least 3 x ANALYSIS_HEARTBEAT_SECONDS "
        f"({ANALYSIS_STALE_RUNNING_SECONDS} < 3 x {ANALYSIS_HEARTBEAT_SECONDS}): a live "
        "worker's analyses would be taken from it after one late heartbeat"
    )
ANALYSIS_STALE_QUEUED_SECONDS = env_int("ANALYSIS_STALE_QUEUED_SECONDS", 300, minimum=1)
RECONCILE_INTERVAL = env_int("RECONCILE_INTERVAL", 60, minimum=1)

# DICOM networking (portal/dicomnet): the C-STORE receiver (`manage.py dicom_listener`)
# and, optionally, one PACS destination that results are sent to.
DICOM_AE_TITLE = env_ae_title("DICOM_AE_TITLE", "BUSAI")
DICOM_PORT = env_int("DICOM_PORT", 11112, minimum=1)
if DICOM_PORT > 65535:
    raise ImproperlyConfigured(f"DICOM_PORT must be <= 65535, got {DICOM_PORT}")
# Loopback by default; the compose service listens on every interface of its container.
DICOM_BIND_ADDRESS = env_str("DICOM_BIND_ADDRESS", "127.0.0.1")
# Calling AE titles whose associations are accepted; every other one is rejected at
# association. Empty: the listener refuses to start (it would accept nobody).
# An entry TITLE@ADDRESS (an IP address or a network such as 10.1.2.0/24) accepts that
# title only from that address (host pairing); a bare TITLE from anywhere.
DICOM_ALLOWED_CALLING_AE_TITLES = [
    _allowed_calling_entry("DICOM_ALLOWED_CALLING_AE_TITLES", entry)
    for entry in env_list("DICOM_ALLOWED_CALLING_AE_TITLES", [])
]
# DICOM TLS (PS3.15 secure transport). DICOM_TLS_CERT_FILE and DICOM_TLS_KEY_FILE (PEM)
# are this node's certificate and key: set, the listener speaks TLS only, and sending
# presents them as the client certificate. DICOM_TLS_CA_FILE: the CA certificates that
# peers' certificates must chain to; set, the listener requires a client certificate
# (mutual TLS), and sending verifies the PACS against it (else the system's CAs).
DICOM_TLS_CERT_FILE = env_str("DICOM_TLS_CERT_FILE").strip()
DICOM_TLS_KEY_FILE = env_str("DICOM_TLS_KEY_FILE").strip()
DICOM_TLS_CA_FILE = env_str("DICOM_TLS_CA_FILE").strip()
if bool(DICOM_TLS_CERT_FILE) != bool(DICOM_TLS_KEY_FILE):
    raise ImproperlyConfigured(
        "DICOM_TLS_CERT_FILE and DICOM_TLS_KEY_FILE go together: set both or neither"
    )
# Send results to DICOM_DESTINATION over TLS (its certificate checked, host name
# included).
DICOM_DESTINATION_TLS = env_bool("DICOM_DESTINATION_TLS", False)
# A DICOM file whose Patient ID matches a patient with a different name or birth date:
# "reject" refuses it (C000 with the reason); "accept" files it under that patient and
# flags it for review in the upload report.
DICOM_PATIENT_MISMATCH = env_choice(
    "DICOM_PATIENT_MISMATCH", "reject", ("reject", "accept")
)
# The account recorded as uploader of received instances (created, unable to log in,
# if it does not exist).
DICOM_RECEIVER_USERNAME = env_str("DICOM_RECEIVER_USERNAME", "dicom-receiver")
# Where results (SEG, SR, secondary capture) go: AE_TITLE@HOST:PORT, empty for nowhere.
DICOM_DESTINATION = env_dicom_destination("DICOM_DESTINATION")
DICOM_SEND_AFTER_ANALYSIS = env_bool("DICOM_SEND_AFTER_ANALYSIS", True)
DICOM_SEND_AFTER_SIGNOFF = env_bool("DICOM_SEND_AFTER_SIGNOFF", True)
DICOM_SEND_MAX_RETRIES = env_int("DICOM_SEND_MAX_RETRIES", 5, minimum=0)
# A failed send waits DICOM_SEND_RETRY_DELAY seconds, doubling each time, at most
# DICOM_SEND_RETRY_MAX_DELAY. A worker holds a waiting retry unacknowledged, so one that
# waits longer than the broker's visibility timeout (1.1 x ANALYSIS_TIME_LIMIT, 660 s by
# default) is delivered twice: harmless, the objects keep their UIDs, but the default cap
# stays under it.
DICOM_SEND_RETRY_DELAY = env_float("DICOM_SEND_RETRY_DELAY", 10, minimum=0)
DICOM_SEND_RETRY_MAX_DELAY = env_float("DICOM_SEND_RETRY_MAX_DELAY", 600, minimum=0)
# Sends are short network calls: by default on the queue every worker consumes (a
# queue of its own is declared too, so a plain worker consumes it).
CELERY_DICOM_QUEUE = env_str("CELERY_DICOM_QUEUE", "celery")
CELERY_TASK_QUEUES.setdefault(
    CELERY_DICOM_QUEUE,
    {"exchange": CELERY_DICOM_QUEUE, "routing_key": CELERY_DICOM_QUEUE},
)
# Site calibration fits run in a worker (workers.tasks.fit_site_calibration), by default
# on the queue every worker consumes; a fit that met a passing fault (the database
# restarting) is tried again this many times, then left failed for an administrator to
# run again. A fit still "running" after CALIBRATION_FIT_STALE_SECONDS lost its worker:
# it may be run again.
CELERY_CALIBRATION_QUEUE = env_str("CELERY_CALIBRATION_QUEUE", "celery")
CELERY_TASK_QUEUES.setdefault(
    CELERY_CALIBRATION_QUEUE,
    {"exchange": CELERY_CALIBRATION_QUEUE, "routing_key": CELERY_CALIBRATION_QUEUE},
)
CALIBRATION_FIT_MAX_RETRIES = env_int("CALIBRATION_FIT_MAX_RETRIES", 3, minimum=0)
CALIBRATION_FIT_RETRY_DELAY = env_float("CALIBRATION_FIT_RETRY_DELAY", 10, minimum=0)
CALIBRATION_FIT_STALE_SECONDS = env_int(
    "CALIBRATION_FIT_STALE_SECONDS", ANALYSIS_TIME_LIMIT + 60, minimum=1
)
# "Unusual for this model" against the site's own scans: a calibration fitted on at least
# SITE_OOD_MIN_READS signed scans with a distance score carries the site's own
# SITE_OOD_PERCENTILE of those scores; while it is active a scan is unusual only above
# both the model's threshold and that (ml.site_calibration.is_unusual).
SITE_OOD_MIN_READS = env_int("SITE_OOD_MIN_READS", 100, minimum=1)
SITE_OOD_PERCENTILE = env_float("SITE_OOD_PERCENTILE", 99.0, minimum=1.0)
if SITE_OOD_PERCENTILE > 100:
    raise ImproperlyConfigured("SITE_OOD_PERCENTILE must be at most 100")

# An optional UID root of your organisation for the UIDs of the objects the portal
# writes; empty: UUID-derived 2.25 UIDs (ISO/IEC 9834-8).
DICOM_UID_ROOT = env_str("DICOM_UID_ROOT", "")
if DICOM_UID_ROOT and not re.fullmatch(r"[0-9]+(\.[0-9]+)*", DICOM_UID_ROOT):
    raise ImproperlyConfigured(
        f"DICOM_UID_ROOT must be dotted digits such as 1.2.826.0.1.3680043.10.999, "
        f"got {DICOM_UID_ROOT!r}"
    )
if len(DICOM_UID_ROOT) > 40:
    raise ImproperlyConfigured(
        "DICOM_UID_ROOT must be at most 40 characters: the UIDs derived from it need "
        "the rest of the 64 for their unique part"
    )

# REST API (portal/api): token or session authentication, the portal's permissions,
# throttled per user (per address before login), JSON errors.
API_THROTTLE_USER = env_rate("API_THROTTLE_USER", "300/minute")
API_THROTTLE_UPLOADS = env_rate("API_THROTTLE_UPLOADS", "30/minute")
API_THROTTLE_ANON = env_rate("API_THROTTLE_ANON", "20/minute")
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "knox.auth.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_THROTTLE_CLASSES": [
        "rest_framework.throttling.AnonRateThrottle",
        "rest_framework.throttling.UserRateThrottle",
    ],
    "DEFAULT_THROTTLE_RATES": {
        "anon": API_THROTTLE_ANON,
        "user": API_THROTTLE_USER,
        "uploads": API_THROTTLE_UPLOADS,
    },
    "DEFAULT_RENDERER_CLASSES": [
        "rest_framework.renderers.JSONRenderer",
        "rest_framework.renderers.BrowsableAPIRenderer",
    ],
    "DEFAULT_PARSER_CLASSES": [
        "rest_framework.parsers.JSONParser",
        "rest_framework.parsers.FormParser",
        "rest_framework.parsers.MultiPartParser",
    ],
    "DEFAULT_PAGINATION_CLASS": "portal.api.pagination.Pagination",
    "PAGE_SIZE": 50,
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "portal.api.errors.exception_handler",
    "TEST_REQUEST_DEFAULT_FORMAT": "json",
}
# API tokens (django-rest-knox): only a SHA-512 digest is stored, so nobody (superusers
# included) can read a token back; each expires API_TOKEN_TTL_HOURS after it was issued
# and all of a user's tokens are revoked when the password changes or the account is
# deactivated (portal/accounts/tokens.py). "Authorization: Token <key>" as before.
API_TOKEN_TTL_HOURS = env_int("API_TOKEN_TTL_HOURS", 10, minimum=1)
# Kept by token_issue (knox's TOKEN_LIMIT_PER_USER is read only by its LoginView, which
# the portal does not route).
API_TOKENS_PER_USER = env_int("API_TOKENS_PER_USER", 10, minimum=1)
REST_KNOX = {
    "TOKEN_TTL": timedelta(hours=API_TOKEN_TTL_HOURS),
    "AUTO_REFRESH": False,
    "AUTH_HEADER_PREFIX": "Token",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "BUS-AI portal API",
    "DESCRIPTION": (
        "Patients, studies, scan uploads (images, DICOM, zips) and analysis results. "
        "Authenticate with `Authorization: Token <key>` (POST /api/v1/auth/token/; "
        "a token expires after API_TOKEN_TTL_HOURS and with a password change). "
        "Results are decision support, not diagnosis."
    ),
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    "SERVE_PERMISSIONS": ["rest_framework.permissions.IsAuthenticated"],
    "SCHEMA_PATH_PREFIX": "/api/v1",
    "COMPONENT_SPLIT_REQUEST": True,
    # Hospitals' networks often have no internet: Swagger UI ships in the sidecar package.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    # The predicted label and the class Grad-CAM explains are one set of classes.
    "ENUM_NAME_OVERRIDES": {"LabelEnum": "portal.analyses.models.Analysis.Label"},
}

# Structured logs (portal/logs.py): "json" in production, one object per line with the
# request, analysis and scan ids; "plain" appends the same ids for a terminal.
LOG_FORMAT = env_choice("LOG_FORMAT", "plain", ("plain", "json"))
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"context": {"()": "portal.logs.ContextFilter"}},
    "formatters": {
        "plain": {
            "()": "portal.logs.PlainFormatter",
            "format": "%(asctime)s %(levelname)s %(name)s %(message)s",
        },
        "json": {"()": "portal.logs.JsonFormatter"},
    },
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": LOG_FORMAT,
            "filters": ["context"],
        }
    },
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO").upper()},
    # django-auth-ldap names the signing-in user at INFO; the portal logs ids only.
    "loggers": {"django_auth_ldap": {"level": "WARNING"}},
}
# /metrics (Prometheus text format) for a scraper sending "Authorization: Bearer <token>";
# without a token only signed-in staff can read it.
METRICS_TOKEN = env_str("METRICS_TOKEN")

SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SECURE = env_bool("SECURE_COOKIES", False)
CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE
X_FRAME_OPTIONS = "DENY"

# Security (portal/security.py, portal/accounts/lockout.py). SECURE_COOKIES=true means
# "served over HTTPS": it also turns on the HTTPS redirect and HSTS unless set apart.
SESSION_COOKIE_AGE = env_int("SESSION_MAX_AGE", 12 * 3600, minimum=60)
SESSION_EXPIRE_AT_BROWSER_CLOSE = True
SESSION_IDLE_TIMEOUT = env_int("SESSION_IDLE_TIMEOUT", 30 * 60, minimum=60)
# Requests a page sends by itself: they do not keep an idle session alive.
SESSION_IDLE_PASSIVE_PATHS = [r"/status\.json$", r"^/metrics$", r"^/healthz$"]
SESSION_COOKIE_SAMESITE = "Lax"
CSRF_COOKIE_SAMESITE = "Lax"
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", SESSION_COOKIE_SECURE)
# The proxy in front terminates HTTPS and says so; probes inside the network use HTTP.
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^metrics$"]
SECURE_HSTS_SECONDS = env_int(
    "SECURE_HSTS_SECONDS", 31_536_000 if SESSION_COOKIE_SECURE else 0, minimum=0
)
SECURE_HSTS_INCLUDE_SUBDOMAINS = SECURE_HSTS_SECONDS > 0
# Only a directive in the header; being on browsers' preload list needs a submission.
SECURE_HSTS_PRELOAD = SECURE_HSTS_SECONDS > 0
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
SECURE_CROSS_ORIGIN_OPENER_POLICY = "same-origin"
# django-csp: no inline script or style anywhere (the API's Swagger page alone relaxes
# style-src, portal/api/docs.py).
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": ["'self'"],
        "script-src": ["'self'"],
        "style-src": ["'self'"],
        "img-src": ["'self'", "data:", "blob:"],
        "font-src": ["'self'"],
        "connect-src": ["'self'"],
        "object-src": ["'none'"],
        "base-uri": ["'none'"],
        "form-action": ["'self'"],
        "frame-ancestors": ["'none'"],
    }
}
PERMISSIONS_POLICY = "camera=(), microphone=(), geolocation=(), payment=(), usb=()"
# Axes' backend comes first: it refuses a locked name or address before any backend
# that checks a password (this one, or a directory backend added after it) runs.
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
LOGIN_MAX_FAILURES = env_int("LOGIN_MAX_FAILURES", 5, minimum=1)
LOGIN_MAX_FAILURES_PER_IP = env_int("LOGIN_MAX_FAILURES_PER_IP", 50, minimum=1)
LOGIN_LOCKOUT_SECONDS = env_int("LOGIN_LOCKOUT_SECONDS", 15 * 60, minimum=1)
# The client address (login lockout, access records; portal/clientaddress.py): proxies
# in front of the portal that append to X-Forwarded-For (0: use REMOTE_ADDR), and the
# addresses or networks those proxies connect from. The header is believed only from a
# peer in TRUSTED_PROXIES, so a client that reaches the portal directly cannot choose
# the address its failures are counted under.
NUM_PROXIES = env_int("NUM_PROXIES", 0, minimum=0)
TRUSTED_PROXIES = env_list("TRUSTED_PROXIES", [])
try:
    from portal.clientaddress import parse_networks

    parse_networks(TRUSTED_PROXIES)
except ValueError as exc:
    raise ImproperlyConfigured(f"TRUSTED_PROXIES: {exc}") from None
if NUM_PROXIES and not TRUSTED_PROXIES:
    raise ImproperlyConfigured(
        f"NUM_PROXIES={NUM_PROXIES} needs TRUSTED_PROXIES, the addresses the proxies "
        "connect from (such as 10.0.0.5 or 172.18.0.0/16): without them any client "
        "could set X-Forwarded-For and choose its own address"
    )
# django-axes counts failures per name and per address in the cache; the two limits
# above and the messages come from portal/accounts/lockout.py.
AXES_HANDLER = "portal.accounts.lockout.LockoutHandler"
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"], "ip_address"]
AXES_FAILURE_LIMIT = LOGIN_MAX_FAILURES
AXES_COOLOFF_TIME = "portal.accounts.lockout.cool_off"
AXES_USERNAME_CALLABLE = "portal.accounts.lockout.lockout_username"
AXES_CLIENT_IP_CALLABLE = "portal.clientaddress.client_address"
AXES_LOCKOUT_CALLABLE = "portal.accounts.lockout.keep_the_views_answer"
# The cache handler keeps no rows for the admin to show.
AXES_ENABLE_ADMIN = False
AXES_VERBOSE = False
# Login failure counts live here: a shared Redis in production (CACHE_URL), else memory.
CACHE_URL = env_str("CACHE_URL")
if CACHE_URL:
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": CACHE_URL,
            "KEY_PREFIX": "portal",
        }
    }
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}

# Directory login (portal/accounts/directory.py): off unless LDAP_SERVER_URI is set, so
# python-ldap (requirements-ldap.txt) is needed only where it is used. The directory
# backend comes after the lockout backend, which refuses a locked name before the
# directory is asked; local accounts keep signing in with their own passwords.
LDAP_SERVER_URI = env_str("LDAP_SERVER_URI").strip()
if LDAP_SERVER_URI:
    from portal.accounts.directory_settings import directory_settings

    # Every AUTH_LDAP_* name django-auth-ldap reads, and LDAP_ROLE_GROUPS.
    globals().update(
        directory_settings(
            server_uri=LDAP_SERVER_URI,
            bind_dn=env_str("LDAP_BIND_DN"),
            bind_password=env_str("LDAP_BIND_PASSWORD"),
            user_search_base=env_str("LDAP_USER_SEARCH_BASE"),
            user_filter=env_str("LDAP_USER_FILTER", "(uid=%(user)s)"),
            user_dn_template=env_str("LDAP_USER_DN_TEMPLATE"),
            group_search_base=env_str("LDAP_GROUP_SEARCH_BASE"),
            group_type=env_str("LDAP_GROUP_TYPE", "groupOfNames").strip().lower(),
            group_filter=env_str("LDAP_GROUP_FILTER"),
            role_groups={
                "staff": env_str("LDAP_GROUP_STAFF"),
                "radiologist": env_str("LDAP_GROUP_RADIOLOGIST"),
                "administrator": env_str("LDAP_GROUP_ADMINISTRATOR"),
            },
            attribute_map={
                "first_name": env_str("LDAP_ATTR_FIRST_NAME", "givenName"),
                "last_name": env_str("LDAP_ATTR_LAST_NAME", "sn"),
                "email": env_str("LDAP_ATTR_EMAIL", "mail"),
            },
            start_tls=env_bool("LDAP_START_TLS", False),
            timeout=env_int("LDAP_TIMEOUT", 5, minimum=1),
        )
    )
    AUTHENTICATION_BACKENDS = [
        *AUTHENTICATION_BACKENDS,
        "portal.accounts.directory.DirectoryBackend",
    ]

# The site's key for pseudonymous patient keys in training exports (export_training_set):
# an HMAC of the patient identifier, not reversible without it. Keep it secret and
# stable: the same key gives a patient the same key in every export.
TRAINING_EXPORT_KEY = env_str("TRAINING_EXPORT_KEY")
