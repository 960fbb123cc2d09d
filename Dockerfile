# The one image of ocean-c2d: the operator (`ocean-c2d run`) and the stage steps (`ocean-c2d configure`,
# `filter`, `publish`) are subcommands of its entrypoint. Build it with `docker build -t ocean-c2d .`
# (the project's own machines have no Docker engine; `make lint` runs hadolint on this file).
# Dependencies are pinned with their hashes by requirements.lock (regenerate it with `make lock`).
#
# The base image is pinned by digest: a tag can be moved to other content, a digest cannot. To refresh
# it, resolve the tag's current (multi-platform) digest with `docker buildx imagetools inspect
# python:3.11-slim` or `crane digest python:3.11-slim` and replace it in both FROM lines.

FROM python:3.11-slim@sha256:9c900dea9e8fb7e16277c179b555cc72d29a352dbc33cff48ad5a0412fd5bfc7 AS build
WORKDIR /src
COPY requirements.lock pyproject.toml README.md ./
COPY operator ./operator
# Every dependency is fetched only if it matches a hash of requirements.lock (--require-hashes); the
# project's own wheel is built from the sources above, without fetching anything else to install.
RUN pip install --no-cache-dir pip==25.3 \
 && pip wheel --no-cache-dir --require-hashes --no-deps --wheel-dir /wheels --requirement requirements.lock \
 && pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM python:3.11-slim@sha256:9c900dea9e8fb7e16277c179b555cc72d29a352dbc33cff48ad5a0412fd5bfc7
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
