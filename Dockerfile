# syntax=docker/dockerfile:1
# projmig's image. One image, three uses:
#   docker run --rm -v $PWD:/work IMAGE migrate --config /work/cfg.json     # the CLI (entrypoint: projmig)
#   docker run --rm -e PREFECT_API_URL=... IMAGE prefect worker start --pool projmig   # a process worker
#   as the image of a Docker/Kubernetes work pool: flow-run containers run `prefect flow-run execute`
# (deployments/docker-entrypoint.sh runs `prefect ...`, `python ...`, `sh ...` as given, anything else
# as `projmig ...`).
ARG PYTHON_VERSION=3.11

# --- build: wheels of projmig and of everything it needs (with the Dask extra) ---
FROM python:${PYTHON_VERSION}-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY projmig ./projmig
COPY flows ./flows
COPY deployments ./deployments
RUN pip wheel --no-cache-dir --wheel-dir /wheels ".[dask]"

# --- runtime: the wheels installed, no compiler, no sources, a user without privileges ---
FROM python:${PYTHON_VERSION}-slim AS runtime
RUN useradd --create-home --uid 10001 --user-group projmig
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links /wheels "projmig[dask]"
COPY --chmod=0755 deployments/docker-entrypoint.sh /usr/local/bin/docker-entrypoint.sh
USER projmig
WORKDIR /home/projmig
ENV PREFECT_HOME=/home/projmig/.prefect \
    PREFECT_SERVER_ANALYTICS_ENABLED=false \
    PYTHONUNBUFFERED=1
ENTRYPOINT ["docker-entrypoint.sh"]
CMD ["--help"]
