package chart_test

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"text/template"

	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	"helm.sh/helm/v4/pkg/action"
	"helm.sh/helm/v4/pkg/chart/common"
	"helm.sh/helm/v4/pkg/chart/v2/loader"
	release "helm.sh/helm/v4/pkg/release/v1"
	"helm.sh/helm/v4/pkg/strvals"
	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
)

const (
	chartDir    = "../cacheside"
	releaseName = "demo"
	namespace   = "demo-ns"
	// The Kubernetes the chart is rendered for: the k8s.io/api this module builds with.
	kubeVersion = "v1.37.0"
)

// decoder decodes YAML into the Kubernetes API types (plus the Prometheus Operator's), and fails on
// unknown or duplicated fields.
var decoder = func() runtime.Decoder {
	scheme := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(scheme); err != nil {
		panic(err)
	}
	if err := monitoringv1.AddToScheme(scheme); err != nil {
		panic(err)
	}
	return serializer.NewCodecFactory(scheme, serializer.EnableStrict).UniversalDeserializer()
}()

// object is one rendered Kubernetes object.
type object struct {
	Source string // template path, e.g. cacheside/templates/deployment.yaml
	Name   string
	Hook   bool
	Obj    runtime.Object
}

// manifest is a rendered release.
type manifest struct {
	Objects []object
	Notes   string
}

// renderOptions are what a test may vary besides the values.
type renderOptions struct {
	kubeVersion string
	upgrade     bool
	// lookup answers the templates' `lookup`s. Nil: clusterWithNamespace, unless offline.
	lookup func(apiVersion, kind, namespace, name string) (map[string]any, error)
	// offline renders as `helm template` and Argo CD do: every lookup answers nothing.
	offline bool
}

// clusterWithNamespace answers lookups like a cluster whose release namespace exists (so Kubernetes has
// published its kube-root-ca.crt ConfigMap) and holds nothing of the release yet: a first `helm install`.
func clusterWithNamespace(apiVersion, kind, ns, name string) (map[string]any, error) {
	if apiVersion == "v1" && kind == "ConfigMap" && ns == namespace && name == "kube-root-ca.crt" {
		return map[string]any{"apiVersion": "v1", "kind": "ConfigMap", "metadata": map[string]any{"name": name, "namespace": ns}}, nil
	}
	return map[string]any{}, nil
}

