package trailevent

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"

	"github.com/kvhygiene/kvh/forensic"
)

// Kind is one event name, the Go type of its body, and what it means.
type Kind struct {
	Name string
	Type reflect.Type
	Doc  string
}

func kind[T any](name, doc string) Kind {
	return Kind{Name: name, Type: reflect.TypeFor[T](), Doc: doc}
}

// Kinds lists every event the agent and the ledger write, in the order the
// schema documents them.
func Kinds() []Kind {
	return []Kind{
		kind[AgentStart](EvAgentStart, "The agent started; opens every run."),
		kind[Policy](EvPolicy, "The full effective policy, at start and on every reload."),
		kind[Posture](EvPosture, "The node's posture: driver scrub-on-free, GPUs, MIG, the witness."),
		kind[ProcessConnected](EvProcessConnected, "An interposer connected and said hello."),
		kind[ProcessDisconnected](EvProcessDisconnected, "An interposer's connection ended; its open buffers are retired."),
		kind[InterposerDrops](EvInterposerDrops, "An interposer reports events it could not deliver: an evidence gap, not a violation."),
		kind[Buffer](EvAllocate, "A buffer was allocated (or a remote allocation registered)."),
		kind[Buffer](EvBind, "A buffer was bound to a stream."),
		kind[Buffer](EvWrite, "A buffer was written (first use; resets coverage)."),
		kind[Buffer](EvReuse, "A sanitized buffer was handed to a new request."),
		kind[Buffer](EvQuarantine, "A buffer was quarantined (sticky until a passing sanitize and a release)."),
		kind[Buffer](EvSanitize, "A local buffer was zeroized and verified."),
		kind[Buffer](EvSanitizeStart, "An asynchronous sanitize began."),
		kind[Buffer](EvSanitizeEnd, "An asynchronous sanitize ended."),
		kind[Buffer](EvAttest, "An interposer attested a remote buffer's zeroize and verify."),
		kind[Buffer](EvDoubleFree, "A handle was freed twice."),
		kind[Buffer](EvFree, "A buffer was freed after a sanitize that met the threshold."),
		kind[Buffer](EvRelease, "A quarantined buffer was released after a fresh passing sanitize."),
		kind[Buffer](EvRetire, "A buffer left the ledger without a free (its process exited, or its address was reallocated)."),
		kind[Anomaly](EvAnomaly, "A sanitize duration or buffer size far from the tenant's mean."),
		kind[Violation](EvViolation, "A hygiene violation, recorded before any action on it."),
		kind[ViolationsOverflow](EvViolationsOverflow, "Violations the agent's queue could not hold: counted, not acted on one by one."),
		kind[Action](EvAction, "An action taken on a violator, and its outcome."),
		kind[OptOut](EvOptOut, "A pod asked not to be injected with libkvh (kvh.io/opt-out); honoured only where the policy's allow_opt_out is on."),
		kind[FloodSummary](EvFloodSummary, "What a process sent past max_event_rate or max_live_buffers in one window, counted exactly."),
		kind[ProcessAccount](EvProcessAccount, "A process's closed event account: emitted = received + dropped + lost, from its interposer's counters page."),
		kind[EventWindow](EvEventWindow, "Routine events of one connection in one window (allocations, small clean frees), summarised exactly with a digest."),
	}
}

// Rekey is the body of a rekey record (record kind "rekey").
type Rekey = forensic.RekeyBody

// RecordKinds lists the trail's own record kinds, which the forensic layer
// writes around the events: their body types where a reader needs them.
func RecordKinds() []Kind {
	return []Kind{
		{Name: forensic.KindSegment, Doc: "First record of every segment: the origin, the segment index, the Merkle frontier of everything before it, the MAC algorithm, and a torn tail of the previous segment when there was one."},
		{Name: forensic.KindEvent, Doc: "An event; its body is one of the events above."},
		{Name: forensic.KindTick, Doc: "Idle heartbeat, so that silence is itself evidence."},
		{Name: forensic.KindClose, Doc: "Last record of a cleanly closed segment."},
		{Name: forensic.KindPrune, Doc: "Authorises the removal of older segments; carries the rekey records they held (`rekeys`), each with the frontier that proves it against its seal."},
		{Name: forensic.KindTamper, Doc: "Opens a log started over a trail found tampered with: what was found, and the evidence files by SHA-256."},
		kind[Rekey](forensic.KindRekey, "Hands the trail to a new signing key and/or MAC key. MAC'd under the old MAC key and sealed by a checkpoint the old key signs (the new key cosigns); every later checkpoint is signed by the new key and every later record MAC'd under the new MAC key. `kvh-verify log` follows these from the key the auditor trusts."),
	}
}

var byName = func() map[string]reflect.Type {
	m := map[string]reflect.Type{}
	for _, k := range Kinds() {
		m[k.Name] = k.Type
	}
	return m
}()

// ErrUnknownEvent is returned for a body whose "ev" this package does not know.
var ErrUnknownEvent = errors.New("unknown trail event")

// Decode returns the event name and a pointer to the typed body (*Buffer,
// *Violation, …). Fields it does not know are ignored (see Version).
func Decode(body []byte) (string, any, error) {
	var head struct {
		Ev *string `json:"ev"`
	}
	if err := json.Unmarshal(body, &head); err != nil {
		return "", nil, fmt.Errorf("trail event: %w", err)
	}
	if head.Ev == nil {
		return "", nil, errors.New("trail event: no \"ev\" field")
	}
	t, ok := byName[*head.Ev]
	if !ok {
		return *head.Ev, nil, fmt.Errorf("%w %q", ErrUnknownEvent, *head.Ev)
	}
	v := reflect.New(t)
	dec := json.NewDecoder(bytes.NewReader(body))
	if err := dec.Decode(v.Interface()); err != nil {
		return *head.Ev, nil, fmt.Errorf("trail event %s: %w", *head.Ev, err)
	}
	return *head.Ev, v.Interface(), nil
}

// Read decodes every event record of the trail in dir, in order, and calls
// fn with its seq, name and typed body. It verifies nothing: run
// forensic.Verify first. An event it cannot decode stops it with an error
// naming the seq.
func Read(dir string, fn func(seq uint64, name string, ev any) error) error {
	return forensic.Events(dir, func(seq uint64, body []byte) error {
		name, ev, err := Decode(body)
		if err != nil {
			return fmt.Errorf("seq %d: %w", seq, err)
		}
		return fn(seq, name, ev)
	})
}
