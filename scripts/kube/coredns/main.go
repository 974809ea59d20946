// CoreDNS with only the plugins scripts/e2e/cluster.sh's Corefile uses (the kubernetes plugin serves the
// cluster.local zone from the API server), so the build pulls no cloud SDKs.
package main

import (
	_ "github.com/coredns/coredns/plugin/bind"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/ready"

	"github.com/coredns/coredns/coremain"
)

func main() { coremain.Run() }
