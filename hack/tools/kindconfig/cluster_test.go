// Package kindconfig_test checks k8s/kind/cluster.yaml with the types of the kind that hack/kind-up.sh builds
// from this module, so a misspelt or moved field fails here rather than at `kind create cluster`.
package kindconfig_test

import (
	"bytes"
	"os"
	"path/filepath"
	"regexp"
	"testing"

	toml "github.com/pelletier/go-toml"
	"go.yaml.in/yaml/v3"
	"sigs.k8s.io/kind/pkg/apis/config/v1alpha4"
)

var root = filepath.Join("..", "..", "..")

// load decodes the cluster config as kind's own loader does (pkg/internal/apis/config/encoding, which other
// modules cannot import): apiVersion and kind first, then the v1alpha4 types with unknown fields rejected.
func load(t *testing.T, path string) v1alpha4.Cluster {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var meta struct {
		Kind       string `yaml:"kind"`
		APIVersion string `yaml:"apiVersion"`
	}
	if err := yaml.Unmarshal(raw, &meta); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	if meta.APIVersion != "kind.x-k8s.io/v1alpha4" || meta.Kind != "Cluster" {
		t.Fatalf("%s: kind reads Cluster of kind.x-k8s.io/v1alpha4, this is %s of %q", path, meta.Kind, meta.APIVersion)
	}
	var cfg v1alpha4.Cluster
	dec := yaml.NewDecoder(bytes.NewReader(raw))
	dec.KnownFields(true)
	if err := dec.Decode(&cfg); err != nil {
		t.Fatalf("%s: kind would refuse it: %v", path, err)
	}
	return cfg
}

func TestTheKindClusterConfigIsOneKindAccepts(t *testing.T) {
	path := filepath.Join(root, "k8s", "kind", "cluster.yaml")
	cfg := load(t, path)

	controlPlanes := 0
	for _, n := range cfg.Nodes {
		if n.Role == v1alpha4.ControlPlaneRole {
			controlPlanes++
		}
	}
	if controlPlanes == 0 {
		t.Errorf("%s: no control-plane node", path)
	}

	// kind merges each patch into the node's containerd config after parsing it with this TOML library.
	configPath := ""
	for i, patch := range cfg.ContainerdConfigPatches {
		tree, err := toml.LoadBytes([]byte(patch))
		if err != nil {
			t.Errorf("%s: containerdConfigPatches[%d] is not TOML: %v", path, i, err)
			continue
		}
		if v, ok := tree.GetPath([]string{"plugins", "io.containerd.grpc.v1.cri", "registry", "config_path"}).(string); ok {
			configPath = v
		}
	}

	// hack/kind-up.sh writes the local registry's hosts.toml under the directory containerd is told to read.
	script := string(mustRead(t, filepath.Join(root, "hack", "kind-up.sh")))
	m := regexp.MustCompile(`(?m)^registry_dir="([^"$]+)/localhost:\$port"$`).FindStringSubmatch(script)
	if m == nil {
		t.Fatal("hack/kind-up.sh: no registry_dir=\"<dir>/localhost:$port\" line (changed? update this test)")
	}
	if configPath != m[1] {
		t.Errorf("%s sets containerd's registry config_path to %q, but hack/kind-up.sh writes hosts.toml under %q", path, configPath, m[1])
	}
}

func mustRead(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
