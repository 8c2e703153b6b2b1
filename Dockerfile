# sbg-export-watcher as a container.
#
#   docker build -t sbg-export-watcher .
#   docker run -d --name sbg-export-watcher -p 127.0.0.1:8080:8080 -v sbg-watcher-data:/data \
#     -e SB_AUTH_TOKEN -e WATCHER_API_TOKEN -e WATCHER_WEBHOOK_URLS -e WATCHER_WEBHOOK_SECRET \
#     sbg-export-watcher
#
# Other commands run through the same entry point (they listen on nothing, so loopback spares
# them the API token): `docker run --rm -e SB_AUTH_TOKEN -e WATCHER_HTTP_HOST=127.0.0.1
# sbg-export-watcher get <export id>`.

# Node's major version is pinned (22, an LTS line); the minor and patch follow the tag so that a
# rebuild picks up security fixes. Both stages use the same base, so the production dependencies
# installed in the runtime stage match the Node that runs them.

# ---- build: dev dependencies, TypeScript compile, then production dependencies only -------------
FROM node:22-bookworm-slim AS build
# better-sqlite3 (the state database) has a native binding: npm fetches a prebuilt one when it
# can, and compiles it otherwise, which needs python3, make and g++. They stay in this stage.
RUN apt-get update \
  && apt-get install -y --no-install-recommends python3 make g++ \
  && rm -rf /var/lib/apt/lists/*
WORKDIR /app
# The manifests first, so the dependency layer is cached until they change.
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY tsconfig.json tsconfig.build.json ./
COPY src ./src
# The compiled binding is kept: pruning the dev dependencies leaves the production ones, built
# here for the same Node as the runtime stage (same base image).
RUN npm run build \
  && npm prune --omit=dev --no-audit --no-fund \
  && npm cache clean --force

# ---- runtime: compiled JavaScript and production dependencies only --------------------------------
FROM node:22-bookworm-slim AS runtime

# tini runs as PID 1 and starts node as its child. Node as PID 1 is a poor init: the kernel gives
# PID 1 no default signal actions, so any signal node has no handler for (SIGTERM before the
# daemon installs its own, SIGQUIT, SIGHUP ...) is silently ignored and `docker stop` waits out
# its timeout before SIGKILL; and PID 1 must reap orphaned children, which node never does, so
# zombies would pile up. tini forwards every signal to node, reaps zombies and exits with node's
# exit code. (Same effect as `docker run --init`, without relying on the caller to pass it.)
RUN apt-get update \
  && apt-get install -y --no-install-recommends tini \
  && rm -rf /var/lib/apt/lists/*

# V8 sizes its heap from the limit: with the default (a quarter of the host's memory) it keeps far
# more freed memory. 512 MB holds about a million watched exports; raise it beyond that. A 2 MB
# young generation (default 16 MB) keeps ~30 MB less resident at 100,000 watched exports: what
# the daemon allocates per request dies young, so the extra collections cost no measurable CPU.
ENV NODE_ENV=production \
  NODE_OPTIONS="--max-old-space-size=512 --max-semi-space-size=2"
WORKDIR /app
COPY package.json package-lock.json ./
COPY --from=build /app/node_modules ./node_modules
COPY --from=build /app/dist ./dist

# The volume's mount point must exist and belong to node before VOLUME, so a new named volume
# is created writable by the non-root user.
RUN mkdir -p /data && chown node:node /data

# Listen on every interface so the published port reaches the daemon. A non-loopback
# WATCHER_HTTP_HOST makes WATCHER_API_TOKEN required: without it the daemon refuses to start
# (exit 2, naming WATCHER_API_TOKEN), so the control API is never open unauthenticated.
# /healthz, /readyz and /metrics stay open for probes and scrapers.
ENV WATCHER_HTTP_HOST=0.0.0.0 \
  WATCHER_HTTP_PORT=8080 \
  WATCHER_DATA_DIR=/data

VOLUME /data
EXPOSE 8080

# The image's own user (uid 1000), created by the node base image; nothing here runs as root.
USER node

# Plain node and node:http, because the slim image has no curl or wget.
HEALTHCHECK --interval=30s --timeout=5s --start-period=15s --retries=3 \
  CMD ["node", "/app/dist/healthcheck.js"]

# SIGTERM (docker stop) makes the daemon stop checking and give deliveries in flight up to
# WATCHER_SHUTDOWN_TIMEOUT (10 s) before it exits 0. docker stop's own grace period is also 10 s,
# after which it sends SIGKILL: give the container more (`docker run --stop-timeout 30`, compose
# `stop_grace_period: 30s`; Kubernetes allows 30 s by default).
STOPSIGNAL SIGTERM

# Exec form, node started directly: never `npm start`, which would put npm between tini and node
# with its own signal handling, exit code and log lines, and a shell form would put sh there.
ENTRYPOINT ["/usr/bin/tini", "--", "node", "/app/dist/cli.js"]
CMD ["run"]
