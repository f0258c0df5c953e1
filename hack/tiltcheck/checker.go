package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"

	"go.starlark.net/resolve"
	"go.starlark.net/starlark"
	"go.starlark.net/syntax"
)

// checker holds what the Tiltfile declared, as the stand-ins recorded it, and the problems found.
type checker struct {
	root, tiltfile        string
	helmBin, kustomizeBin string
	versions              map[string]string
	configArgs            map[string]string
	configDefined         map[string]string // flag name -> kind (bool, string, string_list)
	versionConstraint     string
	objects               []*object
	images                []*image
	k8sResources          []*k8sResourceCall
	localResources        []*localResource
	finalNames            map[string]bool
	problems              []problem
	seenProblem           map[string]bool
	dockerfileStagesCache map[string][]string
	generatedPrefixes     []string
	enabledResources      []string
	enabledPos            syntax.Position
}

// object is one rendered Kubernetes object.
type object struct {
	apiVersion, kind, name, namespace string
	images                            []string          // container images, for workloads
	podLabels                         map[string]string // pod template labels, for workloads
	selector                          map[string]string // spec.selector, for Services
	origin                            string            // where it came from, for messages
	resource                          string            // the Tilt resource it ends up in
}

type image struct {
	ref, context, dockerfile, target string
	contents                         string // dockerfile_contents
	only                             []string
	syncs                            [][2]string
	pos                              syntax.Position
}

type k8sResourceCall struct {
	workload, newName string
	objects           []string
	resourceDeps      []string
	labels            []string
	portForwards      []int
	pos               syntax.Position
}

type localResource struct {
	name         string
	resourceDeps []string
	labels       []string
	pos          syntax.Position
}

var workloadKinds = map[string]bool{
	"deployment": true, "statefulset": true, "daemonset": true, "replicaset": true,
	"job": true, "cronjob": true, "pod": true, "replicationcontroller": true,
}

// problem is one finding, reported as file:line:col: message.
type problem struct {
	line int
	text string
}

func (c *checker) problem(pos syntax.Position, format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	where := filepath.Base(c.tiltfile)
	if pos.Line > 0 {
		where = fmt.Sprintf("%s:%d:%d", where, pos.Line, pos.Col)
	}
	text := where + ": " + msg
	if c.seenProblem == nil {
		c.seenProblem = map[string]bool{}
	}
	if !c.seenProblem[text] {
		c.seenProblem[text] = true
		c.problems = append(c.problems, problem{line: int(pos.Line), text: text})
	}
}

func (c *checker) run() {
	c.generatedPrefixes = []string{"build", ".run", "tilt_modules"}
	src, err := os.ReadFile(c.tiltfile)
	if err != nil {
		c.problem(syntax.Position{}, "%v", err)
		return
	}
	// Tilt's dialect: everything go.starlark.net can switch on.
	opts := &syntax.FileOptions{Set: true, While: true, TopLevelControl: true, GlobalReassign: true, Recursion: true}
	f, err := opts.Parse(c.tiltfile, src, 0)
	if err != nil {
		c.syntaxProblem(err)
		return
	}
	c.checkLiterals(f)

	thread := &starlark.Thread{
		Name:  "tiltcheck",
		Load:  c.load,
		Print: func(_ *starlark.Thread, msg string) {},
	}
	if _, err := starlark.ExecFileOptions(opts, thread, c.tiltfile, src, c.builtins()); err != nil {
		var evalErr *starlark.EvalError
		if errors.As(err, &evalErr) {
			c.problem(syntax.Position{}, "%s", evalErr.Backtrace())
		} else {
			c.syntaxProblem(err)
		}
		return
	}
	c.assemble()
	c.checkVersionConstraint()
}

func (c *checker) syntaxProblem(err error) {
	var list resolve.ErrorList
	if errors.As(err, &list) {
		for _, e := range list {
			c.problem(e.Pos, "%s", e.Msg)
		}
		return
	}
	var se syntax.Error
	if errors.As(err, &se) {
		c.problem(se.Pos, "%s", se.Msg)
		return
	}
	c.problem(syntax.Position{}, "%v", err)
}

// rel makes a Tiltfile-relative path absolute (Tilt resolves paths against the Tiltfile's directory).
func (c *checker) rel(p string) string {
	if filepath.IsAbs(p) {
		return p
	}
	return filepath.Join(c.root, p)
}

// generated reports whether a repository-relative path is a build output that need not exist yet.
func (c *checker) generated(p string) bool {
	p = filepath.ToSlash(filepath.Clean(strings.TrimPrefix(p, "./")))
	for _, g := range c.generatedPrefixes {
		if p == g || strings.HasPrefix(p, g+"/") {
			return true
		}
	}
	return false
}

// mustExist reports a problem if a path argument does not exist (build outputs excepted).
func (c *checker) mustExist(pos syntax.Position, what, p string) {
	if p == "" || c.generated(p) {
		return
	}
	if _, err := os.Stat(c.rel(p)); err != nil {
		c.problem(pos, "%s %q does not exist", what, p)
	}
}

// dockerfileStages lists the `FROM … AS name` stage names of a Dockerfile, lower-cased.
func (c *checker) dockerfileStages(path string) []string {
	if c.dockerfileStagesCache == nil {
		c.dockerfileStagesCache = map[string][]string{}
	}
	if s, ok := c.dockerfileStagesCache[path]; ok {
		return s
	}
	b, err := os.ReadFile(c.rel(path))
	if err != nil {
		return nil
	}
	var stages []string
	for _, m := range fromAs.FindAllStringSubmatch(string(b), -1) {
		stages = append(stages, strings.ToLower(m[1]))
	}
	c.dockerfileStagesCache[path] = stages
	return stages
}

var fromAs = regexp.MustCompile(`(?im)^\s*FROM\s+.*\s+AS\s+([A-Za-z0-9_.-]+)\s*$`)

func (c *checker) resourceNames() []string {
	var names []string
	for n := range c.finalNames {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

func (c *checker) checkVersionConstraint() {
	want := c.versions["TILT_VERSION"]
	switch {
	case c.versionConstraint == "":
		c.problem(syntax.Position{}, "no version_settings(constraint=...): Tilt before 0.36 cannot run helm() with Helm 4")
	case want == "":
		c.problem(syntax.Position{}, "TILT_VERSION is missing from the versions file")
	case strings.ReplaceAll(c.versionConstraint, " ", "") != ">="+want:
		c.problem(syntax.Position{}, "version_settings constraint %q is not \">=%s\" (TILT_VERSION in hack/versions.env): keep them in step", c.versionConstraint, want)
	}
}
