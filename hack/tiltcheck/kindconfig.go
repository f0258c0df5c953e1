package main

import (
	"bytes"
	"fmt"
	"os"

	"github.com/BurntSushi/toml"
	"go.yaml.in/yaml/v3"
	"sigs.k8s.io/kind/pkg/apis/config/v1alpha4"
)

// checkKindConfig decodes the kind cluster config the way kind does (strictly, into the v1alpha4 types of the
// pinned kind, so a misspelt field fails here rather than at `kind create cluster`) and parses each containerd
// config patch as TOML.
func checkKindConfig(path string) []string {
	raw, err := os.ReadFile(path)
	if err != nil {
		return []string{err.Error()}
	}
	var cfg v1alpha4.Cluster
	dec := yaml.NewDecoder(bytes.NewReader(raw))
	dec.KnownFields(true)
	if err := dec.Decode(&cfg); err != nil {
		return []string{fmt.Sprintf("%s: %v", path, err)}
	}
	var problems []string
	if cfg.APIVersion != "kind.x-k8s.io/v1alpha4" || cfg.Kind != "Cluster" {
		problems = append(problems, fmt.Sprintf("%s: want kind Cluster of kind.x-k8s.io/v1alpha4, got %s %s", path, cfg.Kind, cfg.APIVersion))
	}
	for i, patch := range cfg.ContainerdConfigPatches {
		var v map[string]any
		if _, err := toml.Decode(patch, &v); err != nil {
			problems = append(problems, fmt.Sprintf("%s: containerdConfigPatches[%d]: %v", path, i, err))
		}
	}
	return problems
}
