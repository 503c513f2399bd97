# One image for every process: web (gunicorn), worker, beat and flower differ only by
# the command docker-compose.yml gives them.
#
#   docker build -t busai .                              # CPU TensorFlow
#   docker build -t busai --build-arg TF_VARIANT=gpu .   # tensorflow[and-cuda], for GPU workers
#
# The GPU build needs only the NVIDIA driver and container toolkit on the host: the CUDA
# and cuDNN libraries come from PyPI with tensorflow[and-cuda].
FROM python:3.11-slim-bookworm

ARG TF_VARIANT=cpu
ARG TF_VERSION=2.21.0

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TF_CPP_MIN_LOG_LEVEL=2

WORKDIR /app

# Dependencies first, so a code change does not reinstall TensorFlow.
# python-ldap (directory login) compiles against OpenLDAP: the headers and compiler are
# removed again after pip, the runtime libraries stay.
COPY requirements.txt requirements-ldap.txt ./
RUN set -eu; \
    apt-get update; \
    apt-get install -y --no-install-recommends libldap-2.5-0 libsasl2-2 \
      gcc libc6-dev libldap2-dev libsasl2-dev; \
    case "$TF_VARIANT" in \
      cpu) tensorflow="tensorflow-cpu==$TF_VERSION" ;; \
      gpu) tensorflow="tensorflow[and-cuda]==$TF_VERSION" ;; \
      *) echo "TF_VARIANT must be cpu or gpu, got $TF_VARIANT" >&2; exit 1 ;; \
    esac; \
    grep -v '^tensorflow-cpu==' requirements.txt > /tmp/requirements.txt; \
    echo "$tensorflow" >> /tmp/requirements.txt; \
    pip install -r /tmp/requirements.txt -r requirements-ldap.txt; \
    rm /tmp/requirements.txt; \
    apt-get purge -y --auto-remove gcc libc6-dev libldap2-dev libsasl2-dev; \
    rm -rf /var/lib/apt/lists/*

RUN useradd --system --uid 10001 --home-dir /app --shell /usr/sbin/nologin busai

COPY --chown=busai:busai . .

# Static files collected at build time into STATIC_ROOT (var/static). The secret here only
# lets the settings load for this one command; it is not in the running containers.
RUN DEBUG=0 SECRET_KEY=collectstatic-only python manage.py collectstatic --noinput \
    && mkdir -p var/media \
    && chown -R busai:busai var

USER busai
EXPOSE 8000
CMD ["gunicorn", "portal.wsgi:application", "--bind", "0.0.0.0:8000"]
