// Package workflows_test checks how the GitHub workflows fit together, on actionlint's own syntax tree of
// them (actionlint itself, run by hack/ci-check.sh, checks each file on its own).
package workflows_test

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/rhysd/actionlint"
	"go.yaml.in/yaml/v3"
)

var dir = filepath.Join("..", "..", "..", ".github", "workflows")

func parse(t *testing.T, name string) *actionlint.Workflow {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, name))
	if err != nil {
		t.Fatal(err)
	}
	w, errs := actionlint.Parse(b)
	if len(errs) > 0 {
		t.Fatalf("%s: %v", name, errs)
	}
	return w
}

// Publishing is what needs a token that writes: packages, attestations, OIDC tokens, repository contents.
func publishes(j *actionlint.Job) bool {
	if j.Permissions == nil {
		return false
	}
	for scope, p := range j.Permissions.Scopes {
		if p.Value != nil && p.Value.Value == "write" && slices.Contains([]string{"packages", "attestations", "id-token", "contents"}, scope) {
			return true
		}
	}
	return false
}

func TestAReleasePublishesOnlyAfterCIPassedOnItsCommit(t *testing.T) {
	w := parse(t, "release.yml")
	gates := map[string]bool{}
	for id, j := range w.Jobs {
		if j.WorkflowCall != nil && j.WorkflowCall.Uses != nil && j.WorkflowCall.Uses.Value == "./.github/workflows/ci.yml" {
			gates[id] = true
			if j.If != nil {
				t.Errorf("job %s, the CI call, has an if: (%s): CI must always run before a release", id, j.If.Value)
			}
		}
	}
	if len(gates) == 0 {
		t.Fatal("release.yml calls no ./.github/workflows/ci.yml: a tag would be published without CI")
	}

	// needsGate reports whether a job waits, directly or through the jobs it needs, for a CI call.
	var needsGate func(id string, seen map[string]bool) bool
	needsGate = func(id string, seen map[string]bool) bool {
		if seen[id] {
			return false
		}
		seen[id] = true
		for _, n := range w.Jobs[id].Needs {
			if gates[strings.ToLower(n.Value)] || needsGate(strings.ToLower(n.Value), seen) {
				return true
			}
		}
		return false
	}
	publishers := 0
	for id, j := range w.Jobs {
		if !publishes(j) {
			continue
		}
		publishers++
		if !needsGate(id, map[string]bool{}) {
			t.Errorf("job %s publishes without needing the CI call (needs: %v)", id, names(j.Needs))
		}
		// A job that needs CI but runs when it failed (always(), failure(), !cancelled()) is not gated.
		if j.If != nil && (strings.Contains(j.If.Value, "always(") || strings.Contains(j.If.Value, "failure(") || strings.Contains(j.If.Value, "cancelled(")) {
			t.Errorf("job %s publishes under if: %s; it must run only when everything it needs succeeded", id, j.If.Value)
		}
	}
	if publishers == 0 {
		t.Fatal("release.yml has no job with a write permission: nothing to check (did the permissions move?)")
	}
}

// TestAReleaseScansItsImageBeforePushingIt: in every job that pushes an image, a vulnerability scan of
// that image fails the job on a fixable critical vulnerability before the push step runs.
func TestAReleaseScansItsImageBeforePushingIt(t *testing.T) {
	w := parse(t, "release.yml")
	input := func(a *actionlint.ExecAction, name string) string {
		if in := a.Inputs[name]; in != nil && in.Value != nil {
			return in.Value.Value
		}
		return ""
	}
	pushers := 0
	for id, j := range w.Jobs {
		scanned := false
		for _, s := range j.Steps {
			a, ok := s.Exec.(*actionlint.ExecAction)
			if !ok || a.Uses == nil {
				continue
			}
			if strings.HasPrefix(a.Uses.Value, "anchore/scan-action@") {
				if input(a, "image") == "" || input(a, "fail-build") != "true" || input(a, "severity-cutoff") != "critical" || input(a, "only-fixed") != "true" {
					t.Errorf("job %s: the scan must fail the build on fixable critical vulnerabilities of an image: %s", id, a.Uses.Value)
					continue
				}
				scanned = true
			}
			if strings.HasPrefix(a.Uses.Value, "docker/build-push-action@") && input(a, "push") == "true" {
				pushers++
				if !scanned {
					t.Errorf("job %s pushes an image that no scan before it looked at", id)
				}
			}
		}
	}
	if pushers == 0 {
		t.Fatal("release.yml pushes no image with docker/build-push-action: nothing to check (did the push move?)")
	}
}

