// cri-driver is a minimal Kubernetes CRI client (the calls the kubelet
// makes to start and stop a pod sandbox), so that containerd's CRI plugin
// invokes CNI exactly as it does under Kubernetes. No CRI client (crictl)
// or CRI API package is in Debian 12, so the few CRI v1 messages used are
// encoded by hand with protowire (field numbers from k8s.io/cri-api
// pkg/apis/runtime/v1/api.proto) and sent with Debian's grpc-go.
//
// Usage:
//
//	cri-driver -socket S version
//	cri-driver -socket S -name N -namespace NS -uid U -cgroup-parent P run
//	cri-driver -socket S -id ID status|stop|remove
//
// It prints one JSON object and exits 0, or prints {"error": ...} and exits 1.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"net"
	"os"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/encoding/protowire"
)

const service = "/runtime.v1.RuntimeService/"

// rawCodec sends and receives already-encoded protobuf bytes.
type rawCodec struct{}

func (rawCodec) Name() string { return "proto" }
func (rawCodec) Marshal(v interface{}) ([]byte, error) {
	b, ok := v.(*[]byte)
	if !ok {
		return nil, fmt.Errorf("rawCodec: cannot marshal %T", v)
	}
	return *b, nil
}
func (rawCodec) Unmarshal(data []byte, v interface{}) error {
	b, ok := v.(*[]byte)
	if !ok {
		return fmt.Errorf("rawCodec: cannot unmarshal into %T", v)
	}
	*b = append((*b)[:0], data...)
	return nil
}

func str(b []byte, num protowire.Number, s string) []byte {
	if s == "" {
		return b
	}
	b = protowire.AppendTag(b, num, protowire.BytesType)
	return protowire.AppendString(b, s)
}

func msg(b []byte, num protowire.Number, m []byte) []byte {
	b = protowire.AppendTag(b, num, protowire.BytesType)
	return protowire.AppendBytes(b, m)
}

func varint(b []byte, num protowire.Number, v uint64) []byte {
	b = protowire.AppendTag(b, num, protowire.VarintType)
	return protowire.AppendVarint(b, v)
}

// fields decodes one message level: field number -> values (bytes for
// length-delimited fields, uint64 for varints).
type fields map[protowire.Number][]interface{}

func decode(b []byte) (fields, error) {
	f := fields{}
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return nil, protowire.ParseError(n)
		}
		b = b[n:]
		switch typ {
		case protowire.VarintType:
			v, m := protowire.ConsumeVarint(b)
			if m < 0 {
				return nil, protowire.ParseError(m)
			}
			f[num] = append(f[num], v)
			b = b[m:]
		case protowire.BytesType:
			v, m := protowire.ConsumeBytes(b)
			if m < 0 {
				return nil, protowire.ParseError(m)
			}
			f[num] = append(f[num], v)
			b = b[m:]
		default:
			m := protowire.ConsumeFieldValue(num, typ, b)
			if m < 0 {
				return nil, protowire.ParseError(m)
			}
			b = b[m:]
		}
	}
	return f, nil
}

func (f fields) str(num protowire.Number) string {
	if v, ok := f[num]; ok {
		if b, ok := v[0].([]byte); ok {
			return string(b)
		}
	}
	return ""
}

func (f fields) sub(num protowire.Number) fields {
	if v, ok := f[num]; ok {
		if b, ok := v[0].([]byte); ok {
			if s, err := decode(b); err == nil {
				return s
			}
		}
	}
	return fields{}
}

func (f fields) uint(num protowire.Number) uint64 {
	if v, ok := f[num]; ok {
		if u, ok := v[0].(uint64); ok {
			return u
		}
	}
	return 0
}

func fail(err error) {
	out, _ := json.Marshal(map[string]string{"error": err.Error()})
	fmt.Println(string(out))
	os.Exit(1)
}

