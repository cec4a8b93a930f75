// Command etcd is etcd v3.6 built from the Go module proxy for the devstack
// rig (devstack/services/kube.sh): the same entry point as etcd's own main.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
