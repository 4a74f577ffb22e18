# One image for every Distillery service: web (gunicorn), the gpu and cpu Celery workers and the
# stale-run checker; docker-compose.yml picks the command. torch from PyPI is its CUDA build, so
# the gpu worker uses the GPU that compose reserves for it and the others run on the CPU.
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DISTILLERY_MEDIA_ROOT=/data/media \
    DISTILLERY_STATIC_ROOT=/app/staticfiles

# libgomp: OpenMP for torch and onnxruntime on the CPU; libglib: OpenCV's headless build.
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 libglib2.0-0 \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY requirements.txt .
RUN pip install -r requirements.txt

COPY . .
# Static files are collected at build time (production mode serves hashed names); the key is a
# throw-away for this one command, the real one comes from the environment at run time.
RUN DISTILLERY_PRODUCTION=1 DISTILLERY_SECRET_KEY="$(python -c 'import secrets; print(secrets.token_urlsafe(50))')" \
    python manage.py collectstatic --noinput -v 0

RUN useradd --create-home --uid 1000 distillery \
    && mkdir -p /data/media \
    && chown -R distillery:distillery /data
USER distillery

EXPOSE 8000
CMD ["gunicorn", "webapp.wsgi", "--bind", "0.0.0.0:8000", "--workers", "3", "--timeout", "120"]
