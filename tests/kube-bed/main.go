// kube-bed is keyhole's test control plane: one binary that links the upstream
// etcd server, kube-apiserver and kube-controller-manager, so their shared
// packages compile once. Pick the program with the first argument:
//
//	kube-bed etcd ...                    (go.etcd.io/etcd/server/v3/etcdmain)
//	kube-bed kube-apiserver ...          (k8s.io/kubernetes/cmd/kube-apiserver/app)
//	kube-bed kube-controller-manager ... (k8s.io/kubernetes/cmd/kube-controller-manager/app)
//	kube-bed kube-scheduler ...          (k8s.io/kubernetes/cmd/kube-scheduler/app)
//	kube-bed kubelet ...                 (k8s.io/kubernetes/cmd/kubelet/app)
//	kube-bed version
package main

import (
	"context"
	"fmt"
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
	"k8s.io/component-base/cli"
	_ "k8s.io/component-base/logs/json/register"
	_ "k8s.io/component-base/metrics/prometheus/clientgo"
	_ "k8s.io/component-base/metrics/prometheus/version"
	apiserver "k8s.io/kubernetes/cmd/kube-apiserver/app"
	kcm "k8s.io/kubernetes/cmd/kube-controller-manager/app"
	scheduler "k8s.io/kubernetes/cmd/kube-scheduler/app"
	kubelet "k8s.io/kubernetes/cmd/kubelet/app"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: kube-bed etcd|kube-apiserver|kube-controller-manager|kube-scheduler|kubelet|version [flags]")
		os.Exit(2)
	}
	prog, rest := os.Args[1], os.Args[2:]
	switch prog {
	case "etcd":
		etcdmain.Main(append([]string{"etcd"}, rest...))
	case "kube-apiserver":
		cmd := apiserver.NewAPIServerCommand()
		cmd.SetArgs(rest)
		os.Exit(cli.Run(cmd))
	case "kube-controller-manager":
		cmd := kcm.NewControllerManagerCommand()
		cmd.SetArgs(rest)
		os.Exit(cli.Run(cmd))
	case "kube-scheduler":
		cmd := scheduler.NewSchedulerCommand()
		cmd.SetArgs(rest)
		os.Exit(cli.Run(cmd))
	case "kubelet":
		cmd := kubelet.NewKubeletCommand(context.Background())
		cmd.SetArgs(rest)
		os.Exit(cli.Run(cmd))
	case "version":
		cmd := apiserver.NewAPIServerCommand()
		cmd.SetArgs([]string{"--version"})
		os.Exit(cli.Run(cmd))
	default:
		fmt.Fprintf(os.Stderr, "kube-bed: unknown program %q\n", prog)
		os.Exit(2)
	}
}
