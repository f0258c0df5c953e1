package chart_test

import (
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/runtime"
)

// renderUpgrade renders the chart as `helm upgrade` would, hooks included.
func renderUpgrade(t *testing.T, valuesFile string, set ...string) manifest {
	t.Helper()
	m, err := renderWith(renderOptions{upgrade: true}, valuesFile, set...)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// migrateInitContainer is the app pods' init container that runs `cacheside migrate`.
func migrateInitContainer(spec corev1.PodSpec) (corev1.Container, bool) {
	i := slices.IndexFunc(spec.InitContainers, func(c corev1.Container) bool { return slices.Equal(c.Args, []string{"migrate"}) })
	if i < 0 {
		return corev1.Container{}, false
	}
	return spec.InitContainers[i], true
}

// Argo CD renders with `helm template` (an install, without cluster access) on every sync, and maps Helm's
// hooks to its own phases whatever the release's history: pre-install and pre-upgrade become PreSync, run
// before any other resource of the first sync exists. `kubectl apply` of the rendered manifests runs no hook
// at all. So with the defaults, the pods themselves must migrate before they serve.
func TestThePodsMigrateBeforeServingUnderAnyInstaller(t *testing.T) {
	for _, file := range ciValuesFiles(t) {
		m := render(t, file)
		d := appDeployment(t, m)
		server := container(t, d.Spec.Template.Spec, "cacheside")

		t.Run(file+": an init container migrates with the server's image, settings and credentials", func(t *testing.T) {
			init, ok := migrateInitContainer(d.Spec.Template.Spec)
			if !ok {
				t.Fatalf("no init container runs migrate: init containers %v", d.Spec.Template.Spec.InitContainers)
			}
			if init.Image != server.Image {
				t.Errorf("image %q, the server runs %q", init.Image, server.Image)
			}
			if diff := cmp.Diff(server.EnvFrom, init.EnvFrom); diff != "" {
				t.Errorf("envFrom differs from the server's (-server +init):\n%s", diff)
			}
			// The same settings; only the database credentials may differ (the owner's, for the app role's),
			// GOMEMLIMIT, which follows each container's own memory limit (migration.resources here), and the
			// API's, which only the server gets (auth_test.go).
			withoutDB := cmpopts.IgnoreSliceElements(func(e corev1.EnvVar) bool {
				return e.Name == "DATABASE_URL" || e.Name == "DATABASE_PASSWORD" || e.Name == "GOMEMLIMIT" ||
					strings.HasPrefix(e.Name, "API_")
			})
			if diff := cmp.Diff(server.Env, init.Env, withoutDB); diff != "" {
				t.Errorf("env differs from the server's (-server +init):\n%s", diff)
			}
			if !slices.ContainsFunc(init.Env, func(e corev1.EnvVar) bool { return e.Name == "DATABASE_URL" }) {
				t.Error("the init container has no DATABASE_URL")
			}
			if init.RestartPolicy != nil {
				t.Errorf("restartPolicy %s: a sidecar would not hold the server back until it is done", *init.RestartPolicy)
			}
		})

		t.Run(file+": nothing a first sync needs is a hook that runs before the release's resources exist", func(t *testing.T) {
			for _, o := range m.Objects {
				acc, err := meta.Accessor(o.Obj)
				if err != nil {
					t.Fatal(err)
				}
				hook := acc.GetAnnotations()["helm.sh/hook"]
				if strings.Contains(hook, "pre-install") || strings.Contains(hook, "pre-upgrade") {
					t.Errorf("%T %s is a %s hook in an install render (Argo CD runs it as PreSync, before the database exists)", o.Obj, o.Name, hook)
				}
				if _, ok := o.Obj.(*batchv1.Job); ok {
					t.Errorf("Job %s rendered on install: under `helm template | kubectl apply` it is a plain Job racing the database", o.Name)
				}
			}
		})
	}

	t.Run("with migration.enabled=false the pods do not migrate and no Job does", func(t *testing.T) {
		for _, m := range []manifest{render(t, "", "migration.enabled=false"), renderUpgrade(t, "", "migration.enabled=false")} {
			if _, ok := migrateInitContainer(appDeployment(t, m).Spec.Template.Spec); ok {
				t.Error("an init container still migrates")
			}
			if has(m, func(j *batchv1.Job) bool { return component("migration")(j) }) {
				t.Error("the migration Job is still rendered")
			}
		}
	})
}

// A Helm user keeps what the hook gave: on `helm upgrade` the migrations run before anything else changes,
// and a failing one stops the upgrade while the old pods keep serving.
func TestTheMigrationJobRunsBeforeAHelmUpgrade(t *testing.T) {
	for _, file := range ciValuesFiles(t) {
		t.Run(file+": the migration Job runs migrate before upgrade", func(t *testing.T) {
			m := renderUpgrade(t, file)
			j := migrationJob(t, m)
			got := map[string]string{}
			for _, k := range []string{"helm.sh/hook", "helm.sh/hook-delete-policy", "helm.sh/hook-weight"} {
				got[k] = j.Annotations[k]
			}
			want := map[string]string{
				"helm.sh/hook":               "pre-upgrade",
				"helm.sh/hook-delete-policy": "before-hook-creation,hook-succeeded",
				"helm.sh/hook-weight":        "-5",
			}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("hook annotations (-want +got):\n%s", diff)
			}
			c := container(t, j.Spec.Template.Spec, "migrate")
			if diff := cmp.Diff([]string{"migrate"}, c.Args); diff != "" {
				t.Errorf("args (-want +got):\n%s", diff)
			}
			if len(c.EnvFrom) > 0 {
				t.Error("the Job reads a ConfigMap: at pre-upgrade it would get the previous release's")
			}
			if j.Spec.BackoffLimit == nil || *j.Spec.BackoffLimit < 1 {
				t.Error("the Job must retry a Postgres that is briefly unreachable")
			}
			if j.Spec.Template.Spec.RestartPolicy != corev1.RestartPolicyNever {
				t.Errorf("restartPolicy = %s, want Never (failed pods kept for their logs)", j.Spec.Template.Spec.RestartPolicy)
			}
			if !slices.ContainsFunc(m.Objects, func(o object) bool { return o.Hook && o.Obj == runtime.Object(j) }) {
				t.Error("the Job is not rendered as a hook")
			}
		})
	}
	t.Run("migration.preUpgradeJob=false leaves upgrades to the pods' init container", func(t *testing.T) {
		m := renderUpgrade(t, "", "migration.preUpgradeJob=false")
		if has(m, func(j *batchv1.Job) bool { return component("migration")(j) }) {
			t.Error("the migration Job is rendered")
		}
		if _, ok := migrateInitContainer(appDeployment(t, m).Spec.Template.Spec); !ok {
			t.Error("the pods no longer migrate")
		}
	})
}
