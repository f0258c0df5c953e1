# syntax=docker/dockerfile:1
#
# cacheside's image (BuildKit). Targets:
#   docker build --build-arg VERSION=v1.2.3 --build-arg COMMIT=$(git rev-parse HEAD) -t cacheside .
#       the runtime image: distroless, non-root, the static binary and nothing else (the default, last stage);
#   docker build --target dev -t cacheside:dev .
#       a small image with a shell for Tilt's live update, running a binary built on the host (see "dev").

# Build on the builder's own platform and cross-compile (no emulation for multi-arch builds). The Go version
# is go.mod's, so the toolchain is never downloaded at build time (charts/tests/dockerfile_test.go checks it).
FROM --platform=$BUILDPLATFORM golang:1.26.8-bookworm AS build
WORKDIR /src
# Modules in their own layer, before the code: rebuilt only when go.mod or go.sum change.
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod \
    go mod download
COPY app/ app/
ARG TARGETOS TARGETARCH
ARG VERSION=dev
ARG COMMIT=""
# cacheside:go-build:begin
# charts/tests/dockerfile_test.go runs this very command (the text between the markers) and checks the binary.
RUN --mount=type=cache,target=/go/pkg/mod \
    --mount=type=cache,target=/root/.cache/go-build \
    CGO_ENABLED=0 GOOS=${TARGETOS} GOARCH=${TARGETARCH} \
    go build -trimpath \
      -ldflags "-s -w -X github.com/cacheside/cacheside/app/buildinfo.Version=${VERSION} -X github.com/cacheside/cacheside/app/buildinfo.Commit=${COMMIT}" \
      -o /out/cacheside ./app
# cacheside:go-build:end

# dev: for Tilt's live update. The binary is built on the host, where the Go caches are warm:
#   CGO_ENABLED=0 GOOS=linux go build -o build/cacheside ./app
# This stage only copies it. Live update then syncs a rebuilt build/cacheside to /app/cacheside and restarts
# the process (e.g. with Tilt's restart_process extension, which wraps the entrypoint). /app belongs to the
# runtime user so the sync can write there; a pod using this image needs readOnlyRootFilesystem=false.
FROM alpine:3.22.2 AS dev
RUN mkdir /app && chown 65532:65532 /app
COPY --chown=65532:65532 build/cacheside /app/cacheside
USER 65532:65532
WORKDIR /app
EXPOSE 8080
ENTRYPOINT ["/app/cacheside"]
CMD ["serve"]

# runtime (default target): no shell, no package manager; distroless' nonroot user.
FROM gcr.io/distroless/static-debian12:nonroot AS runtime
ARG VERSION=dev
ARG COMMIT=""
LABEL org.opencontainers.image.title="cacheside" \
      org.opencontainers.image.description="Cache-aside demo API: Gin over Postgres with a Redis cache" \
      org.opencontainers.image.source="https://github.com/cacheside/cacheside" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${COMMIT}"
COPY --from=build /out/cacheside /cacheside
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/cacheside"]
CMD ["serve"]
