// Command kube-apiserver is the upstream API server built from k8s.io/kubernetes,
// used as a real local control plane by pullhealth's e2e tests and dev cluster.
package main

import (
	"os"
	_ "time/tzdata" // upstream imports it for CronJob time zones

	"k8s.io/component-base/cli"
	_ "k8s.io/component-base/logs/json/register"          // JSON log format, as upstream
	_ "k8s.io/component-base/metrics/prometheus/clientgo" // client-go metrics, as upstream
	_ "k8s.io/component-base/metrics/prometheus/version"  // version metric, as upstream
	"k8s.io/kubernetes/cmd/kube-apiserver/app"
)

func main() {
	command := app.NewAPIServerCommand()
	os.Exit(cli.Run(command))
}
