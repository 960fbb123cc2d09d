# The one image of ocean-c2d: the operator and the configure/filter/publish steps are subcommands
# of its `ocean-c2d` entrypoint. It cannot be built on the project's own machines (no Docker
# engine); users and CI with Docker build it with `docker build -t ocean-c2d .`.

FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator ./operator
RUN pip install --no-cache-dir --upgrade pip==25.3 \
 && pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
RUN useradd --uid 10001 --create-home --shell /usr/sbin/nologin ocean
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
COPY templates /opt/ocean-c2d/templates
COPY crds /opt/ocean-c2d/crds
ENV TEMPLATES_DIR=/opt/ocean-c2d/templates
USER 10001:10001
ENTRYPOINT ["ocean-c2d"]
CMD ["version"]