func TestNoTwoCIJobsSaveTheSameCache(t *testing.T) {
	w := parse(t, "ci.yml")
	owner := map[string]string{}
	for id, j := range w.Jobs {
		for _, s := range j.Steps {
			a, ok := s.Exec.(*actionlint.ExecAction)
			if !ok || a.Uses == nil || !strings.HasPrefix(a.Uses.Value, "actions/cache@") {
				continue
			}
			in := a.Inputs["key"]
			if in == nil || in.Value == nil {
				t.Errorf("job %s: actions/cache without a key", id)
				continue
			}
			key := in.Value.Value
			if other, dup := owner[key]; dup && other != id {
				t.Errorf("jobs %s and %s both save cache key %s: only the first to finish saves it", other, id, key)
			}
			owner[key] = id
		}
	}
}

func names(ss []*actionlint.String) []string {
	var out []string
	for _, s := range ss {
		out = append(out, s.Value)
	}
	return out
}

// dependabotUpdate is one entry of .github/dependabot.yml's updates, the fields this test reads.
type dependabotUpdate struct {
	Ecosystem   string   `yaml:"package-ecosystem"`
	Directories []string `yaml:"directories"`
	Ignore      []struct {
		Name        string   `yaml:"dependency-name"`
		UpdateTypes []string `yaml:"update-types"`
	} `yaml:"ignore"`
}

// The docker entry of .github/dependabot.yml watches the Helm values. A major version of the bundled Postgres
// needs pg_upgrade (merging the bump breaks every existing volume), a Redis major can change its on-disk
// formats; and the chart's own image is built here, so there is nothing upstream to look it up in.
func TestDependabotProposesNoDataStoreMajorAndSkipsTheImageBuiltHere(t *testing.T) {
	var cfg struct {
		Updates []dependabotUpdate `yaml:"updates"`
	}
	if err := yaml.Unmarshal(mustRead(t, filepath.Join(dir, "..", "dependabot.yml")), &cfg); err != nil {
		t.Fatal(err)
	}
	i := slices.IndexFunc(cfg.Updates, func(u dependabotUpdate) bool { return u.Ecosystem == "docker" })
	if i < 0 {
		t.Fatal("no docker entry in .github/dependabot.yml")
	}
	docker := cfg.Updates[i]
	// ignored reports whether the entry ignores these update types of an image (all of them if none given).
	ignored := func(image, updateType string) bool {
		for _, ig := range docker.Ignore {
			if ig.Name == image && (len(ig.UpdateTypes) == 0 || slices.Contains(ig.UpdateTypes, updateType)) {
				return true
			}
		}
		return false
	}

	charts := filepath.Join("..", "..", "..", "charts", "cacheside")
	for _, sub := range []string{"postgresql", "redis"} {
		image := imageRepository(t, filepath.Join(charts, "charts", sub, "values.yaml"))
		if !slices.Contains(docker.Directories, "/charts/cacheside/charts/"+sub) {
			continue
		}
		if !ignored(image, "version-update:semver-major") {
			t.Errorf("dependabot.yml: the docker entry would propose %s majors for the bundled %s: ignore version-update:semver-major for %q", image, sub, image)
		}
	}
	own := imageRepository(t, filepath.Join(charts, "values.yaml"))
	if slices.Contains(docker.Directories, "/charts/cacheside") && !ignored(own, "version-update:semver-patch") {
		t.Errorf("dependabot.yml: the docker entry looks up %q upstream, but this repository builds that image: ignore it", own)
	}
}

// imageRepository reads image.repository from a values file.
func imageRepository(t *testing.T, path string) string {
	t.Helper()
	var v struct {
		Image struct {
			Repository string `yaml:"repository"`
		} `yaml:"image"`
	}
	if err := yaml.Unmarshal(mustRead(t, path), &v); err != nil || v.Image.Repository == "" {
		t.Fatalf("%s: no image.repository (%v)", path, err)
	}
	return v.Image.Repository
}

func mustRead(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
