package main

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"

	"go.starlark.net/starlark"
	"go.starlark.net/starlarkstruct"
	"go.starlark.net/syntax"
)

// blob is Tilt's Blob: text that is content, not a path.
type blob struct{ text string }

func (b blob) String() string        { return b.text }
func (b blob) Type() string          { return "blob" }
func (b blob) Freeze()               {}
func (b blob) Truth() starlark.Bool  { return b.text != "" }
func (b blob) Hash() (uint32, error) { return starlark.String(b.text).Hash() }

// step is a live_update step; Type() spells Tilt's own type names (the restart_process extension tests them).
type step struct {
	kind          string // sync, run, fall_back_on, restart_container
	local, remote string
}

func (s step) String() string        { return fmt.Sprintf("%s(%q, %q)", s.kind, s.local, s.remote) }
func (s step) Type() string          { return "live_update_" + s.kind + "_step" }
func (s step) Freeze()               {}
func (s step) Truth() starlark.Bool  { return true }
func (s step) Hash() (uint32, error) { return 0, fmt.Errorf("unhashable: %s", s.Type()) }

type portForward struct{ local int }

func (p portForward) String() string        { return fmt.Sprintf("port_forward(%d)", p.local) }
func (p portForward) Type() string          { return "PortForward" }
func (p portForward) Freeze()               {}
func (p portForward) Truth() starlark.Bool  { return true }
func (p portForward) Hash() (uint32, error) { return uint32(p.local), nil }

// knownExtensions are extensions of the tilt-extensions repository (its top-level directories).
var knownExtensions = map[string]bool{
	"base64": true, "cancel": true, "color": true, "configmap": true, "conftest": true,
	"coreos_prometheus": true, "current_namespace": true, "deployment": true, "dict_merge": true,
	"docker_run": true, "dotenv": true, "earthly": true, "execute_in_pod": true, "file": true,
	"file_sync_only": true, "files_glob": true, "get_obj": true, "git_resource": true, "github_token": true,
	"global_vars": true, "hasura": true, "helm_remote": true, "helm_resource": true, "honeycomb": true,
	"k8s_attach": true, "k8s_yaml_glob": true, "kim": true, "knative": true, "ko": true, "kubebuilder": true,
	"kubectl_build": true, "kubefwd": true, "list_dependencies": true, "list_port_forwards": true,
	"local_output": true, "logger": true, "min_k8s_version": true, "min_tilt_version": true, "namespace": true,
	"nerdctl": true, "ngrok": true, "nix": true, "nix_flake": true, "pack": true, "podman": true, "pulumi": true,
	"pypiserver": true, "remote_development": true, "restart_container_alpha": true, "restart_process": true,
	"run_once": true, "secret": true, "show-readme": true, "snyk": true, "syncback": true, "tarfetch": true,
	"tests/golang": true, "tests/javascript": true, "tilt_inspector": true, "uibutton": true,
	"vault_client": true, "wait_for_it": true, "workflow": true, "yarn": true,
}

// callPos is where the Tiltfile called the built-in running now: the innermost frame in Starlark source (a
// built-in such as docker_build_with_restart may call others).
func callPos(thread *starlark.Thread) syntax.Position {
	for i := 1; i < thread.CallStackDepth(); i++ {
		if pos := thread.CallFrame(i).Pos; pos.Line > 0 {
			return pos
		}
	}
	return syntax.Position{}
}

