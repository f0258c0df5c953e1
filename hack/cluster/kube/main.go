// Command kube is every Kubernetes program hack/cluster/up.sh runs, linked once: kube-apiserver,
// kube-controller-manager, kube-scheduler, kubelet, kube-proxy and kubectl. It picks the program by the
// name it was started as (up.sh makes a symlink per program), or by its first argument:
//
//	kube-apiserver --etcd-servers=...        (through a symlink named kube-apiserver)
//	kube kubelet --config=...                (the same, spelled out)
//
// Why one binary: the six share most of their code (client-go, apiserver, the API types), so a single link
// saves five links of a ~100 MB program on a 2-core machine, and the cache holds one file instead of six.
// Each branch is what the program's own main in k8s.io/kubernetes/cmd/<name> does; the blank imports are
// the union of theirs.
package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	_ "time/tzdata" // for CronJob time zones (kube-apiserver, kube-controller-manager)

	"github.com/spf13/cobra"
	_ "k8s.io/client-go/plugin/pkg/client/auth" // kubectl's client auth plugins
	"k8s.io/component-base/cli"
	"k8s.io/component-base/logs"
	_ "k8s.io/component-base/logs/json/register"          // JSON log format
	_ "k8s.io/component-base/metrics/prometheus/clientgo" // client-go metrics
	_ "k8s.io/component-base/metrics/prometheus/version"  // version metric
	kubectl "k8s.io/kubectl/pkg/cmd"
	kubectlutil "k8s.io/kubectl/pkg/cmd/util"
	apiserver "k8s.io/kubernetes/cmd/kube-apiserver/app"
	controllermanager "k8s.io/kubernetes/cmd/kube-controller-manager/app"
	proxy "k8s.io/kubernetes/cmd/kube-proxy/app"
	scheduler "k8s.io/kubernetes/cmd/kube-scheduler/app"
	kubelet "k8s.io/kubernetes/cmd/kubelet/app"
)

// servers are the long-running programs: each a cobra command run by cli.Run, as in their mains.
var servers = map[string]func() *cobra.Command{
	"kube-apiserver":          apiserver.NewAPIServerCommand,
	"kube-controller-manager": controllermanager.NewControllerManagerCommand,
	"kube-scheduler":          func() *cobra.Command { return scheduler.NewSchedulerCommand() },
	"kube-proxy":              proxy.NewProxyCommand,
	"kubelet":                 func() *cobra.Command { return kubelet.NewKubeletCommand(context.Background()) },
}

func main() {
	name := filepath.Base(os.Args[0])
	if _, ok := servers[name]; !ok && name != "kubectl" && len(os.Args) > 1 {
		// Called as `kube NAME ARGS...`: drop our own name so the program sees the argv it expects.
		name = os.Args[1]
		os.Args = os.Args[1:]
	}
	if name == "kubectl" {
		runKubectl()
		return
	}
	newCommand, ok := servers[name]
	if !ok {
		names := []string{"kubectl"}
		for n := range servers {
			names = append(names, n)
		}
		sort.Strings(names)
		fmt.Fprintf(os.Stderr, "usage: kube PROGRAM [ARGS...] (or a symlink named PROGRAM); PROGRAM is one of %v\n", names)
		os.Exit(2)
	}
	os.Exit(cli.Run(newCommand()))
}

// runKubectl is k8s.io/kubernetes/cmd/kubectl's main: the verbosity is parsed first so that klog works
// while the command is built (plugins, .kuberc).
func runKubectl() {
	logs.GlogSetter(kubectl.GetLogVerbosity(os.Args)) //nolint:errcheck // as upstream: best effort
	command := kubectl.NewDefaultKubectlCommand()
	if err := cli.RunNoErrOutput(command); err != nil {
		kubectlutil.CheckErr(err)
	}
}
