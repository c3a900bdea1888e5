//go:build !(linux && (amd64 || arm64))

package bpf

import (
	"errors"
	"time"

	"github.com/hashicorp/go-hclog"
)

// Event is one witnessed call.
type Event struct {
	TGID, TID             uint32
	Cgroup, Ptr, Size, TS uint64
	Fn                    string
	Free                  bool
}

// Driver reports whether the event came from the driver library.
func (e Event) Driver() bool { return false }

// Options configure Start.
type Options struct {
	Libraries []string
	ProcRoot  string
	Rescan    time.Duration
	Log       hclog.Logger
}

// ErrUnavailable means the witness cannot run here.
var ErrUnavailable = errors.New("eBPF witness unavailable: built for linux/amd64 and linux/arm64 only")

// Witness is not available on this platform.
type Witness struct{}

// Start always fails here.
func Start(Options) (*Witness, error) { return nil, ErrUnavailable }

func (*Witness) Events() <-chan Event { return nil }
func (*Witness) Attached() []string   { return nil }
func (*Witness) Lost() uint64         { return 0 }
func (*Witness) Close() error         { return nil }
