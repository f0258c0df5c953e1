//go:build tools

// Package tools pins the Jaeger v2 binary used by hack/jaeger.sh for tests and
// `make run`. The build tag keeps this file out of every normal build; the
// blank import exists only so `go mod tidy` keeps the requirement (and the
// full dependency graph in go.sum) needed for
// `go build github.com/jaegertracing/jaeger/cmd/jaeger` from this directory.
package tools

import _ "github.com/jaegertracing/jaeger/cmd/jaeger"
