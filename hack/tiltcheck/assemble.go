package main

import (
	"fmt"
	"regexp"
	"sort"
	"strings"

	"go.starlark.net/syntax"
)

var labelPattern = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?$`)

// assemble groups the rendered objects into resources the way Tilt does (one per workload, named after it;
// k8s_resource renames, adds objects or creates resources from objects; Services go with the workloads they
// select), then checks names, dependencies, labels, port-forwards and images.
func (c *checker) assemble() {
	// Workload resources, named by the workload ("name:kind" where two workloads share a name).
	count := map[string]int{}
	for _, o := range c.objects {
		if workloadKinds[strings.ToLower(o.kind)] {
			count[strings.ToLower(o.name)]++
		}
	}
	type resource struct {
		name   string
		labels []string
		pos    syntax.Position
	}
	resources := map[string]*resource{} // by current name
	byWorkloadName := map[string]*resource{}
	for _, o := range c.objects {
		if !workloadKinds[strings.ToLower(o.kind)] {
			continue
		}
		name := strings.ToLower(o.name)
		if count[name] > 1 {
			name += ":" + strings.ToLower(o.kind)
		}
		r := &resource{name: name}
		resources[name] = r
		byWorkloadName[name] = r
		o.resource = name
	}
	workloadNames := sortedKeys(byWorkloadName)

	ports := map[int]string{}
	for _, call := range c.k8sResources {
		var r *resource
		switch {
		case call.workload != "":
			r = byWorkloadName[strings.ToLower(call.workload)]
			if r == nil {
				c.problem(call.pos, "k8s_resource(%q): no such workload in the rendered YAML (workloads: %s)", call.workload, strings.Join(workloadNames, ", "))
				continue
			}
			if call.newName != "" && call.newName != r.name {
				if resources[call.newName] != nil {
					c.problem(call.pos, "k8s_resource(%q): new_name %q is taken", call.workload, call.newName)
					continue
				}
				delete(resources, r.name)
				for _, o := range c.objects {
					if o.resource == r.name {
						o.resource = call.newName
					}
				}
				r.name = call.newName
				resources[r.name] = r
			}
		case call.newName == "" || len(call.objects) == 0:
			c.problem(call.pos, "k8s_resource without workload needs both new_name and objects")
			continue
		default:
			if resources[call.newName] != nil {
				c.problem(call.pos, "k8s_resource(new_name=%q): a resource of that name exists", call.newName)
				continue
			}
			r = &resource{name: call.newName}
			resources[r.name] = r
		}
		r.pos = call.pos
		r.labels = append(r.labels, call.labels...)
		for _, sel := range call.objects {
			c.claim(call.pos, r.name, sel)
		}
		for _, p := range call.portForwards {
			if other, ok := ports[p]; ok {
				c.problem(call.pos, "port %d is forwarded for both %s and %s", p, other, r.name)
			}
			ports[p] = r.name
		}
	}

	// Services that select a workload's pods go with it; everything else unclaimed is "uncategorized".
	for _, o := range c.objects {
		if o.resource != "" || !strings.EqualFold(o.kind, "Service") || len(o.selector) == 0 {
			continue
		}
		for _, w := range c.objects {
			if w.resource != "" && workloadKinds[strings.ToLower(w.kind)] && w.namespace == o.namespace && selects(o.selector, w.podLabels) {
				o.resource = w.resource
				break
			}
		}
	}
	var uncategorized []string
	for _, o := range c.objects {
		if o.resource == "" {
			uncategorized = append(uncategorized, fmt.Sprintf("%s:%s:%s", o.name, strings.ToLower(o.kind), o.namespace))
		}
	}
	if len(uncategorized) > 0 {
		sort.Strings(uncategorized)
		c.problem(syntax.Position{}, "objects left in Tilt's \"uncategorized\" resource (give them to a resource with k8s_resource(objects=...)): %s", strings.Join(uncategorized, ", "))
	}

	c.finalNames = map[string]bool{}
	deps := map[string][]string{}
	for name := range resources {
		c.finalNames[name] = true
	}
	for _, lr := range c.localResources {
		if c.finalNames[lr.name] {
			c.problem(lr.pos, "local_resource(%q): a resource of that name exists", lr.name)
		}
		c.finalNames[lr.name] = true
		deps[lr.name] = lr.resourceDeps
		c.checkLabels(lr.pos, lr.name, lr.labels)
	}
	for _, call := range c.k8sResources {
		name := call.newName
		if name == "" {
			if r := byWorkloadName[strings.ToLower(call.workload)]; r != nil {
				name = r.name
			}
		}
		if name != "" {
			deps[name] = append(deps[name], call.resourceDeps...)
		}
	}
	for name, r := range resources {
		c.checkLabels(r.pos, name, r.labels)
	}
	for _, call := range c.k8sResources {
		for _, d := range call.resourceDeps {
			if !c.finalNames[d] {
				c.problem(call.pos, "resource_deps: no resource %q (resources: %s)", d, strings.Join(c.resourceNames(), ", "))
			}
		}
	}
	for _, lr := range c.localResources {
		for _, d := range lr.resourceDeps {
			if !c.finalNames[d] {
				c.problem(lr.pos, "local_resource(%q) resource_deps: no resource %q (resources: %s)", lr.name, d, strings.Join(c.resourceNames(), ", "))
			}
		}
	}
	for _, n := range c.enabledResources {
		if !c.finalNames[n] {
			c.problem(c.enabledPos, "config.set_enabled_resources: no resource %q", n)
		}
	}
	if cycle := findCycle(deps); cycle != nil {
		c.problem(syntax.Position{}, "resource_deps cycle: %s", strings.Join(cycle, " -> "))
	}
	c.checkImages()
}

// claim gives the one object a selector matches to resource r.
func (c *checker) claim(pos syntax.Position, r, selector string) {
	parts := strings.Split(selector, ":")
	if len(parts) > 3 || parts[0] == "" {
		c.problem(pos, "object selector %q: want name[:kind[:namespace]]", selector)
		return
	}
	var matches []*object
	for _, o := range c.objects {
		if !strings.EqualFold(o.name, parts[0]) {
			continue
		}
		if len(parts) > 1 && parts[1] != "" && !strings.EqualFold(o.kind, parts[1]) {
			continue
		}
		if len(parts) > 2 && parts[2] != "" && !strings.EqualFold(o.namespace, parts[2]) {
			continue
		}
		matches = append(matches, o)
	}
	switch {
	case len(matches) == 0:
		c.problem(pos, "object selector %q matches no rendered object", selector)
	case len(matches) > 1:
		c.problem(pos, "object selector %q matches %d objects: qualify it with kind and namespace", selector, len(matches))
	case matches[0].resource != "":
		c.problem(pos, "object selector %q: the object already belongs to resource %q", selector, matches[0].resource)
	default:
		matches[0].resource = r
	}
}

func (c *checker) checkLabels(pos syntax.Position, name string, labels []string) {
	if len(labels) == 0 {
		c.problem(pos, "resource %q has no label: every resource is grouped in the UI", name)
	}
	for _, l := range labels {
		if !labelPattern.MatchString(l) {
			c.problem(pos, "resource %q: label %q is not valid (alphanumerics, '-', '_', '.', at most 63)", name, l)
		}
	}
}

// checkImages: every image built is deployed (by repository name, as Tilt matches refs), bases excepted.
func (c *checker) checkImages() {
	used := map[string]bool{}
	for _, o := range c.objects {
		for _, img := range o.images {
			used[repository(img)] = true
		}
	}
	for _, img := range c.images {
		if img.contents != "" {
			continue
		}
		base := false
		for _, other := range c.images {
			if strings.Contains(other.contents, "FROM "+img.ref+"\n") {
				base = true
			}
		}
		if !base && !used[repository(img.ref)] {
			c.problem(img.pos, "image %q is built but no rendered container uses it", img.ref)
		}
	}
	for _, img := range c.images {
		if img.contents != "" && !used[repository(img.ref)] {
			c.problem(img.pos, "image %q is built but no rendered container uses it", img.ref)
		}
	}
}

// repository strips the tag and digest from an image reference.
func repository(ref string) string {
	ref, _, _ = strings.Cut(ref, "@")
	if i := strings.LastIndex(ref, ":"); i > strings.LastIndex(ref, "/") {
		ref = ref[:i]
	}
	return ref
}

func selects(selector, labels map[string]string) bool {
	for k, v := range selector {
		if labels[k] != v {
			return false
		}
	}
	return true
}

func findCycle(deps map[string][]string) []string {
	const (
		unvisited = iota
		inProgress
		done
	)
	state := map[string]int{}
	var stack []string
	var visit func(string) []string
	visit = func(n string) []string {
		switch state[n] {
		case inProgress:
			for i, s := range stack {
				if s == n {
					return append(append([]string{}, stack[i:]...), n)
				}
			}
		case done:
			return nil
		}
		state[n] = inProgress
		stack = append(stack, n)
		for _, d := range deps[n] {
			if cycle := visit(d); cycle != nil {
				return cycle
			}
		}
		stack = stack[:len(stack)-1]
		state[n] = done
		return nil
	}
	for _, n := range sortedKeys(deps) {
		if cycle := visit(n); cycle != nil {
			return cycle
		}
	}
	return nil
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
