// Command kube-network-policies runs SIG Network's NetworkPolicy controller
// (sigs.k8s.io/kube-network-policies, pkg/networkpolicy) as a plain host process
// against the local test cluster that hack/cluster/up.sh starts.
//
// The upstream command (cmd/main.go of that module) only runs in a pod: it reads
// rest.InClusterConfig(), stops only on SIGINT, and sleeps instead of waiting for
// its cleanup. This one is the same wiring with three differences, nothing else:
//   - the API server comes from a kubeconfig (-kubeconfig or $KUBECONFIG);
//   - SIGTERM stops it like SIGINT, and it exits once the controller has
//     deleted its nftables table (the controller's own deferred cleanup);
//   - it logs "ready" once the informers have synced and the nfqueue is bound, so
//     hack/cluster/netpol.sh can wait on that (and on whether the controller's
//     own nftables table made it: see netpol.sh for kernels where it cannot);
//   - -namespace can narrow it to one namespace's pods and policies.
//
// -cleanup deletes the table and exits: hack/cluster/netpol.sh stop uses it after a
// crash or SIGKILL so the host is left without the controller's rules.
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/google/nftables"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/klog/v2"
	"sigs.k8s.io/kube-network-policies/pkg/networkpolicy"
)

// tableName is the controller's default table (networkpolicy.Config.Defaults), in
// the inet family; set explicitly so -cleanup and the controller agree.
const tableName = "kube-network-policies"

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "kube-network-policies:", err)
		os.Exit(1)
	}
}

