# The pilotfish image: the control plane, and the init container of injected pods
# (`pilotfish iptables`, which needs iptables). Multi-stage: a Rust build, then a small
# Debian runtime. Not built in CI (no image registry here).
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --bin pilotfish && strip target/release/pilotfish

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends iptables ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --uid 1000 --user-group --no-create-home --shell /usr/sbin/nologin pilotfish
COPY --from=build /src/target/release/pilotfish /usr/local/bin/pilotfish
USER 1000:1000
EXPOSE 15010 15012 15014 15017
ENTRYPOINT ["/usr/local/bin/pilotfish"]
CMD ["serve", "--kubernetes"]
