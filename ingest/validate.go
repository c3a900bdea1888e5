package ingest

import (
	"fmt"

	"github.com/kvhygiene/kvh/wire"
)

// Bounds past which a value in a record cannot be true. A record that
// breaks one is refused as malformed and counted; nothing of it reaches a
// histogram or a total.
const (
	maxBytes    = 1 << 50         // 1 PiB: more than any node's memory
	maxDuration = 24 * 3600 * 1e9 // a day, in ns, for one zeroize
	maxDrops    = 1 << 40         // events one interposer could have dropped
)

// validate refuses records whose values are absurd (a 2^63 ns duration, a
// 2^64-1 drop count, a negative size sent as uint64).
func validate(r *wire.Record) error {
	switch {
	case r.Bytes > maxBytes:
		return fmt.Errorf("bytes %d is absurd", r.Bytes)
	case r.Zeroed > r.Bytes && r.Type != wire.Drops && r.Type != wire.Hello:
		return fmt.Errorf("zeroed %d exceeds bytes %d", r.Zeroed, r.Bytes)
	case r.DurNanos > maxDuration:
		return fmt.Errorf("duration %d ns is absurd", r.DurNanos)
	case r.Type == wire.Drops && r.Count > maxDrops:
		return fmt.Errorf("drop count %d is absurd", r.Count)
	case r.Device < -1:
		return fmt.Errorf("device %d is absurd", r.Device)
	}
	return nil
}
