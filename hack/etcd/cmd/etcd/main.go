// Command etcd is the upstream etcd server (go.etcd.io/etcd/server/v3/etcdmain),
// built at a pinned version as the storage of pullhealth's local control plane.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
