# The control-plane image: one image for the API, the workers and `controlplane migrate`.
#   docker build -t controlplane .
# The compose file chooses the command; the default runs the API.

FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml ./
COPY api ./api
COPY workflows ./workflows
COPY activities ./activities
COPY worker ./worker
COPY controlplane ./controlplane
# The schema migrations are package data of controlplane (controlplane/migrations).
RUN python -m venv /opt/controlplane \
    && /opt/controlplane/bin/pip install . \
    && /opt/controlplane/bin/controlplane --version

FROM python:3.11-slim
ENV PATH=/opt/controlplane/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/home/controlplane \
    CONTROLPLANE_HOME=/home/controlplane/.controlplane
# Workers run as this unprivileged user too, and mark themselves non-dumpable, so the tools
# they start (same user) cannot read their memory or /proc environment. /certs is where the
# compose `certs` service writes Temporal's CA and certificate (a volume takes its owner).
RUN groupadd --system --gid 10001 controlplane \
    && useradd --system --uid 10001 --gid controlplane --create-home \
       --home-dir /home/controlplane --shell /usr/sbin/nologin controlplane \
    && mkdir /certs && chown controlplane:controlplane /certs
COPY --from=build /opt/controlplane /opt/controlplane
USER controlplane:controlplane
WORKDIR /home/controlplane
EXPOSE 8001
CMD ["controlplane", "api", "--host", "0.0.0.0", "--port", "8001"]
