package ingest_test

import (
	"os"
	"testing"
	"time"

	"github.com/kvhygiene/kvh/ingest"
	"github.com/kvhygiene/kvh/policy"
	"github.com/kvhygiene/kvh/wire"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sys/unix"
)

// fullPacket is wire.MaxBatch records: allocations of 256 bytes and their
// verified-off frees, in pairs.
func fullPacket() []byte {
	var b []byte
	for i := 0; i < wire.MaxBatch/2; i++ {
		b = append(b, wire.Record{Type: wire.Alloc, Seq: uint64(2*i + 2), Ptr: uint64(0x1000 * (i + 1)), Bytes: 256}.Encode()...)
		b = append(b, wire.Record{Type: wire.Free, Seq: uint64(2*i + 3), Ptr: uint64(0x1000 * (i + 1)), Bytes: 256, Zeroed: 256}.Encode()...)
	}
	return b
}

// manyConns opens n raw connections to sock, each sending a HELLO and a
// full packet; the caller closes the descriptors.
func manyConns(tb testing.TB, sock string, n int) []int {
	tb.Helper()
	full := fullPacket()
	hello := wire.Record{Type: wire.Hello, Seq: 1, PID: uint32(os.Getpid())}.Encode()
	fds := make([]int, 0, n)
	for i := 0; i < n; i++ {
		fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			tb.Fatal(err)
		}
		fds = append(fds, fd)
		if err := unix.Connect(fd, &unix.SockaddrUnix{Name: sock}); err != nil {
			tb.Fatal(err)
		}
		if _, err := unix.Write(fd, hello); err != nil {
			tb.Fatal(err)
		}
		if _, err := unix.Write(fd, full); err != nil {
			tb.Fatal(err)
		}
	}
	return fds
}

// connsHarness is a server that lets this process hold n connections, its
// small buffers counted in windows.
func connsHarness(tb testing.TB, n int) (*harness, *ingest.Metrics) {
	pol := policy.Default()
	pol.MaxEventRate = 1e9
	pol.VerifyMode = "off"
	pol.TrailEventMinBytes = 65536 // counted in windows: the trail's queue is not the connections'
	m := ingest.NewMetrics(prometheus.NewRegistry())
	return newHarness(tb, pol, ingest.Config{Metrics: m, MaxConns: n, MaxConnsPerUID: n, MaxConnsPerProcess: n}), m
}

func waitEvents(tb testing.TB, m *ingest.Metrics, want float64) {
	tb.Helper()
	for i := 0; i < 800 && counterValue(m.Events) < want; i++ {
		time.Sleep(25 * time.Millisecond)
	}
	if got := counterValue(m.Events); got < want {
		tb.Fatalf("the agent received %.0f of %.0f records", got, want)
	}
}

// More connections than packet slots send at once: every record is
// handled, and the server closes while handlers wait for slots. A handler
// that waited for a slot while holding its connection's descriptor made
// Close (which closes each connection under the server's lock) wait for
// it, and it for a slot held by a handler waiting for that lock.
func TestMoreSendersThanPacketSlots(t *testing.T) {
	const n = 600 // packet slots: 256
	done := make(chan struct{})
	t.Cleanup(func() { close(done) }) // runs last: after the server's Close
	h, m := connsHarness(t, n)
	t.Cleanup(func() {
		go func() {
			select {
			case <-done:
			case <-time.After(30 * time.Second):
				panic("the server's Close did not return in 30 s with handlers waiting for packet slots")
			}
		}()
	})
	fds := manyConns(t, h.sock, n)
	defer func() {
		for _, fd := range fds {
			unix.Close(fd)
		}
	}()
	waitEvents(t, m, float64(n*(wire.MaxBatch+1)))
	// Again, and close the server while they are being handled.
	full := fullPacket()
	for _, fd := range fds {
		unix.Write(fd, full)
	}
}