// builtins are the stand-ins for the Tilt built-ins this repository's Tiltfile uses. A Tiltfile that calls
// one not modelled here fails with "undefined": add it here rather than skip the check.
func (c *checker) builtins() starlark.StringDict {
	b := func(name string, fn func(*starlark.Thread, *starlark.Builtin, starlark.Tuple, []starlark.Tuple) (starlark.Value, error)) *starlark.Builtin {
		return starlark.NewBuiltin(name, fn)
	}
	noop := func(name string) *starlark.Builtin {
		return b(name, func(*starlark.Thread, *starlark.Builtin, starlark.Tuple, []starlark.Tuple) (starlark.Value, error) {
			return starlark.None, nil
		})
	}
	c.configDefined = map[string]string{}
	return starlark.StringDict{
		"TRIGGER_MODE_AUTO":   starlark.String("TRIGGER_MODE_AUTO"),
		"TRIGGER_MODE_MANUAL": starlark.String("TRIGGER_MODE_MANUAL"),
		"struct":              starlark.NewBuiltin("struct", starlarkstruct.Make),
		"version_settings":    b("version_settings", c.versionSettings),
		"k8s_context":         b("k8s_context", c.k8sContext),
		"warn":                b("warn", c.warn),
		"fail":                b("fail", c.fail),
		"read_file":           b("read_file", c.readFile),
		"local":               b("local", c.local),
		"blob":                b("blob", c.blob),
		"decode_yaml_stream":  b("decode_yaml_stream", c.decodeYAMLStream),
		"helm":                b("helm", c.helm),
		"kustomize":           b("kustomize", c.kustomize),
		"k8s_yaml":            b("k8s_yaml", c.k8sYAML),
		"docker_build":        b("docker_build", c.dockerBuild),
		"sync":                b("sync", c.sync),
		"run":                 b("run", c.runStep),
		"port_forward":        b("port_forward", c.portForward),
		"link":                b("link", c.link),
		"k8s_resource":        b("k8s_resource", c.k8sResource),
		"local_resource":      b("local_resource", c.localResource),
		"update_settings":     noop("update_settings"),
		"ci_settings":         noop("ci_settings"),
		"watch_settings":      noop("watch_settings"),
		"allow_k8s_contexts":  noop("allow_k8s_contexts"),
		"watch_file":          noop("watch_file"),
		"config": &starlarkstruct.Module{Name: "config", Members: starlark.StringDict{
			"define_bool":           b("config.define_bool", c.defineConfig("bool")),
			"define_string":         b("config.define_string", c.defineConfig("string")),
			"define_string_list":    b("config.define_string_list", c.defineConfig("string_list")),
			"parse":                 b("config.parse", c.parseConfig),
			"set_enabled_resources": b("config.set_enabled_resources", c.setEnabledResources),
			"main_dir":              starlark.String(c.root),
			"main_path":             starlark.String(c.tiltfile),
			"tilt_subcommand":       starlark.String("up"),
		}},
		"os": &starlarkstruct.Module{Name: "os", Members: starlark.StringDict{
			"name":   starlark.String("posix"),
			"getcwd": b("os.getcwd", c.getcwd),
			"getenv": b("os.getenv", c.getenv),
			"putenv": b("os.putenv", c.putenv),
			"path": &starlarkstruct.Module{Name: "os.path", Members: starlark.StringDict{
				"join":   b("os.path.join", pathJoin),
				"exists": b("os.path.exists", c.pathExists),
			}},
		}},
	}
}

func (c *checker) load(thread *starlark.Thread, module string) (starlark.StringDict, error) {
	pos := callPos(thread)
	name, ok := strings.CutPrefix(module, "ext://")
	if !ok {
		return nil, fmt.Errorf("load(%q): only ext:// extensions are modelled by tiltcheck", module)
	}
	if !knownExtensions[name] {
		c.problem(pos, "load(%q): %q is not an extension of the tilt-extensions repository", module, name)
		return starlark.StringDict{}, nil
	}
	if name != "restart_process" {
		return nil, fmt.Errorf("load(%q): not modelled by tiltcheck (hack/tiltcheck/builtins.go)", module)
	}
	return starlark.StringDict{
		"docker_build_with_restart": starlark.NewBuiltin("docker_build_with_restart", c.dockerBuildWithRestart),
	}, nil
}

func (c *checker) versionSettings(_ *starlark.Thread, fn *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
	var checkUpdates bool
	var constraint string
	if err := starlark.UnpackArgs(fn.Name(), args, kwargs, "check_updates?", &checkUpdates, "constraint?", &constraint); err != nil {
		return nil, err
	}
	c.versionConstraint = constraint
	return starlark.None, nil
}

func (c *checker) k8sContext(_ *starlark.Thread, fn *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
	if err := starlark.UnpackArgs(fn.Name(), args, kwargs); err != nil {
		return nil, err
	}
	return starlark.String("kind-" + c.versions["KIND_CLUSTER_NAME"]), nil
}

func (c *checker) warn(_ *starlark.Thread, fn *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
	var msg string
	return starlark.None, starlark.UnpackArgs(fn.Name(), args, kwargs, "msg", &msg)
}

func (c *checker) fail(_ *starlark.Thread, fn *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
	var msg string
	if err := starlark.UnpackArgs(fn.Name(), args, kwargs, "msg", &msg); err != nil {
		return nil, err
	}
	return nil, fmt.Errorf("fail: %s", msg)
}

func (c *checker) readFile(thread *starlark.Thread, fn *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
	var path string
	var def starlark.Value = starlark.None
	if err := starlark.UnpackArgs(fn.Name(), args, kwargs, "file_path", &path, "default?", &def); err != nil {
		return nil, err
	}
	b, err := os.ReadFile(c.rel(path))
	if err != nil {
		if def != starlark.None {
			return def, nil
		}
		return nil, err
	}
	return blob{string(b)}, nil
}

