// The rig's cluster DNS (devstack/services/node.sh): CoreDNS with only the plugins its Corefile
// uses, so Service names resolve in pods. CoreDNS's own main imports every plugin (cloud DNS
// SDKs among them); importing these few keeps the build small.
package main

import (
	_ "github.com/coredns/coredns/plugin/bind"
	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/ready"
	_ "github.com/coredns/coredns/plugin/template"

	"github.com/coredns/coredns/coremain"
)

func main() { coremain.Run() }
