# PgBouncer in front of the stack's PostgreSQL. Its pgbouncer.ini and
# userlist.txt are written by the crate into /etc/pgbf before start.
ARG BASE_IMAGE=debian:trixie-slim
FROM ${BASE_IMAGE}

RUN if ! command -v pgbouncer >/dev/null 2>&1; then \
      apt-get update \
      && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends pgbouncer \
      && rm -rf /var/lib/apt/lists/*; \
    fi \
    && install -d -m 755 /etc/pgbf

# PgBouncer refuses to run as root.
USER nobody
EXPOSE 6432
ENTRYPOINT ["pgbouncer", "/etc/pgbf/pgbouncer.ini"]