// local records nothing and runs nothing: its commands build tools that the checker gets by flags.
func (c *checker) local(thread *starlark.Thread, fn *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
	var command, commandBat, stdin, env starlark.Value
	var quiet, echoOff bool
	var dir string
	if err := starlark.UnpackArgs(fn.Name(), args, kwargs, "command", &command, "quiet?", &quiet, "command_bat?", &commandBat,
		"echo_off?", &echoOff, "env?", &env, "dir?", &dir, "stdin?", &stdin); err != nil {
		return nil, err
	}
	c.mustExist(callPos(thread), "local(dir=...)", dir)
	return blob{}, nil
}

func (c *checker) blob(_ *starlark.Thread, fn *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
	var s string
	if err := starlark.UnpackArgs(fn.Name(), args, kwargs, "contents", &s); err != nil {
		return nil, err
	}
	return blob{s}, nil
}

func (c *checker) decodeYAMLStream(_ *starlark.Thread, fn *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
	var v starlark.Value
	if err := starlark.UnpackArgs(fn.Name(), args, kwargs, "yaml", &v); err != nil {
		return nil, err
	}
	docs, err := decodeYAMLDocs(textOf(v))
	if err != nil {
		return nil, err
	}
	list := make([]starlark.Value, 0, len(docs))
	for _, d := range docs {
		sv, err := toStarlark(d)
		if err != nil {
			return nil, err
		}
		list = append(list, sv)
	}
	return starlark.NewList(list), nil
}

func textOf(v starlark.Value) string {
	if s, ok := starlark.AsString(v); ok {
		return s
	}
	return v.String()
}

var helmTestSource = regexp.MustCompile(`(?m)^# Source: .*/tests/`)

// helm renders the chart the way Tilt's helm() does: `helm template NAME CHART --include-crds`, test
// templates dropped, the namespace set on every namespaced object.
func (c *checker) helm(thread *starlark.Thread, fn *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
	pos := callPos(thread)
	var chart, name, namespace, kubeVersion string
	var values, set starlark.Value = starlark.NewList(nil), starlark.NewList(nil)
	var skipCRDs bool
	if err := starlark.UnpackArgs(fn.Name(), args, kwargs, "paths", &chart, "name?", &name, "namespace?", &namespace,
		"values?", &values, "set?", &set, "kube_version?", &kubeVersion, "skip_crds?", &skipCRDs); err != nil {
		return nil, err
	}
	if _, err := os.Stat(filepath.Join(c.rel(chart), "Chart.yaml")); err != nil {
		c.problem(pos, "helm(%q): not a chart directory", chart)
		return blob{}, nil
	}
	if name == "" {
		name = "chart"
	}
	cmd := []string{"template", name, chart}
	if !skipCRDs {
		cmd = append(cmd, "--include-crds")
	}
	if namespace != "" {
		cmd = append(cmd, "--namespace", namespace)
	}
	if kubeVersion != "" {
		cmd = append(cmd, "--kube-version", kubeVersion)
	}
	vs, err := stringList(values)
	if err != nil {
		return nil, fmt.Errorf("helm: values: %w", err)
	}
	for _, v := range vs {
		c.mustExist(pos, "helm values file", v)
		cmd = append(cmd, "--values", v)
	}
	ss, err := stringList(set)
	if err != nil {
		return nil, fmt.Errorf("helm: set: %w", err)
	}
	for _, s := range ss {
		cmd = append(cmd, "--set", s)
	}
	out, err := c.exec(c.helmBin, cmd...)
	if err != nil {
		c.problem(pos, "helm(%q): %v", chart, err)
		return blob{}, nil
	}
	var kept []string
	for _, doc := range strings.Split(out, "---\n") {
		if !helmTestSource.MatchString(doc) {
			kept = append(kept, doc)
		}
	}
	text := strings.Join(kept, "---\n")
	if namespace != "" {
		text, err = setNamespace(text, namespace)
		if err != nil {
			return nil, err
		}
	}
	return blob{text}, nil
}

func (c *checker) kustomize(thread *starlark.Thread, fn *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
	pos := callPos(thread)
	var dir, bin string
	var flags starlark.Value = starlark.NewList(nil)
	if err := starlark.UnpackArgs(fn.Name(), args, kwargs, "pathToDir", &dir, "kustomize_bin?", &bin, "flags?", &flags); err != nil {
		return nil, err
	}
	extra, err := stringList(flags)
	if err != nil {
		return nil, err
	}
	// kustomize_bin points at the Tiltfile's own build of the pinned kustomize, which need not exist here.
	out, err := c.exec(c.kustomizeBin, append([]string{"build", dir}, extra...)...)
	if err != nil {
		c.problem(pos, "kustomize(%q): %v", dir, err)
		return blob{}, nil
	}
	return blob{out}, nil
}