func run() error {
	kubeconfig := flag.String("kubeconfig", os.Getenv("KUBECONFIG"), "kubeconfig of the cluster (default $KUBECONFIG)")
	nodeName := flag.String("hostname-override", "", "name of the Node whose pods this controller guards (required)")
	queueID := flag.Int("nfqueue-id", 100, "number of the nfqueue that the first packet of each connection is sent to")
	failOpen := flag.Bool("fail-open", false, "accept packets while the controller is not running (default: they are dropped)")
	bug1766 := flag.Bool("netfilter-bug-1766-fix", true, "judge DNS packets in PREROUTING (conntrack race fixed in kernels 6.12+)")
	metricsAddr := flag.String("metrics-bind-address", "127.0.0.1:9080", "address of the Prometheus /metrics endpoint")
	namespace := flag.String("namespace", "", "guard only the pods and policies of this namespace (default: all)")
	cleanup := flag.Bool("cleanup", false, "delete the controller's nftables table (if present) and exit")
	klog.InitFlags(nil)
	flag.Parse()

	if *cleanup {
		return deleteTable()
	}
	if *nodeName == "" {
		return errors.New("-hostname-override is required (the cluster's NODE_NAME)")
	}
	if *kubeconfig == "" {
		return errors.New("-kubeconfig or $KUBECONFIG is required")
	}
	if _, _, err := net.SplitHostPort(*metricsAddr); err != nil {
		return fmt.Errorf("parsing -metrics-bind-address: %w", err)
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	config, err := clientcmd.BuildConfigFromFlags("", *kubeconfig)
	if err != nil {
		return fmt.Errorf("loading kubeconfig %s: %w", *kubeconfig, err)
	}
	// As upstream: protobuf for the built-in types.
	config.AcceptContentTypes = "application/vnd.kubernetes.protobuf,application/json"
	config.ContentType = "application/vnd.kubernetes.protobuf"
	clientset, err := kubernetes.NewForConfig(config)
	if err != nil {
		return fmt.Errorf("creating the client: %w", err)
	}
	// -namespace narrows the pod and policy informers (namespaces stay cluster-wide, for namespaceSelector):
	// pods of other namespaces are then never in the controller's sets, their traffic never queued. That is
	// what lets netpol.sh check enforcement beside a cluster someone else is testing.
	factory := informers.NewSharedInformerFactoryWithOptions(clientset, 0, informers.WithNamespace(*namespace))

	cfg := networkpolicy.Config{
		FailOpen:            *failOpen,
		QueueID:             *queueID,
		NodeName:            *nodeName,
		NetfilterBug1766Fix: *bug1766,
		NFTableName:         tableName,
		// NRI stays on, as upstream: without it the controller dereferences a nil
		// plugin for packets from non-pod addresses. With no NRI socket (containerd
		// 1.6 has none) it logs "nri plugin exited" and uses the API server's pod IPs.
	}
	controller, err := networkpolicy.NewController(clientset,
		factory.Networking().V1().NetworkPolicies(),
		factory.Core().V1().Namespaces(),
		factory.Core().V1().Pods(),
		nil, nil, nil, nil, // AdminNetworkPolicy APIs: off
		cfg)
	if err != nil {
		return fmt.Errorf("creating the controller: %w", err)
	}

	metrics := &http.Server{Addr: *metricsAddr, Handler: promhttp.Handler(), ReadHeaderTimeout: 5 * time.Second}
	go func() {
		if err := metrics.ListenAndServe(); err != nil && !errors.Is(err, http.ErrServerClosed) {
			klog.ErrorS(err, "metrics server")
		}
	}()
	defer metrics.Close() //nolint:errcheck // best effort on the way out

	done := make(chan error, 1)
	go func() { done <- controller.Run(ctx) }()
	factory.Start(ctx.Done())

	go func() {
		for typ, ok := range factory.WaitForCacheSync(ctx.Done()) {
			if !ok {
				return // stopping
			}
			klog.V(2).InfoS("informer synced", "type", typ)
		}
		err := wait.PollUntilContextCancel(ctx, 200*time.Millisecond, true, func(context.Context) (bool, error) {
			return queueBound(*queueID), nil
		})
		if err == nil {
			// The table needs the kernel's nft "queue" expression (CONFIG_NFT_QUEUE); without it the
			// controller's rule sync fails and the caller must send packets to the queue itself.
			klog.InfoS("ready: informers synced, nfqueue bound",
				"node", *nodeName, "nfqueue", *queueID, "nftablesTable", tableExists())
		}
	}()

	// Run returns after ctx is cancelled (its deferred cleanup has then deleted the
	// table), or early if it cannot open the nfqueue.
	err = <-done
	factory.Shutdown()
	if err != nil {
		return fmt.Errorf("controller: %w", err)
	}
	klog.InfoS("stopped")
	return nil
}

// tableExists reports whether the controller's inet table is in the host's ruleset.
func tableExists() bool {
	conn, err := nftables.New()
	if err != nil {
		return false
	}
	tables, err := conn.ListTablesOfFamily(nftables.TableFamilyINet)
	if err != nil {
		return false
	}
	for _, t := range tables {
		if t.Name == tableName {
			return true
		}
	}
	return false
}

// queueBound reports whether a process listens on nfqueue id, from
// /proc/net/netfilter/nfnetlink_queue (first column: queue number).
func queueBound(id int) bool {
	f, err := os.Open("/proc/net/netfilter/nfnetlink_queue")
	if err != nil {
		return false
	}
	defer f.Close() //nolint:errcheck // read-only
	s := bufio.NewScanner(f)
	for s.Scan() {
		if fields := strings.Fields(s.Text()); len(fields) > 0 && fields[0] == strconv.Itoa(id) {
			return true
		}
	}
	return false
}

// deleteTable removes the controller's table; absent is not an error.
func deleteTable() error {
	if !tableExists() {
		fmt.Printf("no nftables table inet %s\n", tableName)
		return nil
	}
	conn, err := nftables.New()
	if err != nil {
		return fmt.Errorf("opening nftables: %w", err)
	}
	conn.DelTable(&nftables.Table{Name: tableName, Family: nftables.TableFamilyINet})
	if err := conn.Flush(); err != nil {
		return fmt.Errorf("deleting table inet %s: %w", tableName, err)
	}
	fmt.Printf("deleted nftables table inet %s\n", tableName)
	return nil
}
