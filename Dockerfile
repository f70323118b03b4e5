# Herald in a container: `docker run -p 8080:8080 -v herald:/data herald`.
# Two stages: build with the Rust toolchain, run on a slim Debian with only the binary,
# CA certificates (vendors' HTTPS) and tzdata, as an unprivileged user.
FROM docker.io/library/rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin herald \
 && cp target/release/herald /herald

FROM docker.io/library/debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates tzdata \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /data --shell /usr/sbin/nologin herald \
 && install -d -o herald -g herald -m 0700 /data
COPY --from=build /herald /usr/local/bin/herald
COPY templates /usr/share/herald/templates
# /data holds the SQLite database and herald-secrets.toml (generated on first start, mode
# 0600; read the API key with `docker exec <c> cat /data/herald-secrets.toml`). Mount a
# volume there; the rest of the file system may be read-only.
VOLUME /data
WORKDIR /data
USER herald
ENV HERALD_BIND=0.0.0.0:8080 \
    HERALD_DATABASE_URL=sqlite:///data/herald.db \
    HERALD_TEMPLATES__DIR=/usr/share/herald/templates
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=6s --start-period=10s --retries=3 \
  CMD ["herald", "health", "--path", "/readyz"]
# SIGTERM stops accepting, closes WebSockets with 1001 and finishes in-flight work within
# http.shutdown_timeout (10 s): give `docker stop -t` at least that.
STOPSIGNAL SIGTERM
ENTRYPOINT ["herald"]
CMD ["serve"]
