package main

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/discovery"
)

// checkUninstall runs `helm uninstall --wait`, then lists every kind of namespaced object in the namespace:
// what is left must be what the chart documents it keeps (NOTES.txt and the chart README, "Uninstalling":
// the bundled Postgres' volume claim and its Secret, which must be there, and the last helm test pod and
// its NetworkPolicy). Kubernetes' own objects of any namespace (the default ServiceAccount,
// kube-root-ca.crt, Events) are not the chart's.
func checkUninstall(ctx context.Context, c *cluster) error {
	if _, err := c.helm(ctx, "uninstall", c.o.release, "--wait", "--timeout", "3m"); err != nil {
		return err
	}
	// kept: must stay. mayStay: stays if helm test ran (Helm never deletes a test hook, and the chart keeps
	// its pod and NetworkPolicy for `helm test --logs`).
	kept := map[string]bool{
		"PersistentVolumeClaim/data-" + c.postgresName() + "-0": true,
		"Secret/" + c.postgresName():                            true,
	}
	mayStay := map[string]bool{
		"Pod/" + c.fullname() + "-test":           true,
		"NetworkPolicy/" + c.fullname() + "-test": true,
	}
	var left []string
	err := waitFor(ctx, 2*time.Minute, "only the documented objects left", func() (bool, error) {
		var err error
		if left, err = c.namespaceObjects(ctx); err != nil {
			return false, err
		}
		extra := slices.DeleteFunc(slices.Clone(left), func(o string) bool { return kept[o] || mayStay[o] })
		if len(extra) > 0 {
			return false, fmt.Errorf("left behind: %s", strings.Join(extra, ", "))
		}
		return true, nil
	})
	logf("left in namespace %s: %s", c.o.namespace, strings.Join(left, ", "))
	var ps []string
	if err != nil {
		ps = append(ps, err.Error())
	}
	for o := range kept {
		if !slices.Contains(left, o) {
			ps = append(ps, fmt.Sprintf("%s is gone: the chart documents that uninstall keeps it", o))
		}
	}
	return problems(ps)
}

// namespaceObjects lists, as Kind/name, every object in the namespace of every kind that can be listed,
// less those Kubernetes puts in any namespace.
func (c *cluster) namespaceObjects(ctx context.Context) ([]string, error) {
	disc, ok := c.cs.Discovery().(*discovery.DiscoveryClient)
	if !ok {
		return nil, fmt.Errorf("no discovery client")
	}
	lists, err := disc.ServerPreferredNamespacedResources()
	if err != nil {
		return nil, err
	}
	var out []string
	for _, l := range lists {
		gv, err := schema.ParseGroupVersion(l.GroupVersion)
		if err != nil {
			return nil, err
		}
		for _, r := range l.APIResources {
			if !slices.Contains(r.Verbs, "list") || strings.Contains(r.Name, "/") || r.Kind == "Event" {
				continue
			}
			objs, err := c.dyn.Resource(gv.WithResource(r.Name)).Namespace(c.o.namespace).List(ctx, metav1.ListOptions{})
			if err != nil {
				return nil, fmt.Errorf("list %s: %w", r.Name, err)
			}
			for _, o := range objs.Items {
				name := r.Kind + "/" + o.GetName()
				if name == "ServiceAccount/default" || name == "ConfigMap/kube-root-ca.crt" {
					continue
				}
				out = append(out, name)
			}
		}
	}
	slices.Sort(out)
	return out, nil
}
