# The one image of ocean-c2d: the operator (`ocean-c2d run`) and the stage steps (`ocean-c2d configure`,
# `filter`, `publish`) are subcommands of its entrypoint. Build it with `docker build -t ocean-c2d .`
# (the project's own machines have no Docker engine; `make lint` runs hadolint on this file).
# Dependencies are pinned by requirements.lock (regenerate it with `make lock`).

FROM python:3.11-slim AS build
WORKDIR /src
COPY requirements.lock pyproject.toml README.md ./
COPY operator ./operator
RUN pip install --no-cache-dir pip==25.3 \
 && pip wheel --no-cache-dir --wheel-dir /wheels --constraint requirements.lock .

FROM python:3.11-slim
RUN useradd --uid 10001 --no-create-home --shell /usr/sbin/nologin ocean
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index /wheels/*.whl && rm -rf /wheels
# The built-in templates (the operator looks here); TEMPLATES_DIR may point at a mounted override.
COPY templates /opt/ocean-c2d/templates
COPY crds /opt/ocean-c2d/crds
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 10001:10001
ENTRYPOINT ["ocean-c2d"]
CMD ["run"]
