// Command tiltcheck checks a Tiltfile without Tilt, a cluster or Docker: the mistakes that would otherwise
// only show on someone's laptop at `tilt up`.
//
// It parses the Tiltfile in Tilt's Starlark dialect (top-level if/for, while, sets, recursion, global
// reassignment), then runs it against stand-ins for Tilt's built-ins. The stand-ins render what Tilt would
// render (helm() runs `helm template` the way Tilt does, kustomize() runs `kustomize build`) and record the
// resources, images and buttons the Tiltfile declares. Then it checks what Tilt checks at load time, and a
// few things Tilt only reports later or not at all:
//
//   - every k8s_resource names a workload that the rendered YAML contains, every object selector matches
//     exactly one object not already taken, every resource_deps entry names a resource, with no cycles;
//   - every image built is used by a rendered container, every docker_build target is a Dockerfile stage,
//     live_update syncs stay inside the build's context and `only`;
//   - paths in string literals and commands that point into the repository exist (build outputs under
//     build/ and .run/ excepted), and load('ext://…') names a known Tilt extension;
//   - nothing is left "uncategorized", every resource has a label, port-forwards do not collide;
//   - version_settings' constraint is the TILT_VERSION of hack/versions.env.
//
// With -kind-config it also decodes the kind cluster config strictly with the pinned kind's own types.
//
// Usage: tiltcheck -helm .run/bin/helm -kustomize .run/bin/kustomize [-config near-cache=true]
// [-kind-config k8s/kind/cluster.yaml] [Tiltfile]
package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

func main() {
	helmBin := flag.String("helm", "helm", "helm binary used to render helm() calls")
	kustomizeBin := flag.String("kustomize", "kustomize", "kustomize binary used to render kustomize() calls")
	versionsFile := flag.String("versions", "hack/versions.env", "KEY=value file with TILT_VERSION and KIND_CLUSTER_NAME, relative to the Tiltfile's directory")
	var configArgs multiFlag
	flag.Var(&configArgs, "config", "a Tiltfile config value as name=value, as after `tilt up --` (repeatable)")
	kindConfig := flag.String("kind-config", "", "also check this kind cluster config (strict decoding with the pinned kind's types)")
	verbose := flag.Bool("v", false, "print the resources found")
	flag.Parse()
	tiltfile := "Tiltfile"
	if flag.NArg() > 1 {
		fmt.Fprintln(os.Stderr, "usage: tiltcheck [flags] [Tiltfile]")
		os.Exit(2)
	}
	if flag.NArg() == 1 {
		tiltfile = flag.Arg(0)
	}

	abs, err := filepath.Abs(tiltfile)
	if err != nil {
		fatal(err)
	}
	c := &checker{
		root:         filepath.Dir(abs),
		tiltfile:     abs,
		helmBin:      *helmBin,
		kustomizeBin: *kustomizeBin,
		configArgs:   map[string]string{},
	}
	for _, kv := range configArgs {
		name, value, ok := strings.Cut(kv, "=")
		if !ok {
			fatal(fmt.Errorf("-config %q: want name=value", kv))
		}
		c.configArgs[name] = value
	}
	c.versions, err = readEnvFile(filepath.Join(c.root, *versionsFile))
	if err != nil {
		fatal(err)
	}

	c.run()
	if *kindConfig != "" {
		for _, p := range checkKindConfig(*kindConfig) {
			c.problems = append(c.problems, problem{text: p})
		}
	}
	if len(c.problems) > 0 {
		sort.SliceStable(c.problems, func(i, j int) bool {
			if c.problems[i].line != c.problems[j].line {
				return c.problems[i].line < c.problems[j].line
			}
			return c.problems[i].text < c.problems[j].text
		})
		for _, p := range c.problems {
			fmt.Fprintln(os.Stderr, p.text)
		}
		fmt.Fprintf(os.Stderr, "tiltcheck: %s: %d problem(s)\n", tiltfile, len(c.problems))
		os.Exit(1)
	}
	names := c.resourceNames()
	if *verbose {
		for _, n := range names {
			fmt.Println(n)
		}
	}
	also := ""
	if *kindConfig != "" {
		also = " and " + *kindConfig
	}
	fmt.Printf("tiltcheck: %s OK (%d resources, %d images, config %v)%s\n", tiltfile, len(names), len(c.images), c.configArgs, also)
}

type multiFlag []string

func (m *multiFlag) String() string     { return strings.Join(*m, ",") }
func (m *multiFlag) Set(v string) error { *m = append(*m, v); return nil }

func fatal(err error) {
	fmt.Fprintln(os.Stderr, "tiltcheck:", err)
	os.Exit(2)
}

// readEnvFile reads KEY=value lines, skipping blank lines and # comments (the format of hack/versions.env).
func readEnvFile(path string) (map[string]string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	env := map[string]string{}
	for _, line := range strings.Split(string(b), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if k, v, ok := strings.Cut(line, "="); ok {
			env[k] = v
		}
	}
	return env, nil
}
