# syntax=docker/dockerfile:1
# projmig's image. One image, three uses:
#   docker run --rm -v $PWD:/work IMAGE migrate --config /work/cfg.json     # the CLI (entrypoint: projmig)
#   docker run --rm -e PREFECT_API_URL=... IMAGE prefect worker start --pool projmig   # a process worker
#   as the image of a Docker/Kubernetes work pool: flow-run containers run `prefect flow-run execute`
# (deployments/docker-entrypoint.sh runs `prefect ...`, `python ...`, `sh ...` as given, anything else
# as `projmig ...`).
# Across osparc releases (docs/across-releases.md): osparc-simcore's packages/ directory is mounted, e.g.
# `-v /srv/osparc-simcore/packages:/osparc:ro` with host.schema_migrations=/osparc/postgres-database;
# the staging database runs on the PostgreSQL server binaries installed here (PG_BINDIR).
ARG PYTHON_VERSION=3.11

# --- build: wheels of projmig and of everything it needs (with the Dask extra) ---
FROM python:${PYTHON_VERSION}-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY projmig ./projmig
COPY flows ./flows
COPY deployments ./deployments
RUN pip wheel --no-cache-dir --wheel-dir /wheels ".[dask,releases]"

# --- runtime: the wheels installed, no compiler, no sources, a user without privileges ---
FROM python:${PYTHON_VERSION}-slim AS runtime
ARG POSTGRES_MAJOR=15
RUN apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        postgresql-${POSTGRES_MAJOR} postgresql-client-${POSTGRES_MAJOR} \
    && rm -rf /var/lib/apt/lists/*
RUN useradd --create-home --uid 10001 --user-group projmig
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links /wheels "projmig[dask,releases]"
COPY --chmod=0755 deployments/docker-entrypoint.sh /usr/local/bin/docker-entrypoint.sh
USER projmig
WORKDIR /home/projmig
ENV PREFECT_HOME=/home/projmig/.prefect \
    PG_BINDIR=/usr/lib/postgresql/15/bin \
    PREFECT_SERVER_ANALYTICS_ENABLED=false \
    PYTHONUNBUFFERED=1
ENTRYPOINT ["docker-entrypoint.sh"]
CMD ["--help"]
