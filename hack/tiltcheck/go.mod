// The Tiltfile (and kind cluster config) checker run by hack/ci-check.sh, which needs neither Tilt nor kind
// to run. Its own module so that the service's go.mod stays free of Starlark and kind.
module github.com/cacheside/cacheside/hack/tiltcheck

go 1.26.8

require (
	github.com/BurntSushi/toml v1.6.0
	go.starlark.net v0.0.0-20260908191801-89a6a09411d5
	go.yaml.in/yaml/v3 v3.0.5
	sigs.k8s.io/kind v0.33.0
)

require (
	github.com/pkg/errors v0.9.1 // indirect
	golang.org/x/sys v0.42.0 // indirect
)
