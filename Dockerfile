# syntax=docker/dockerfile:1
# Build stage: build a wheel of riskstream and its dependencies.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY stream ./stream
COPY models ./models
RUN pip install --no-cache-dir --upgrade pip==24.3.1 \
 && pip wheel --no-cache-dir --wheel-dir /wheels .

# Runtime stage: install the wheels, warm the numba kernels into a writable cache.
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    NUMBA_CACHE_DIR=/var/cache/riskstream/numba
RUN groupadd --system --gid 10001 riskstream \
 && useradd --system --uid 10001 --gid riskstream --no-create-home riskstream \
 && mkdir -p /var/cache/riskstream/numba \
 && chown -R riskstream:riskstream /var/cache/riskstream
COPY --from=build /wheels /wheels
# Local wheels only (no index): the version is the one just built.
# hadolint ignore=DL3013
RUN pip install --no-cache-dir --no-index --find-links=/wheels riskstream \
 && rm -rf /wheels
USER 10001:10001
RUN python -c "from stream.core.warmup import warm_up; warm_up()"
EXPOSE 8080
ENTRYPOINT ["riskstream"]
CMD ["worker"]
