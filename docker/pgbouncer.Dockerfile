# PgBouncer in front of the stack's PostgreSQL. The entrypoint writes its
# pgbouncer.ini and userlist.txt from the environment the crate passes.
ARG BASE_IMAGE=debian:trixie-slim
FROM ${BASE_IMAGE}

RUN if ! command -v pgbouncer >/dev/null 2>&1; then \
      apt-get update \
      && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends pgbouncer \
      && rm -rf /var/lib/apt/lists/*; \
    fi

COPY pgbouncer-entrypoint.sh /usr/local/bin/pgbf-pgbouncer
RUN chmod 755 /usr/local/bin/pgbf-pgbouncer
# PgBouncer refuses to run as root.
USER nobody
EXPOSE 6432
ENTRYPOINT ["/usr/local/bin/pgbf-pgbouncer"]
