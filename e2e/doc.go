// Package e2e runs kvh on a real containerd (make e2e, which passes -tags
// e2e): containerd and crictl built from the Go module proxy
// (scripts/build-containerd.sh), runc from Debian, an image built here with
// umoci whose program (testdata/workload.c) knows nothing of kvh, and the
// agent with --nri and the eBPF witness. See TestContainerdNRI.
package e2e
