package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// A small repository: one Deployment with its Service and a ConfigMap, a Dockerfile with a dev stage.
var fixture = map[string]string{
	"versions.env": "# pins\nTILT_VERSION=0.36.0\nKIND_CLUSTER_NAME=demo\n",
	"app.yaml": `apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: demo}
spec:
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec: {containers: [{name: web, image: "web:1.0"}]}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: demo}
spec: {selector: {app: web}, ports: [{port: 80}]}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: settings, namespace: demo}
`,
	"Dockerfile":    "FROM alpine:3 AS dev\nWORKDIR /app\nUSER 1000\n",
	"hack/build.sh": "#!/bin/sh\n",
	"app/main.go":   "package main\n",
}

const baseTiltfile = `version_settings(constraint='>=0.36.0')
k8s_yaml('app.yaml')
local_resource('compile', 'sh hack/build.sh -o build/web ./app', deps=['./app'], labels=['app'])
docker_build('web', '.', target='dev', only=['./build/web'], live_update=[sync('./build/web', '/app/web')])
k8s_resource('web', labels=['app'], port_forwards=[port_forward(8080, 80)], resource_deps=['compile'])
k8s_resource(new_name='config', objects=['settings:configmap:demo'], labels=['app'])
`

func TestTiltfileChecks(t *testing.T) {
	for _, tc := range []struct {
		name     string
		tiltfile string
		want     []string // substrings of the problems, all present; none means no problem
	}{
		{name: "a consistent Tiltfile passes", tiltfile: baseTiltfile},
		{
			name: "Tilt's dialect parses: top-level control flow, sets, while, recursion, lambdas, reassignment",
			tiltfile: baseTiltfile + `
def fact(n):
    return 1 if n <= 1 else n * fact(n - 1)
seen = set([1, 2])
i = 0
while i < 3:
    i += 1
if fact(3) == 6:
    names = [x for x in ['a'] if x]
double = lambda x: 2 * x
seen = set([double(i)])
`,
		},
		{
			name:     "a workload that the YAML does not contain",
			tiltfile: strings.Replace(baseTiltfile, "k8s_resource('web'", "k8s_resource('webb'", 1),
			want:     []string{`k8s_resource("webb"): no such workload`},
		},
		{
			name:     "a resource_deps entry naming no resource",
			tiltfile: strings.Replace(baseTiltfile, "resource_deps=['compile']", "resource_deps=['complie']", 1),
			want:     []string{`resource_deps: no resource "complie"`},
		},
		{
			name:     "objects left uncategorized",
			tiltfile: strings.Replace(baseTiltfile, "k8s_resource(new_name='config', objects=['settings:configmap:demo'], labels=['app'])\n", "", 1),
			want:     []string{`"uncategorized"`, "settings:configmap:demo"},
		},
		{
			name:     "an object selector that matches nothing",
			tiltfile: strings.Replace(baseTiltfile, "settings:configmap:demo", "setting:configmap:demo", 1),
			want:     []string{`object selector "setting:configmap:demo" matches no rendered object`},
		},
		{
			name:     "a resource without label",
			tiltfile: strings.Replace(baseTiltfile, "k8s_resource('web', labels=['app'], ", "k8s_resource('web', ", 1),
			want:     []string{`resource "web" has no label`},
		},
		{
			name:     "a path into the repository that does not exist",
			tiltfile: strings.Replace(baseTiltfile, "hack/build.sh", "hack/biuld.sh", 1),
			want:     []string{`path "hack/biuld.sh" does not exist`},
		},
		{
			name:     "an extension that does not exist",
			tiltfile: "load('ext://restart_procss', 'docker_build_with_restart')\n" + baseTiltfile,
			want:     []string{`"restart_procss" is not an extension`},
		},
		{
			name:     "a Dockerfile target that is not a stage",
			tiltfile: strings.Replace(baseTiltfile, "target='dev'", "target='prod'", 1),
			want:     []string{`target "prod" is not a stage of Dockerfile`},
		},
		{
			name:     "an image that no container uses",
			tiltfile: strings.Replace(baseTiltfile, "docker_build('web'", "docker_build('api'", 1),
			want:     []string{`image "api" is built but no rendered container uses it`},
		},
		{
			name:     "a live_update sync outside `only`",
			tiltfile: strings.Replace(baseTiltfile, "sync('./build/web'", "sync('./app'", 1),
			want:     []string{`sync("./app") is not under ` + "`only`"},
		},
		{
			name:     "the restart wrapper's default trigger file with a non-root image",
			tiltfile: "load('ext://restart_process', 'docker_build_with_restart')\n" + strings.Replace(baseTiltfile, "docker_build('web', '.',", "docker_build_with_restart('web', '.', entrypoint=['/app/web'],", 1),
			want:     []string{"who cannot create /.restart-proc"},
		},
		{
			name:     "a version constraint out of step with TILT_VERSION",
			tiltfile: strings.Replace(baseTiltfile, ">=0.36.0", ">=0.33.0", 1),
			want:     []string{`version_settings constraint ">=0.33.0" is not ">=0.36.0"`},
		},
		{
			name:     "a keyword Tilt does not have",
			tiltfile: strings.Replace(baseTiltfile, "labels=['app'], port_forwards", "label=['app'], port_forwards", 1),
			want:     []string{`unexpected keyword argument "label"`},
		},
		{
			name:     "a resource_deps cycle",
			tiltfile: strings.Replace(baseTiltfile, "deps=['./app'], labels", "deps=['./app'], resource_deps=['web'], labels", 1),
			want:     []string{"resource_deps cycle"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			for name, content := range fixture {
				write(t, filepath.Join(dir, name), content)
			}
			write(t, filepath.Join(dir, "Tiltfile"), tc.tiltfile)
			versions, err := readEnvFile(filepath.Join(dir, "versions.env"))
			if err != nil {
				t.Fatal(err)
			}
			c := &checker{root: dir, tiltfile: filepath.Join(dir, "Tiltfile"), versions: versions, configArgs: map[string]string{}}
			c.run()
			var got []string
			for _, p := range c.problems {
				got = append(got, p.text)
			}
			all := strings.Join(got, "\n")
			if len(tc.want) == 0 && len(got) > 0 {
				t.Fatalf("want no problems, got:\n%s", all)
			}
			for _, w := range tc.want {
				if !strings.Contains(all, w) {
					t.Errorf("want a problem containing %q, got:\n%s", w, all)
				}
			}
		})
	}
}

func write(t *testing.T, path, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}
