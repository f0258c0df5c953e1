package chart_test

import (
	"fmt"
	"regexp"
	"strings"
	"testing"

	"helm.sh/helm/v4/pkg/action"
	"helm.sh/helm/v4/pkg/chart/common"
	"helm.sh/helm/v4/pkg/chart/v2/loader"
	"helm.sh/helm/v4/pkg/cli/values"
	release "helm.sh/helm/v4/pkg/release/v1"
	appsv1 "k8s.io/api/apps/v1"
)

// What the Tiltfile's helm() call asks for: release and namespace, values files in order, the --set it adds.
// Tilt runs `helm template` with these; CI's `tilt ci` job is the test of the rest of the Tiltfile.
const (
	tiltRelease   = "cacheside"
	tiltNamespace = "cacheside"
)

var tiltValues = []string{"../../k8s/values/kind.yaml", "../../k8s/values/tilt.yaml"}

// tiltKubeVersion is the Kubernetes the Tiltfile renders for: the kind node image's, from hack/versions.env
// (kindest/node:v1.37.0@sha256:… -> v1.37.0).
func tiltKubeVersion(t *testing.T) string {
	t.Helper()
	m := regexp.MustCompile(`(?m)^KIND_NODE_IMAGE=[^:\s]+:(v[0-9][^@\s]*)`).FindSubmatch(mustRead(t, "../../hack/versions.env"))
	if m == nil {
		t.Fatal("hack/versions.env: no KIND_NODE_IMAGE=<image>:<version>@<digest> line")
	}
	return string(m[1])
}

// renderForTilt renders the chart as `helm template` does for the Tiltfile: the values merged by Helm's own
// -f/--set code, a client-only install, every object decoded strictly. Tilt applies everything `helm
// template` prints except what comes from a templates/tests/ directory, hooks included, as plain objects.
func renderForTilt(t *testing.T, set ...string) (applied []object, hooks []*release.Hook) {
	t.Helper()
	vals, err := (&values.Options{ValueFiles: tiltValues, Values: set}).MergeValues(nil)
	if err != nil {
		t.Fatal(err)
	}
	chrt, err := loader.Load(chartDir)
	if err != nil {
		t.Fatal(err)
	}
	inst := action.NewInstall(action.NewConfiguration())
	inst.DryRunStrategy = action.DryRunClient
	inst.ReleaseName = tiltRelease
	inst.Namespace = tiltNamespace
	if inst.KubeVersion, err = common.ParseKubeVersion(tiltKubeVersion(t)); err != nil {
		t.Fatal(err)
	}
	r, err := inst.Run(chrt, vals)
	if err != nil {
		t.Fatalf("helm template with %v --set %v: %v", tiltValues, set, err)
	}
	rel := r.(*release.Release)
	applied, err = decodeAll(rel.Manifest)
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range rel.Hooks {
		if strings.Contains(h.Path, "/tests/") {
			continue
		}
		docs, err := decodeAll(h.Manifest)
		if err != nil {
			t.Fatalf("hook %s: %v", h.Path, err)
		}
		applied = append(applied, docs...)
		hooks = append(hooks, h)
	}
	return applied, hooks
}

func TestTheChartRendersAsTheTiltfileNeedsIt(t *testing.T) {
	for _, nearCache := range []bool{false, true} {
		t.Run(fmt.Sprintf("near-cache %v", nearCache), func(t *testing.T) {
			objs, hooks := renderForTilt(t, fmt.Sprintf("config.CACHE_LOCAL_ENABLED=%v", nearCache))
			m := manifest{Objects: objs}

			// Tilt applies hooks as plain objects, next to a Postgres that is still starting and again on every
			// image build: k8s/values/tilt.yaml turns the migration Job off and the service migrates itself.
			for _, h := range hooks {
				t.Errorf("hook %s (%s) would be applied by Tilt as a plain object", h.Name, h.Path)
			}
			cm := appConfigMap(t, m)
			if got := cm.Data["DATABASE_MIGRATE_ON_START"]; got != "true" {
				t.Errorf("DATABASE_MIGRATE_ON_START = %q, want true: without the migration Job nothing else migrates", got)
			}
			if got, want := cm.Data["CACHE_LOCAL_ENABLED"], fmt.Sprint(nearCache); got != want {
				t.Errorf("CACHE_LOCAL_ENABLED = %q, want %q (the Tiltfile's --near-cache)", got, want)
			}

			// The workloads the Tiltfile's k8s_resource() calls name (a name missing from the YAML fails
			// the Tiltfile's load).
			d := only(t, m, func(d *appsv1.Deployment) bool { return d.Name == tiltRelease })
			for _, name := range []string{tiltRelease + "-postgresql", tiltRelease + "-redis"} {
				if !has(m, func(s *appsv1.StatefulSet) bool { return s.Name == name }) {
					t.Errorf("no StatefulSet %s for the Tiltfile's k8s_resource(%q)", name, name)
				}
			}

			// docker_build_with_restart('cacheside', …) replaces image `cacheside`; live update writes the
			// new binary and the restart file into /app, on the root filesystem.
			c := container(t, d.Spec.Template.Spec, "cacheside")
			if repo, _, _ := strings.Cut(c.Image, ":"); repo != "cacheside" {
				t.Errorf("the app container runs %q, not the image the Tiltfile builds (cacheside)", c.Image)
			}
			if sc := c.SecurityContext; sc == nil || sc.ReadOnlyRootFilesystem == nil || *sc.ReadOnlyRootFilesystem {
				t.Error("the app container's root filesystem is read-only: live update cannot write /app")
			}

			// k8s/namespace.yaml enforces Pod Security "restricted" on the namespace Tilt deploys into; the
			// app's writable root filesystem (above) is the one exception to this project's own rules.
			for _, p := range podTemplates(m) {
				for _, problem := range restrictedProblems(p.Spec) {
					if p.Owner == fmt.Sprintf("%T %s", d, d.Name) && problem == c.Name+": root filesystem is writable" {
						continue
					}
					t.Errorf("%s: %s", p.Owner, problem)
				}
			}
		})
	}
}

// The restart wrapper of Tilt's restart_process extension watches a file that docker_build_with_restart
// creates in the image; a volume the chart mounts over that file's directory hides it, and the wrapper
// exits at start with nothing to watch.
func TestTheTiltRestartFileIsNotHiddenByAVolume(t *testing.T) {
	// The extension's default at the commit the Tiltfile pins, unless the Tiltfile sets restart_file.
	restartFile := "/tmp/.restart-proc"
	if m := regexp.MustCompile(`(?m)^\s*restart_file\s*=\s*'([^']+)'`).FindSubmatch(mustRead(t, "../../Tiltfile")); m != nil {
		restartFile = string(m[1])
	}
	objs, _ := renderForTilt(t)
	d := only(t, manifest{Objects: objs}, func(d *appsv1.Deployment) bool { return d.Name == tiltRelease })
	for _, vm := range container(t, d.Spec.Template.Spec, "cacheside").VolumeMounts {
		if dir := strings.TrimSuffix(vm.MountPath, "/") + "/"; strings.HasPrefix(restartFile, dir) {
			t.Errorf("the Tiltfile's restart file %s is under volume %s, mounted on %s: the image's file is hidden", restartFile, vm.Name, vm.MountPath)
		}
	}
}