func main() {
	socket := flag.String("socket", "", "containerd's gRPC socket")
	id := flag.String("id", "", "pod sandbox id")
	name := flag.String("name", "", "pod name")
	namespace := flag.String("namespace", "default", "pod namespace")
	uid := flag.String("uid", "", "pod uid")
	cgroupParent := flag.String("cgroup-parent", "", "cgroup parent of the sandbox")
	timeout := flag.Duration("timeout", 90*time.Second, "bound on the whole call")
	flag.Parse()
	if flag.NArg() != 1 || *socket == "" {
		fmt.Fprintln(os.Stderr, "usage: cri-driver -socket S [-id ID] [-name N -namespace NS -uid U -cgroup-parent P] version|run|status|stop|remove")
		os.Exit(2)
	}
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	conn, err := grpc.DialContext(ctx, *socket, grpc.WithInsecure(), grpc.WithBlock(),
		grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", addr)
		}))
	if err != nil {
		fail(fmt.Errorf("connect %s: %w", *socket, err))
	}
	defer conn.Close()
	call := func(method string, req []byte) fields {
		var resp []byte
		if err := conn.Invoke(ctx, service+method, &req, &resp, grpc.ForceCodec(rawCodec{})); err != nil {
			fail(fmt.Errorf("%s: %w", method, err))
		}
		f, err := decode(resp)
		if err != nil {
			fail(fmt.Errorf("%s: decode response: %w", method, err))
		}
		return f
	}
	out := map[string]interface{}{}
	switch flag.Arg(0) {
	case "version":
		// VersionRequest{version=1}; VersionResponse{version=1, runtime_name=2,
		// runtime_version=3, runtime_api_version=4}.
		f := call("Version", str(nil, 1, "v1"))
		out["version"] = f.str(1)
		out["runtimeName"] = f.str(2)
		out["runtimeVersion"] = f.str(3)
		out["runtimeApiVersion"] = f.str(4)
	case "run":
		// PodSandboxMetadata{name=1, uid=2, namespace=3, attempt=4}.
		meta := str(str(str(nil, 1, *name), 2, *uid), 3, *namespace)
		// LinuxPodSandboxConfig{cgroup_parent=1}.
		linux := str(nil, 1, *cgroupParent)
		// PodSandboxConfig{metadata=1, hostname=2, linux=8}.
		config := msg(str(msg(nil, 1, meta), 2, *name), 8, linux)
		// RunPodSandboxRequest{config=1}; RunPodSandboxResponse{pod_sandbox_id=1}.
		f := call("RunPodSandbox", msg(nil, 1, config))
		out["podSandboxId"] = f.str(1)
	case "status":
		// PodSandboxStatusRequest{pod_sandbox_id=1, verbose=2}.
		f := call("PodSandboxStatus", varint(str(nil, 1, *id), 2, 1))
		// PodSandboxStatusResponse{status=1, info=2 (map<string,string>)};
		// PodSandboxStatus{id=1, state=3, network=5};
		// PodSandboxNetworkStatus{ip=1, additional_ips=2 (repeated PodIP{ip=1})}.
		st := f.sub(1)
		out["id"] = st.str(1)
		if st.uint(3) == 0 {
			out["state"] = "SANDBOX_READY"
		} else {
			out["state"] = "SANDBOX_NOTREADY"
		}
		network := st.sub(5)
		out["ip"] = network.str(1)
		additional := []string{}
		for _, e := range network[2] {
			b, _ := e.([]byte)
			podIP, err := decode(b)
			if err != nil {
				fail(fmt.Errorf("PodSandboxStatus: decode additional_ips: %w", err))
			}
			additional = append(additional, podIP.str(1))
		}
		out["additionalIps"] = additional
		info := map[string]interface{}{}
		for _, e := range f[2] {
			b, _ := e.([]byte)
			kv, err := decode(b)
			if err != nil {
				continue
			}
			var v interface{}
			if json.Unmarshal([]byte(kv.str(2)), &v) != nil {
				v = kv.str(2)
			}
			info[kv.str(1)] = v
		}
		out["info"] = info
	case "stop":
		// StopPodSandboxRequest{pod_sandbox_id=1}.
		call("StopPodSandbox", str(nil, 1, *id))
	case "remove":
		// RemovePodSandboxRequest{pod_sandbox_id=1}.
		call("RemovePodSandbox", str(nil, 1, *id))
	default:
		fmt.Fprintf(os.Stderr, "unknown action %q\n", flag.Arg(0))
		os.Exit(2)
	}
	b, err := json.Marshal(out)
	if err != nil {
		fail(err)
	}
	fmt.Println(string(b))
}
