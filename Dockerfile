# handoff in a container: built in one stage, run from a small one.
#
#   docker build -t handoff .
#   docker run --rm -p 8080:8080 handoff                                 # the built-in worker
#   docker run --rm -p 8080:8080 -v "$PWD/app:/app" handoff run -l 0.0.0.0:8080 -- /app/worker
#
# The master is PID 1's child only if you add `--init` (tini): with `--init`, SIGTERM from
# `docker stop` reaches handoff and stops it gracefully; without it handoff is PID 1,
# which also works (it handles SIGTERM itself and reaps its workers).
FROM rust:1-slim-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin handoff

FROM debian:bookworm-slim
COPY --from=build /src/target/release/handoff /usr/local/bin/handoff
# Workers run unprivileged when started with --user; the master binds the port.
EXPOSE 8080
ENTRYPOINT ["handoff"]
CMD ["run", "--listen", "0.0.0.0:8080"]