func (c *checker) exec(bin string, args ...string) (string, error) {
	cmd := exec.Command(bin, args...)
	cmd.Dir = c.root
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("%s %s: %v: %s", filepath.Base(bin), strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return stdout.String(), nil
}

func (c *checker) k8sYAML(thread *starlark.Thread, fn *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
	pos := callPos(thread)
	var v starlark.Value
	var allowDuplicates bool
	if err := starlark.UnpackArgs(fn.Name(), args, kwargs, "yaml", &v, "allow_duplicates?", &allowDuplicates); err != nil {
		return nil, err
	}
	var sources []struct{ text, origin string }
	switch v := v.(type) {
	case blob:
		sources = append(sources, struct{ text, origin string }{v.text, "blob"})
	default:
		paths, err := stringList(v)
		if err != nil {
			return nil, fmt.Errorf("k8s_yaml: %w", err)
		}
		for _, p := range paths {
			b, err := os.ReadFile(c.rel(p))
			if err != nil {
				c.problem(pos, "k8s_yaml(%q): %v", p, err)
				continue
			}
			sources = append(sources, struct{ text, origin string }{string(b), p})
		}
	}
	for _, s := range sources {
		objs, err := parseObjects(s.text, s.origin)
		if err != nil {
			c.problem(pos, "k8s_yaml: %v", err)
			continue
		}
		for _, o := range objs {
			for _, prev := range c.objects {
				if !allowDuplicates && strings.EqualFold(prev.kind, o.kind) && prev.name == o.name && prev.namespace == o.namespace {
					c.problem(pos, "k8s_yaml: %s %s/%s is registered twice", o.kind, o.namespace, o.name)
				}
			}
			c.objects = append(c.objects, o)
		}
	}
	return starlark.None, nil
}

// dockerBuild takes docker_build's parameters (Tilt's names; an unknown keyword is an error, as in Tilt).
func (c *checker) dockerBuild(thread *starlark.Thread, fn *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
	pos := callPos(thread)
	var ref, context, dockerfile, target, network, platform string
	var dockerfileContents starlark.Value = starlark.String("")
	var liveUpdate, ignore, only, entrypoint, ssh, secret, extraTag, cacheFrom, extraHosts starlark.Value
	var buildArgs *starlark.Dict
	var containerArgs starlark.Value
	var matchInEnvVars, pull bool
	if err := starlark.UnpackArgs(fn.Name(), args, kwargs, "ref", &ref, "context", &context, "build_args?", &buildArgs,
		"dockerfile?", &dockerfile, "dockerfile_contents?", &dockerfileContents, "live_update?", &liveUpdate,
		"match_in_env_vars?", &matchInEnvVars, "ignore?", &ignore, "only?", &only, "entrypoint?", &entrypoint,
		"target?", &target, "ssh?", &ssh, "network?", &network, "secret?", &secret, "extra_tag?", &extraTag,
		"container_args?", &containerArgs, "cache_from?", &cacheFrom, "pull?", &pull, "platform?", &platform,
		"extra_hosts?", &extraHosts); err != nil {
		return nil, err
	}
	img := &image{ref: ref, context: context, dockerfile: dockerfile, target: target, contents: textOf(dockerfileContents), pos: pos}
	c.mustExist(pos, "docker_build context", context)
	if img.contents == "" {
		if img.dockerfile == "" {
			img.dockerfile = "Dockerfile"
		}
		c.mustExist(pos, "docker_build dockerfile", img.dockerfile)
		if target != "" && !contains(c.dockerfileStages(img.dockerfile), strings.ToLower(target)) {
			c.problem(pos, "docker_build(%q): target %q is not a stage of %s (stages: %v)", ref, target, img.dockerfile, c.dockerfileStages(img.dockerfile))
		}
	}
	if only != nil && only != starlark.None {
		var err error
		if img.only, err = stringList(only); err != nil {
			return nil, fmt.Errorf("docker_build: only: %w", err)
		}
		for _, o := range img.only {
			if !within(filepath.Join(context, o), context) {
				c.problem(pos, "docker_build(%q): only entry %q is outside the context %q", ref, o, context)
			}
			c.mustExist(pos, "docker_build only entry", filepath.Join(context, o))
		}
	}
	if liveUpdate != nil && liveUpdate != starlark.None {
		steps, err := stepList(liveUpdate)
		if err != nil {
			return nil, fmt.Errorf("docker_build: live_update: %w", err)
		}
		seenRun := false
		for _, s := range steps {
			switch s.kind {
			case "sync":
				if seenRun {
					c.problem(pos, "docker_build(%q): sync(%q) after a run step", ref, s.local)
				}
				if !filepath.IsAbs(s.remote) {
					c.problem(pos, "docker_build(%q): sync remote path %q is not absolute", ref, s.remote)
				}
				if !within(s.local, context) {
					c.problem(pos, "docker_build(%q): sync(%q) is outside the build context %q: Tilt never sees its changes", ref, s.local, context)
				}
				if len(img.only) > 0 {
					inOnly := false
					for _, o := range img.only {
						if within(s.local, filepath.Join(context, o)) {
							inOnly = true
						}
					}
					if !inOnly {
						c.problem(pos, "docker_build(%q): sync(%q) is not under `only` %v: Tilt never sees its changes", ref, s.local, img.only)
					}
				}
				c.mustExist(pos, "sync local path", s.local)
				img.syncs = append(img.syncs, [2]string{s.local, s.remote})
			case "run":
				seenRun = true
			}
		}
	}
	c.images = append(c.images, img)
	return starlark.None, nil
}

// dockerBuildWithRestart mirrors the restart_process extension: a base image built as given, and a child
// image FROM it with the restart wrapper as entrypoint and a run step that touches restart_file.
func (c *checker) dockerBuildWithRestart(thread *starlark.Thread, fn *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
	pos := callPos(thread)
	named := map[string]starlark.Value{}
	positional := []string{"ref", "context", "entrypoint", "live_update"}
	if len(args) > len(positional) {
		return nil, fmt.Errorf("%s: too many positional arguments", fn.Name())
	}
	for i, a := range args {
		named[positional[i]] = a
	}
	var rest []starlark.Tuple
	for _, kv := range kwargs {
		k := string(kv[0].(starlark.String))
		switch k {
		case "ref", "context", "entrypoint", "live_update", "base_suffix", "restart_file":
			named[k] = kv[1]
		default:
			rest = append(rest, kv)
		}
	}
	for _, k := range positional {
		if named[k] == nil {
			return nil, fmt.Errorf("%s: missing argument %s", fn.Name(), k)
		}
	}
	ref, _ := starlark.AsString(named["ref"])
	steps, err := stepList(named["live_update"])
	if err != nil {
		return nil, fmt.Errorf("%s: live_update: %w", fn.Name(), err)
	}
	if len(steps) == 0 {
		c.problem(pos, "%s(%q) requires at least one live_update step", fn.Name(), ref)
	}
	for _, s := range steps {
		if s.kind == "restart_container" {
			c.problem(pos, "%s(%q): restart_container() does not go with the restart_process extension", fn.Name(), ref)
		}
	}
	baseSuffix, restartFile := "-base", "/.restart-proc"
	if v, ok := named["base_suffix"]; ok {
		baseSuffix, _ = starlark.AsString(v)
	}
	if v, ok := named["restart_file"]; ok {
		restartFile, _ = starlark.AsString(v)
	}
	if !filepath.IsAbs(restartFile) {
		c.problem(pos, "%s(%q): restart_file %q is not absolute", fn.Name(), ref, restartFile)
	}
	base := ref + baseSuffix
	baseKwargs := append([]starlark.Tuple{}, rest...)
	if _, err := starlark.Call(thread, starlark.NewBuiltin("docker_build", c.dockerBuild),
		starlark.Tuple{starlark.String(base), named["context"]}, baseKwargs); err != nil {
		return nil, err
	}
	baseImg := c.images[len(c.images)-1]
	c.checkShell(pos, baseImg, restartFile)

	var childKwargs []starlark.Tuple
	for _, kv := range rest {
		switch string(kv[0].(starlark.String)) {
		case "dockerfile", "dockerfile_contents", "target":
		default:
			childKwargs = append(childKwargs, kv)
		}
	}
	lu := append(append([]starlark.Value{}, listValues(named["live_update"])...), step{kind: "run", local: "date > " + restartFile})
	childKwargs = append(childKwargs,
		starlark.Tuple{starlark.String("dockerfile_contents"), starlark.String("FROM " + base + "\nRUN [\"touch\", \"" + restartFile + "\"]\n")},
		starlark.Tuple{starlark.String("live_update"), starlark.NewList(lu)},
	)
	if _, err := starlark.Call(thread, starlark.NewBuiltin("docker_build", c.dockerBuild),
		starlark.Tuple{named["ref"], named["context"]}, childKwargs); err != nil {
		return nil, err
	}
	return starlark.None, nil
}

// checkShell: the restart wrapper runs `date > restart_file` through sh, and the child image touches the file
// as the image's user, so the target stage needs a shell and a directory that user can write.
func (c *checker) checkShell(pos syntax.Position, img *image, restartFile string) {
	if img.contents != "" || img.dockerfile == "" {
		return
	}
	b, err := os.ReadFile(c.rel(img.dockerfile))
	if err != nil {
		return
	}
	stage := stageText(string(b), img.target)
	from := fromLine.FindStringSubmatch(stage)
	if from != nil && (strings.Contains(from[1], "distroless") || from[1] == "scratch") {
		c.problem(pos, "docker_build_with_restart(%q): stage %q is based on %s, which has no shell for the restart wrapper", img.ref, img.target, from[1])
	}
	if user := userLine.FindStringSubmatch(stage); user != nil && restartFile == "/.restart-proc" && !strings.HasPrefix(user[1], "0") && user[1] != "root" {
		c.problem(pos, "docker_build_with_restart(%q): the image runs as user %s, who cannot create %s: set restart_file under a directory it owns", img.ref, user[1], restartFile)
	}
}

var (
	fromLine = regexp.MustCompile(`(?im)^\s*FROM\s+(?:--platform=\S+\s+)?(\S+)`)
	userLine = regexp.MustCompile(`(?im)^\s*USER\s+(\S+)`)
)

// stageText returns the Dockerfile text of the named stage (the last stage if target is empty).
func stageText(dockerfile, target string) string {
	idx := fromLine.FindAllStringIndex(dockerfile, -1)
	for i, loc := range idx {
		end := len(dockerfile)
		if i+1 < len(idx) {
			end = idx[i+1][0]
		}
		text := dockerfile[loc[0]:end]
		if target == "" && i == len(idx)-1 {
			return text
		}
		if m := fromAs.FindStringSubmatch(text); m != nil && strings.EqualFold(m[1], target) {
			return text
		}
	}
	return ""
}

func (c *checker) sync(_ *starlark.Thread, fn *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
	var local, remote string
	if err := starlark.UnpackArgs(fn.Name(), args, kwargs, "local_path", &local, "remote_path", &remote); err != nil {
		return nil, err
	}
	return step{kind: "sync", local: local, remote: remote}, nil
}

func (c *checker) runStep(_ *starlark.Thread, fn *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
	var cmd, trigger starlark.Value
	var echoOff bool
	if err := starlark.UnpackArgs(fn.Name(), args, kwargs, "cmd", &cmd, "trigger?", &trigger, "echo_off?", &echoOff); err != nil {
		return nil, err
	}
	return step{kind: "run", local: textOf(cmd)}, nil
}

func (c *checker) portForward(_ *starlark.Thread, fn *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
	var local int
	var container, name, linkPath, host starlark.Value
	if err := starlark.UnpackArgs(fn.Name(), args, kwargs, "local_port", &local, "container_port?", &container,
		"name?", &name, "link_path?", &linkPath, "host?", &host); err != nil {
		return nil, err
	}
	return portForward{local: local}, nil
}

func (c *checker) link(_ *starlark.Thread, fn *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
	var url, name string
	if err := starlark.UnpackArgs(fn.Name(), args, kwargs, "url", &url, "name?", &name); err != nil {
		return nil, err
	}
	if !strings.HasPrefix(url, "http://") && !strings.HasPrefix(url, "https://") {
		return nil, fmt.Errorf("link(%q): not an http(s) URL", url)
	}
	return starlark.String(url), nil
}

func (c *checker) k8sResource(thread *starlark.Thread, fn *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
	pos := callPos(thread)
	var workload, newName, podReadiness, discovery string
	var portForwards, extraPodSelectors, triggerMode, resourceDeps, objects, links, labels starlark.Value
	autoInit := true
	if err := starlark.UnpackArgs(fn.Name(), args, kwargs, "workload?", &workload, "new_name?", &newName,
		"port_forwards?", &portForwards, "extra_pod_selectors?", &extraPodSelectors, "trigger_mode?", &triggerMode,
		"resource_deps?", &resourceDeps, "objects?", &objects, "auto_init?", &autoInit, "pod_readiness?", &podReadiness,
		"links?", &links, "labels?", &labels, "discovery_strategy?", &discovery); err != nil {
		return nil, err
	}
	call := &k8sResourceCall{workload: workload, newName: newName, pos: pos}
	var err error
	if call.objects, err = optStringList(objects); err != nil {
		return nil, fmt.Errorf("k8s_resource: objects: %w", err)
	}
	if call.resourceDeps, err = optStringList(resourceDeps); err != nil {
		return nil, fmt.Errorf("k8s_resource: resource_deps: %w", err)
	}
	if call.labels, err = optStringList(labels); err != nil {
		return nil, fmt.Errorf("k8s_resource: labels: %w", err)
	}
	if call.portForwards, err = localPorts(portForwards); err != nil {
		return nil, fmt.Errorf("k8s_resource: port_forwards: %w", err)
	}
	c.k8sResources = append(c.k8sResources, call)
	return starlark.None, nil
}

func (c *checker) localResource(thread *starlark.Thread, fn *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
	pos := callPos(thread)
	var name, dir, serveDir string
	var cmd, deps, triggerMode, resourceDeps, ignore, serveCmd, cmdBat, serveCmdBat, links, tags, readinessProbe, labels starlark.Value
	var env, serveEnv *starlark.Dict
	autoInit, allowParallel := true, false
	if err := starlark.UnpackArgs(fn.Name(), args, kwargs, "name", &name, "cmd?", &cmd, "deps?", &deps,
		"trigger_mode?", &triggerMode, "resource_deps?", &resourceDeps, "ignore?", &ignore, "auto_init?", &autoInit,
		"serve_cmd?", &serveCmd, "cmd_bat?", &cmdBat, "serve_cmd_bat?", &serveCmdBat, "allow_parallel?", &allowParallel,
		"links?", &links, "tags?", &tags, "env?", &env, "serve_env?", &serveEnv, "readiness_probe?", &readinessProbe,
		"dir?", &dir, "serve_dir?", &serveDir, "labels?", &labels); err != nil {
		return nil, err
	}
	r := &localResource{name: name, pos: pos}
	var err error
	if r.resourceDeps, err = optStringList(resourceDeps); err != nil {
		return nil, fmt.Errorf("local_resource: resource_deps: %w", err)
	}
	if r.labels, err = optStringList(labels); err != nil {
		return nil, fmt.Errorf("local_resource: labels: %w", err)
	}
	ds, err := optStringList(deps)
	if err != nil {
		return nil, fmt.Errorf("local_resource: deps: %w", err)
	}
	for _, d := range ds {
		c.mustExist(pos, fmt.Sprintf("local_resource(%q) dep", name), d)
	}
	c.mustExist(pos, "local_resource dir", dir)
	for _, e := range []*starlark.Dict{env, serveEnv} {
		if e == nil {
			continue
		}
		for _, item := range e.Items() {
			if _, ok := item[0].(starlark.String); !ok {
				return nil, fmt.Errorf("local_resource(%q): env key %v is not a string", name, item[0])
			}
			if _, ok := item[1].(starlark.String); !ok {
				return nil, fmt.Errorf("local_resource(%q): env value of %v is not a string", name, item[0])
			}
		}
	}
	if cmd == nil && serveCmd == nil {
		c.problem(pos, "local_resource(%q) has neither cmd nor serve_cmd", name)
	}
	c.localResources = append(c.localResources, r)
	return starlark.None, nil
}

func (c *checker) defineConfig(kind string) func(*starlark.Thread, *starlark.Builtin, starlark.Tuple, []starlark.Tuple) (starlark.Value, error) {
	return func(_ *starlark.Thread, fn *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
		var name, usage string
		var positional bool
		if err := starlark.UnpackArgs(fn.Name(), args, kwargs, "name", &name, "args?", &positional, "usage?", &usage); err != nil {
			return nil, err
		}
		c.configDefined[name] = kind
		return starlark.None, nil
	}
}

// parseConfig returns the -config values given to the checker, typed as their definitions say.
func (c *checker) parseConfig(_ *starlark.Thread, fn *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
	if err := starlark.UnpackArgs(fn.Name(), args, kwargs); err != nil {
		return nil, err
	}
	d := starlark.NewDict(len(c.configArgs))
	for name, value := range c.configArgs {
		var v starlark.Value
		switch c.configDefined[name] {
		case "bool":
			b, err := strconv.ParseBool(value)
			if err != nil {
				return nil, fmt.Errorf("config %s=%q: %w", name, value, err)
			}
			v = starlark.Bool(b)
		case "string":
			v = starlark.String(value)
		case "string_list":
			v = starlark.NewList([]starlark.Value{starlark.String(value)})
		default:
			return nil, fmt.Errorf("config %q is not defined by the Tiltfile (defined: %v)", name, c.configDefined)
		}
		if err := d.SetKey(starlark.String(name), v); err != nil {
			return nil, err
		}
	}
	return d, nil
}

// setEnabledResources records the names, checked once the resources are known.
func (c *checker) setEnabledResources(thread *starlark.Thread, fn *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
	var v starlark.Value
	if err := starlark.UnpackArgs(fn.Name(), args, kwargs, "resources", &v); err != nil {
		return nil, err
	}
	names, err := stringList(v)
	if err != nil {
		return nil, err
	}
	c.enabledResources = append(c.enabledResources, names...)
	c.enabledPos = callPos(thread)
	return starlark.None, nil
}

func (c *checker) getcwd(_ *starlark.Thread, fn *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
	return starlark.String(c.root), starlark.UnpackArgs(fn.Name(), args, kwargs)
}

func (c *checker) getenv(_ *starlark.Thread, fn *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
	var key string
	var def starlark.Value = starlark.None
	if err := starlark.UnpackArgs(fn.Name(), args, kwargs, "key", &key, "default?", &def); err != nil {
		return nil, err
	}
	if v, ok := os.LookupEnv(key); ok {
		return starlark.String(v), nil
	}
	return def, nil
}

func (c *checker) putenv(_ *starlark.Thread, fn *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
	var key, value string
	return starlark.None, starlark.UnpackArgs(fn.Name(), args, kwargs, "key", &key, "value", &value)
}

func pathJoin(_ *starlark.Thread, fn *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
	if len(kwargs) > 0 {
		return nil, fmt.Errorf("%s: unexpected keyword arguments", fn.Name())
	}
	parts := make([]string, len(args))
	for i, a := range args {
		s, ok := starlark.AsString(a)
		if !ok {
			return nil, fmt.Errorf("%s: argument %d is not a string", fn.Name(), i+1)
		}
		parts[i] = s
	}
	return starlark.String(filepath.Join(parts...)), nil
}

func (c *checker) pathExists(_ *starlark.Thread, fn *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
	var p string
	if err := starlark.UnpackArgs(fn.Name(), args, kwargs, "path", &p); err != nil {
		return nil, err
	}
	_, err := os.Stat(c.rel(p))
	return starlark.Bool(err == nil), nil
}

// stringList accepts a string or a list/tuple of strings, as Tilt's parameters typed Union[str, List[str]].
func stringList(v starlark.Value) ([]string, error) {
	if s, ok := starlark.AsString(v); ok {
		return []string{s}, nil
	}
	var out []string
	for _, e := range listValues(v) {
		s, ok := starlark.AsString(e)
		if !ok {
			return nil, fmt.Errorf("%v is not a string", e)
		}
		out = append(out, s)
	}
	if _, ok := v.(starlark.Iterable); !ok {
		return nil, fmt.Errorf("want a string or a list of strings, got %s", v.Type())
	}
	return out, nil
}

func optStringList(v starlark.Value) ([]string, error) {
	if v == nil || v == starlark.None {
		return nil, nil
	}
	return stringList(v)
}

func listValues(v starlark.Value) []starlark.Value {
	it, ok := v.(starlark.Iterable)
	if !ok {
		return nil
	}
	iter := it.Iterate()
	defer iter.Done()
	var out []starlark.Value
	var x starlark.Value
	for iter.Next(&x) {
		out = append(out, x)
	}
	return out
}

func stepList(v starlark.Value) ([]step, error) {
	var out []step
	for _, e := range listValues(v) {
		s, ok := e.(step)
		if !ok {
			return nil, fmt.Errorf("%v is not a live_update step", e)
		}
		out = append(out, s)
	}
	return out, nil
}

// localPorts reads port_forwards in its three forms: 9000, '9000' / '9000:8000' / 'host:9000:8000', port_forward().
func localPorts(v starlark.Value) ([]int, error) {
	if v == nil || v == starlark.None {
		return nil, nil
	}
	values := []starlark.Value{v}
	if _, ok := v.(*starlark.List); ok {
		values = listValues(v)
	}
	var ports []int
	for _, e := range values {
		switch e := e.(type) {
		case starlark.Int:
			p, _ := e.Int64()
			ports = append(ports, int(p))
		case starlark.String:
			parts := strings.Split(string(e), ":")
			i := 0
			if len(parts) == 3 {
				i = 1
			}
			p, err := strconv.Atoi(parts[i])
			if err != nil {
				return nil, fmt.Errorf("%q: %w", string(e), err)
			}
			ports = append(ports, p)
		case portForward:
			ports = append(ports, e.local)
		default:
			return nil, fmt.Errorf("%v is not a port forward", e)
		}
	}
	return ports, nil
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// within reports whether path p is dir or below it (both relative to the Tiltfile's directory).
func within(p, dir string) bool {
	p, dir = filepath.Clean(p), filepath.Clean(dir)
	if dir == "." {
		return !strings.HasPrefix(p, "..") && !filepath.IsAbs(p)
	}
	return p == dir || strings.HasPrefix(p, dir+string(filepath.Separator))
}
