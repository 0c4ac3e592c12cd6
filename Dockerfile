# One image for every Conveyor service; the command picks the service (python -m <service>).
FROM python:3.11-slim
WORKDIR /app
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
COPY pyproject.toml README.md ./
COPY shared ./shared
COPY gateway ./gateway
COPY receptionist ./receptionist
COPY scheduler ./scheduler
COPY handler ./handler
COPY registry ./registry
COPY logging_service ./logging_service
RUN pip install '.[redis,postgres,s3]' && useradd --create-home conveyor \
    && mkdir -p /data/artifacts /data/store /data/logs && chown -R conveyor /data
USER conveyor
CMD ["python", "-m", "gateway"]
