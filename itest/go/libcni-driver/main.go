// libcni-driver drives a CNI network configuration list through libcni, the
// library container runtimes (containerd, CRI-O, podman) use to invoke CNI
// plugins, so that a plugin's results are parsed and validated by the same
// code a runtime runs.
//
// Usage:
//
//	libcni-driver -conflist F -plugin-dir D -cache-dir C [-netns P] [-container ID] [-ifname eth0] ACTION
//
// ACTION is add, check, del, version or validate. It prints one JSON object
// on stdout: {"action", "ok", "error", ...} and exits 0 when ok, 1 when
// libcni returned an error, 2 on bad usage. It is built offline against
// Debian's golang-github-appc-cni-dev (libcni 1.1.2, which predates the GC
// and STATUS verbs of CNI 1.1.0).
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"time"

	"github.com/containernetworking/cni/libcni"
	types100 "github.com/containernetworking/cni/pkg/types/100"
)

type report struct {
	Action string `json:"action"`
	OK     bool   `json:"ok"`
	Error  string `json:"error,omitempty"`
	// Result as libcni parsed it, in the configuration's cniVersion.
	Result interface{} `json:"result,omitempty"`
	// The same result converted by libcni to its current version (1.0.0).
	Current *types100.Result `json:"current,omitempty"`
	// For version: what the plugin said it supports.
	SupportedVersions []string `json:"supportedVersions,omitempty"`
	// For validate: the capabilities the configuration enables.
	Capabilities []string `json:"capabilities,omitempty"`
	// The cniVersion and name of the loaded configuration list.
	CNIVersion string `json:"cniVersion"`
	Network    string `json:"network"`
}

func main() {
	conflist := flag.String("conflist", "", "network configuration list file")
	pluginDir := flag.String("plugin-dir", "", "directory holding the plugin binaries (CNI_PATH)")
	cacheDir := flag.String("cache-dir", "", "libcni result cache directory (never the machine's /var/lib/cni)")
	netns := flag.String("netns", "", "CNI_NETNS")
	container := flag.String("container", "", "CNI_CONTAINERID")
	ifname := flag.String("ifname", "eth0", "CNI_IFNAME")
	timeout := flag.Duration("timeout", 60*time.Second, "bound on the whole action")
	flag.Parse()
	if flag.NArg() != 1 || *conflist == "" || *pluginDir == "" || *cacheDir == "" {
		fmt.Fprintln(os.Stderr, "usage: libcni-driver -conflist F -plugin-dir D -cache-dir C [-netns P] [-container ID] [-ifname N] add|check|del|version|validate")
		os.Exit(2)
	}
	action := flag.Arg(0)

	list, err := libcni.ConfListFromFile(*conflist)
	if err != nil {
		emit(report{Action: action, Error: fmt.Sprintf("load %s: %v", *conflist, err)})
	}
	rep := report{Action: action, CNIVersion: list.CNIVersion, Network: list.Name}
	cni := libcni.NewCNIConfigWithCacheDir([]string{*pluginDir}, *cacheDir, nil)
	rt := &libcni.RuntimeConf{
		ContainerID: *container,
		NetNS:       *netns,
		IfName:      *ifname,
		Args:        [][2]string{{"IgnoreUnknown", "1"}},
	}
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()

	switch action {
	case "add":
		res, err := cni.AddNetworkList(ctx, list, rt)
		if err != nil {
			rep.Error = err.Error()
			break
		}
		rep.Result = res
		cur, err := types100.NewResultFromResult(res)
		if err != nil {
			rep.Error = fmt.Sprintf("convert result to %s: %v", types100.ImplementedSpecVersion, err)
			break
		}
		rep.Current = cur
		rep.OK = true
	case "check":
		err = cni.CheckNetworkList(ctx, list, rt)
		rep.OK = err == nil
	case "del":
		err = cni.DelNetworkList(ctx, list, rt)
		rep.OK = err == nil
	case "version":
		if len(list.Plugins) == 0 {
			rep.Error = "configuration list has no plugins"
			break
		}
		info, err := cni.GetVersionInfo(ctx, list.Plugins[0].Network.Type)
		if err != nil {
			rep.Error = err.Error()
			break
		}
		rep.SupportedVersions = info.SupportedVersions()
		rep.OK = true
	case "validate":
		caps, err := cni.ValidateNetworkList(ctx, list)
		if err != nil {
			rep.Error = err.Error()
			break
		}
		rep.Capabilities = caps
		rep.OK = true
	default:
		fmt.Fprintf(os.Stderr, "unknown action %q\n", action)
		os.Exit(2)
	}
	if err != nil && rep.Error == "" {
		rep.Error = err.Error()
	}
	emit(rep)
}

func emit(rep report) {
	out, err := json.Marshal(rep)
	if err != nil {
		fmt.Fprintf(os.Stderr, "marshal report: %v\n", err)
		os.Exit(2)
	}
	fmt.Println(string(out))
	if !rep.OK {
		os.Exit(1)
	}
	os.Exit(0)
}
