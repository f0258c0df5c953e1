// Package chart_test checks the Helm chart in charts/cacheside and the Dockerfile against the service's
// contract, without a cluster: it renders the chart with the Helm SDK, decodes every object strictly into
// the Kubernetes API types, and builds the binary with the Dockerfile's own build command.
//
// It is a module of its own so the service's go.mod stays free of Helm and Kubernetes.
package chart_test
