// Command coredns is CoreDNS with only the plugins the cluster of hack/cluster/up.sh needs, and no way to
// ask anyone else: the forward plugin (and every other plugin that talks to upstream servers) is not even
// linked in, so no query can leave the machine whatever the Corefile says.
//
// Upstream's main imports github.com/coredns/coredns/core/plugin, which links every plugin; this one
// imports the chosen few and tells the server their execution order (plugin.cfg's order, minus the rest).
package main

import (
	"fmt"
	"os"

	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/coremain"
	_ "github.com/coredns/coredns/plugin/bind"        // listen on the bridge address only
	_ "github.com/coredns/coredns/plugin/cache"       // answer repeats from memory
	_ "github.com/coredns/coredns/plugin/errors"      // log errors
	_ "github.com/coredns/coredns/plugin/health"      // /health for up.sh
	_ "github.com/coredns/coredns/plugin/kubernetes"  // cluster.local from the API's Services and EndpointSlices
	_ "github.com/coredns/coredns/plugin/loadbalance" // shuffle A records
	_ "github.com/coredns/coredns/plugin/log"         // query log
	_ "github.com/coredns/coredns/plugin/loop"        // stop on a forwarding loop (kept from the stock Corefile)
	_ "github.com/coredns/coredns/plugin/ready"       // /ready once the kubernetes plugin has synced
	_ "github.com/coredns/coredns/plugin/reload"      // re-read the Corefile when it changes
)

// directives is plugin.cfg's execution order, restricted to the plugins imported above.
var directives = []string{
	"reload", "bind", "ready", "health", "errors", "log", "loadbalance", "cache", "kubernetes", "loop",
}

func main() {
	if err := dnsserver.SetDirectives(directives); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	coremain.Run()
}
