# mailshim in a container: built on Debian 12, run on Debian 12 slim with
# the runtime libraries only, as a non-root user.
#
#   docker build -t mailshim .
#   docker run --rm -v "$PWD/my-conf.d:/etc/mailshim/conf.d:ro" \
#       -p 465:10465 -p 587:10587 -p 25:10025 mailshim
#
# The image holds no configuration of its own: mount a conf.d at
# /etc/mailshim/conf.d (a Kubernetes ConfigMap in deploy/). It listens on
# the high ports 10025, 10465 and 10587 so it needs no privilege at all;
# map 25, 465 and 587 to them outside. /etc/mailshim/conf.d.example holds
# an example for a host install (ports below 1024, `user`).

FROM debian:12 AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
        gcc make libc6-dev android-libboringssl-dev libev-dev libunbound-dev libidn2-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Makefile ./
COPY shim/ shim/
COPY man/ man/
COPY packaging/ packaging/
RUN make -j"$(nproc)" && make install DESTDIR=/out PREFIX=/usr

FROM debian:12-slim
# Runtime libraries only: BoringSSL (never the system OpenSSL), libev,
# libunbound and the DNSSEC root key for DANE, libidn2 for the outbound
# relay's internationalized domains, the CA bundle for
# upstream_verify = verify.
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
        android-libboringssl libev4 libunbound8 libidn2-0 dns-root-data ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10025 --user-group --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin mailshim \
 && mkdir -p /etc/mailshim/conf.d
COPY --from=build /out/usr/sbin/mailshim /usr/sbin/mailshim
COPY --from=build /out/etc/mailshim/conf.d.example/ /etc/mailshim/conf.d.example/

# Numeric, so Kubernetes' runAsNonRoot can check it.
USER 10025:10025

# SMTP (25), submissions (465) and submission (587) on high ports, and the
# metrics listener (GET /metrics, /healthz) of `metrics = 0.0.0.0:9465`.
EXPOSE 10025 10465 10587 9465

# Needs `metrics = ...:9465` in [global]; without a metrics listener the
# check fails and the container shows as unhealthy. No curl in the image:
# bash's /dev/tcp speaks the one HTTP/1.0 request.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/9465 && printf 'GET /healthz HTTP/1.0\\r\\n\\r\\n' >&3 && head -n 1 <&3 | grep -q ' 200 '"]

STOPSIGNAL SIGTERM
CMD ["mailshim", "-c", "/etc/mailshim/conf.d"]
