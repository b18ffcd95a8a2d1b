# PostgreSQL for throw-away test stacks: 17 (trixie) by default, 15 with
# PG_MAJOR=15 on a bookworm base.
# The data directory lives on tmpfs and fsync is off: nothing here survives a
# container, by design.
ARG BASE_IMAGE=debian:trixie-slim
FROM ${BASE_IMAGE}
ARG PG_MAJOR=17
# The entrypoint runs this major's binaries.
ENV PGBF_PG_MAJOR=${PG_MAJOR}

# The locally made base image (docker/make-base-image.sh) already carries the
# packages; a stock debian:trixie-slim (bookworm-slim for 15) gets them from Debian's mirror.
RUN if [ ! -x /usr/lib/postgresql/${PG_MAJOR}/bin/postgres ]; then \
      apt-get update \
      && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends postgresql-${PG_MAJOR} \
      && rm -rf /var/lib/apt/lists/*; \
    fi \
    && rm -rf /var/lib/postgresql/${PG_MAJOR}/main /etc/postgresql/${PG_MAJOR}/main

# initdb once at build time; each container unpacks this cluster onto its
# tmpfs and sets its own password, which is faster than an initdb per start.
# One tar file, not a directory: unpacking its ~1000 files takes ~40 ms,
# where `cp -a` of the directory from the image's layers took ~500 ms.
# The cluster was shut down cleanly, so pg_resetwal only starts its WAL in
# a fresh segment: initdb's 16 MB segment, full of records no start-up
# reads, becomes one that is zeros but for its first page; copied with
# holes where it is zeros, the sparse archive stores only that page
# (unpacking: ~65 -> ~45 ms here, and 16 MB less of each stack's memory
# until the server writes that much WAL).
# Then the Supabase shape (sql/supabase-base.sql): its roles, and the base
# database every test database of the Supabase profiles copies, made once
# here with the server on a socket only, then stopped cleanly.
COPY sql/supabase-base.sql sql/supabase-roles.sql sql/supabase-schema.sql /usr/share/pgbf/sql/
RUN install -d -o postgres -g postgres -m 700 /var/lib/pgbf/cluster \
    && su postgres -s /bin/sh -c "/usr/lib/postgresql/${PG_MAJOR}/bin/initdb \
         --pgdata=/var/lib/pgbf/cluster --username=postgres --encoding=UTF8 \
         --locale=C.UTF-8 --auth-local=trust --auth-host=scram-sha-256 --no-sync >/dev/null" \
    && printf '%s\n' 'local all all trust' 'host all all all scram-sha-256' \
         > /var/lib/pgbf/cluster/pg_hba.conf \
    && su postgres -s /bin/sh -c 'bin=$(dirname "$(ls /usr/lib/postgresql/*/bin/postgres)") \
         && "$bin/pg_ctl" -D /var/lib/pgbf/cluster -l /tmp/pgbf-build.log -s -w \
              -o "-c listen_addresses= -c unix_socket_directories=/tmp -c fsync=off" start \
         && "$bin/psql" -h /tmp -d postgres -XAq -v ON_ERROR_STOP=1 \
              -f /usr/share/pgbf/sql/supabase-base.sql >/dev/null \
         && "$bin/pg_ctl" -D /var/lib/pgbf/cluster -s -w -m fast stop' \
    && find /var/lib/pgbf/cluster/base -name '*_fsm' -delete \
    && find /var/lib/pgbf/cluster/base -name '*_vm' -delete \
    && su postgres -s /bin/sh -c "/usr/lib/postgresql/${PG_MAJOR}/bin/pg_resetwal -D /var/lib/pgbf/cluster >/dev/null" \
    && for f in /var/lib/pgbf/cluster/pg_wal/0*; do \
         cp --sparse=always --preserve=mode,ownership "$f" "$f.sparse" && mv "$f.sparse" "$f"; \
       done \
    && tar -C /var/lib/pgbf/cluster --sparse --hole-detection=raw -cf /var/lib/pgbf/cluster.tar . \
    && rm -rf /var/lib/pgbf/cluster

# The entrypoint supervises processes; the watchdog's and the janitor's SQL
# (and every decision of theirs) is in sql/, which the crate also embeds.
COPY postgres-entrypoint.sh /usr/local/bin/pgbf-postgres
COPY watchdog.sh /usr/local/lib/pgbf/watchdog.sh
COPY sql/ /usr/share/pgbf/sql/
RUN chmod 755 /usr/local/bin/pgbf-postgres \
    && chmod -R a+rX,go-w /usr/local/lib/pgbf /usr/share/pgbf
USER postgres
EXPOSE 5432
ENTRYPOINT ["/usr/local/bin/pgbf-postgres"]