// render renders the chart like a first `helm install` into an existing namespace would (lookups see the
// cluster), with the values of one of the chart's ci/*-values.yaml (empty for none) and `--set` style
// overrides, and decodes every object strictly.
func render(t *testing.T, valuesFile string, set ...string) manifest {
	t.Helper()
	m, err := renderWith(renderOptions{}, valuesFile, set...)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func renderWith(opts renderOptions, valuesFile string, set ...string) (manifest, error) {
	rel, err := install(opts, valuesFile, set...)
	if err != nil {
		return manifest{}, err
	}
	m := manifest{Notes: rel.Info.Notes}
	docs, err := decodeAll(rel.Manifest)
	if err != nil {
		return manifest{}, err
	}
	m.Objects = append(m.Objects, docs...)
	for _, h := range rel.Hooks {
		docs, err := decodeAll(h.Manifest)
		if err != nil {
			return manifest{}, fmt.Errorf("hook %s: %w", h.Path, err)
		}
		for _, d := range docs {
			d.Hook = true
			m.Objects = append(m.Objects, d)
		}
	}
	return m, nil
}

// install runs a client-only install: the chart's schema, templates and `fail`s all apply, nothing is sent.
func install(opts renderOptions, valuesFile string, set ...string) (*release.Release, error) {
	chrt, err := loader.Load(chartDir)
	if err != nil {
		return nil, fmt.Errorf("loading the chart: %w", err)
	}
	vals := map[string]any{}
	if valuesFile != "" {
		vals, err = common.ReadValuesFile(valuesPath(valuesFile))
		if err != nil {
			return nil, fmt.Errorf("reading %s: %w", valuesFile, err)
		}
	}
	for _, s := range set {
		if err := strvals.ParseInto(s, vals); err != nil {
			return nil, fmt.Errorf("parsing %q: %w", s, err)
		}
	}

	cfg := action.NewConfiguration()
	switch {
	case opts.lookup != nil:
		cfg.CustomTemplateFuncs = template.FuncMap{"lookup": opts.lookup}
	case !opts.offline:
		cfg.CustomTemplateFuncs = template.FuncMap{"lookup": clusterWithNamespace}
	}
	inst := action.NewInstall(cfg)
	inst.DryRunStrategy = action.DryRunClient
	inst.ReleaseName = releaseName
	inst.Namespace = namespace
	inst.IsUpgrade = opts.upgrade
	kv, err := common.ParseKubeVersion(cmpOr(opts.kubeVersion, kubeVersion))
	if err != nil {
		return nil, err
	}
	inst.KubeVersion = kv
	inst.APIVersions = common.VersionSet{"monitoring.coreos.com/v1", "monitoring.coreos.com/v1/ServiceMonitor"}

	r, err := inst.Run(chrt, vals)
	if err != nil {
		return nil, err
	}
	rel, ok := r.(*release.Release)
	if !ok {
		return nil, fmt.Errorf("unexpected release type %T", r)
	}
	return rel, nil
}

func cmpOr(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

// decodeAll splits a multi-document manifest and decodes each document strictly.
func decodeAll(manifest string) ([]object, error) {
	var objs []object
	reader := utilyaml.NewYAMLReader(bufio.NewReader(strings.NewReader(manifest)))
	for {
		doc, err := reader.Read()
		if errors.Is(err, io.EOF) {
			return objs, nil
		}
		if err != nil {
			return nil, err
		}
		source := sourceOf(doc)
		if len(bytes.TrimSpace(stripComments(doc))) == 0 {
			continue
		}
		obj, gvk, err := decoder.Decode(doc, nil, nil)
		if err != nil {
			return nil, fmt.Errorf("%s: decoding strictly: %w\n%s", source, err, doc)
		}
		m, err := meta.Accessor(obj)
		if err != nil {
			return nil, fmt.Errorf("%s: %s: %w", source, gvk, err)
		}
		objs = append(objs, object{Source: source, Name: m.GetName(), Obj: obj})
	}
}

func stripComments(doc []byte) []byte {
	var out [][]byte
	for line := range bytes.SplitSeq(doc, []byte("\n")) {
		if !bytes.HasPrefix(bytes.TrimSpace(line), []byte("#")) {
			out = append(out, line)
		}
	}
	return bytes.Join(out, []byte("\n"))
}

func sourceOf(doc []byte) string {
	for line := range bytes.SplitSeq(doc, []byte("\n")) {
		if s, ok := bytes.CutPrefix(line, []byte("# Source: ")); ok {
			return string(s)
		}
	}
	return "(unknown source)"
}

// ciValuesFiles lists the names of the chart's ci/*-values.yaml: the combinations that must keep working.
func ciValuesFiles(t *testing.T) []string {
	t.Helper()
	paths, err := filepath.Glob(ciPath("*-values.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var files []string
	for _, p := range paths {
		files = append(files, filepath.Base(p))
	}
	if len(files) < 4 {
		t.Fatalf("found %d ci values files, want at least the default, external, HA and existing-Secrets ones", len(files))
	}
	return files
}

func ciPath(name string) string { return filepath.Join(chartDir, "ci", name) }

// valuesPath is where render reads a values file: a name of ciValuesFiles, or a path of its own
// (relative to charts/tests), such as the kind cluster's k8s/values/kind.yaml.
func valuesPath(name string) string {
	if strings.Contains(name, "/") {
		return name
	}
	return ciPath(name)
}

// Typed accessors.

func only[T runtime.Object](t *testing.T, m manifest, match func(T) bool) T {
	t.Helper()
	found := all(m, match)
	if len(found) != 1 {
		var zero T
		t.Fatalf("found %d %T, want exactly 1", len(found), zero)
	}
	return found[0]
}

func has[T runtime.Object](m manifest, match func(T) bool) bool {
	return len(all(m, match)) > 0
}

func all[T runtime.Object](m manifest, match func(T) bool) []T {
	var out []T
	for _, o := range m.Objects {
		if v, ok := o.Obj.(T); ok && (match == nil || match(v)) {
			out = append(out, v)
		}
	}
	return out
}

func component(name string) func(metav1.Object) bool {
	return func(o metav1.Object) bool { return o.GetLabels()["app.kubernetes.io/component"] == name }
}

func appDeployment(t *testing.T, m manifest) *appsv1.Deployment {
	t.Helper()
	return only(t, m, func(d *appsv1.Deployment) bool { return component("server")(d) })
}

func migrationJob(t *testing.T, m manifest) *batchv1.Job {
	t.Helper()
	return only(t, m, func(j *batchv1.Job) bool { return component("migration")(j) })
}

func appConfigMap(t *testing.T, m manifest) *corev1.ConfigMap {
	t.Helper()
	d := appDeployment(t, m)
	for _, ef := range container(t, d.Spec.Template.Spec, "cacheside").EnvFrom {
		if ef.ConfigMapRef != nil {
			return only(t, m, func(c *corev1.ConfigMap) bool { return c.Name == ef.ConfigMapRef.Name })
		}
	}
	t.Fatal("the app container reads no ConfigMap")
	return nil
}

func container(t *testing.T, spec corev1.PodSpec, name string) corev1.Container {
	t.Helper()
	i := slices.IndexFunc(spec.Containers, func(c corev1.Container) bool { return c.Name == name })
	if i < 0 {
		t.Fatalf("no container %q", name)
	}
	return spec.Containers[i]
}

// podTemplate is a pod spec with where it came from.
type podTemplate struct {
	Owner  string
	Labels map[string]string
	Spec   corev1.PodSpec
}

// podTemplates returns every pod the release can create: Deployments, StatefulSets, Jobs and bare Pods.
func podTemplates(m manifest) []podTemplate {
	var out []podTemplate
	for _, o := range m.Objects {
		name := fmt.Sprintf("%T %s", o.Obj, o.Name)
		switch v := o.Obj.(type) {
		case *appsv1.Deployment:
			out = append(out, podTemplate{name, v.Spec.Template.Labels, v.Spec.Template.Spec})
		case *appsv1.StatefulSet:
			out = append(out, podTemplate{name, v.Spec.Template.Labels, v.Spec.Template.Spec})
		case *appsv1.DaemonSet:
			out = append(out, podTemplate{name, v.Spec.Template.Labels, v.Spec.Template.Spec})
		case *batchv1.Job:
			out = append(out, podTemplate{name, v.Spec.Template.Labels, v.Spec.Template.Spec})
		case *batchv1.CronJob:
			out = append(out, podTemplate{name, v.Spec.JobTemplate.Spec.Template.Labels, v.Spec.JobTemplate.Spec.Template.Spec})
		case *corev1.Pod:
			out = append(out, podTemplate{name, v.Labels, v.Spec})
		}
	}
	return out
}

func mustRead(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
