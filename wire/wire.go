// Package wire is the Go mirror of interpose/include/kvh_wire.h: the
// fixed-layout records libkvh.so sends to the agent over SOCK_SEQPACKET, and
// the control messages the agent sends back (deny, allow, a verify floor). The C header is the source of
// truth; golden bytes produced by the C side pin this mirror.
//
// Decoding never panics: a packet of the wrong size, an unknown type or a bad
// magic is an error. Nothing here is trusted for identity — pid, tenant and
// request are the client's claims.
package wire

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"unicode/utf8"
)

// Sizes and limits from kvh_wire.h.
const (
	Magic       = 0x3148564b
	Version     = 1
	RecordSize  = 160
	ControlSize = 16
	// MaxBatch is the most records a packet carries (the agent's read
	// buffer); BaseBatch the most an interposer sends before the agent's
	// Floor tells it MaxBatch (what every agent takes, the one before
	// the field too).
	MaxBatch  = 128
	BaseBatch = 32

	// CountersMagic and CountersSize are struct kvh_counters': the
	// process's event account, in a sealed memfd passed with the HELLO.
	CountersMagic = 0x3143564b
	CountersSize  = 64
)

// Record types.
const (
	Hello      = 1
	Alloc      = 2
	Free       = 3
	Quarantine = 4
	Drops      = 5
	// FloorAck says the interposer applied a floor: Verify, Flags
	// (FlagDoublePass) and Count (samples) are its settings now.
	FloorAck = 6
)

// Memory kinds.
const (
	MemDevice         = 1
	MemAsync          = 2
	MemManaged        = 3
	MemHostPinned     = 4
	MemHostRegistered = 5
	MemVMM            = 6
	MemIPCImport      = 7
)

// Results.
const (
	ResOK            = 0
	ResZeroizeFailed = 1
	ResVerifyFailed  = 2
	ResPassthrough   = 3
)

// Flags.
const (
	FlagDoublePass = 1 << 0
	FlagImporter   = 1 << 1 // not the process's driver memory (an import, registered host memory): never zeroized
	FlagAsync      = 1 << 2
	FlagEnforce    = 1 << 3
	FlagVerified   = 1 << 4
)

// Verify modes.
const (
	VerifyOff    = 0
	VerifySample = 1
	VerifyFull   = 2
)

// Control types.
const (
	CtlDeny  = 1 // refuse new allocations
	CtlAllow = 2 // allow them again
	CtlFloor = 3 // verify at least this strictly (see Floor)
)

// Record is struct kvh_record.
type Record struct {
	Type     uint16
	Seq      uint64
	TSNanos  uint64
	Ptr      uint64
	Bytes    uint64
	Zeroed   uint64
	DurNanos uint64
	Seed     uint64
	Stream   uint64
	Count    uint64
	PID      uint32 // claimed
	TID      uint32
	Fn       uint16
	MemKind  uint8
	Verify   uint8
	Result   uint8
	Flags    uint8
	Device   int32
	Tenant   string // claimed
	Request  string // claimed
}

// Errors.
var (
	ErrSize    = errors.New("packet size is not a whole number of records")
	ErrMagic   = errors.New("bad magic or version")
	ErrType    = errors.New("unknown record type")
	ErrTooMany = errors.New("more records than a packet may hold")
	ErrField   = errors.New("field out of range")
)

var le = binary.LittleEndian

// Decode parses one packet into its records.
func Decode(b []byte) ([]Record, error) {
	var d Decoder
	return d.Decode(b)
}

// Decoder decodes a connection's packets, reusing its record slice and the
// strings of the tenant and request it saw last (a client sends the same
// ones in packet after packet: decoding them afresh was two allocations a
// record). The records a Decode returns are valid until the next Decode.
type Decoder struct {
	recs            []Record
	tenant, request string
}

// Decode parses one packet into its records.
func (d *Decoder) Decode(b []byte) ([]Record, error) {
	recs, err := d.DecodeInto(d.recs, b)
	if err == nil {
		d.recs = recs
	}
	return recs, err
}

// DecodeInto is Decode into recs[:0] instead of the Decoder's own slice:
// for a caller that pools record slices across connections while each
// connection keeps its Decoder (and so its strings).
func (d *Decoder) DecodeInto(recs []Record, b []byte) ([]Record, error) {
	if len(b) == 0 || len(b)%RecordSize != 0 {
		return nil, fmt.Errorf("%w: %d bytes", ErrSize, len(b))
	}
	if len(b)/RecordSize > MaxBatch {
		return nil, fmt.Errorf("%w: %d", ErrTooMany, len(b)/RecordSize)
	}
	recs = recs[:0]
	for off := 0; off < len(b); off += RecordSize {
		recs = append(recs, Record{})
		if err := d.decodeOne(&recs[len(recs)-1], b[off:off+RecordSize]); err != nil {
			return nil, fmt.Errorf("record %d: %w", off/RecordSize, err)
		}
	}
	return recs, nil
}

func (d *Decoder) decodeOne(r *Record, b []byte) error {
	if le.Uint32(b[0:]) != Magic || le.Uint16(b[4:]) != Version {
		return ErrMagic
	}
	*r = Record{
		Type:     le.Uint16(b[6:]),
		Seq:      le.Uint64(b[8:]),
		TSNanos:  le.Uint64(b[16:]),
		Ptr:      le.Uint64(b[24:]),
		Bytes:    le.Uint64(b[32:]),
		Zeroed:   le.Uint64(b[40:]),
		DurNanos: le.Uint64(b[48:]),
		Seed:     le.Uint64(b[56:]),
		Stream:   le.Uint64(b[64:]),
		Count:    le.Uint64(b[72:]),
		PID:      le.Uint32(b[80:]),
		TID:      le.Uint32(b[84:]),
		Fn:       le.Uint16(b[88:]),
		MemKind:  b[90],
		Verify:   b[91],
		Result:   b[92],
		Flags:    b[93],
		Device:   int32(le.Uint32(b[96:])),
		Tenant:   cstringSeen(b[104:128], &d.tenant),
		Request:  cstringSeen(b[128:152], &d.request),
	}
	if r.Type < Hello || r.Type > FloorAck {
		return fmt.Errorf("%w %d", ErrType, r.Type)
	}
	return nil
}

// cstringSeen is cstring, answered from *last when the field holds exactly
// the printable ASCII of the string decoded last (which it then keeps).
func cstringSeen(b []byte, last *string) string {
	if i := bytes.IndexByte(b, 0); i >= 0 {
		b = b[:i]
	}
	if string(b) == *last { // no allocation: the compiler compares in place
		return *last
	}
	for _, c := range b {
		if c < 0x20 || c >= 0x7f {
			return cstring(b)
		}
	}
	*last = string(b)
	return *last
}

// cstring reads a NUL-padded field as printable UTF-8 (anything else is
// replaced, so a hostile client cannot inject control bytes into logs).
func cstring(b []byte) string {
	if i := bytes.IndexByte(b, 0); i >= 0 {
		b = b[:i]
	}
	s := strings.ToValidUTF8(string(b), "\uFFFD")
	return strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f || r == utf8.RuneError {
			return '?'
		}
		return r
	}, s)
}

// Encode renders r as kvh_record bytes.
func (r Record) Encode() []byte {
	b := make([]byte, RecordSize)
	le.PutUint32(b[0:], Magic)
	le.PutUint16(b[4:], Version)
	le.PutUint16(b[6:], r.Type)
	le.PutUint64(b[8:], r.Seq)
	le.PutUint64(b[16:], r.TSNanos)
	le.PutUint64(b[24:], r.Ptr)
	le.PutUint64(b[32:], r.Bytes)
	le.PutUint64(b[40:], r.Zeroed)
	le.PutUint64(b[48:], r.DurNanos)
	le.PutUint64(b[56:], r.Seed)
	le.PutUint64(b[64:], r.Stream)
	le.PutUint64(b[72:], r.Count)
	le.PutUint32(b[80:], r.PID)
	le.PutUint32(b[84:], r.TID)
	le.PutUint16(b[88:], r.Fn)
	b[90], b[91], b[92], b[93] = r.MemKind, r.Verify, r.Result, r.Flags
	le.PutUint32(b[96:], uint32(r.Device))
	copy(b[104:127], r.Tenant)
	copy(b[128:151], r.Request)
	return b
}

// Control encodes an agent-to-interposer message without arguments
// (CtlDeny, CtlAllow).
func Control(typ uint16) []byte {
	return ControlMsg{Type: typ}.Encode()
}

// Floor encodes a CtlFloor message: the interposer raises its verify mode,
// double pass and sample count to at least these (never lowers them) and
// answers with a FloorAck record. It also tells the interposer that this
// agent takes MaxBatch records a packet.
func Floor(verify uint8, doublePass bool, samples uint16) []byte {
	return ControlMsg{Type: CtlFloor, Verify: verify, DoublePass: doublePass, Samples: samples, MaxBatch: MaxBatch}.Encode()
}

// ControlMsg is struct kvh_control. Verify, DoublePass, Samples and
// MaxBatch are a floor's (zero for the other types); MaxBatch 0 means
// BaseBatch.
type ControlMsg struct {
	Type       uint16
	Verify     uint8
	DoublePass bool
	Samples    uint16
	MaxBatch   uint32
}

// Encode renders m as kvh_control bytes.
func (m ControlMsg) Encode() []byte {
	b := make([]byte, ControlSize)
	le.PutUint32(b[0:], Magic)
	le.PutUint16(b[4:], Version)
	le.PutUint16(b[6:], m.Type)
	b[8] = m.Verify
	if m.DoublePass {
		b[9] = FlagDoublePass
	}
	le.PutUint16(b[10:], m.Samples)
	le.PutUint32(b[12:], m.MaxBatch)
	return b
}

// DecodeControl parses one control message strictly: its size, magic,
// version and type, a floor's verify mode and flags, and zeros wherever the
// type has no field.
func DecodeControl(b []byte) (ControlMsg, error) {
	if len(b) != ControlSize {
		return ControlMsg{}, fmt.Errorf("%w: %d bytes, want %d", ErrSize, len(b), ControlSize)
	}
	if le.Uint32(b[0:]) != Magic || le.Uint16(b[4:]) != Version {
		return ControlMsg{}, ErrMagic
	}
	m := ControlMsg{Type: le.Uint16(b[6:]), Verify: b[8], DoublePass: b[9]&FlagDoublePass != 0, Samples: le.Uint16(b[10:]), MaxBatch: le.Uint32(b[12:])}
	if m.Type < CtlDeny || m.Type > CtlFloor {
		return ControlMsg{}, fmt.Errorf("%w %d", ErrType, m.Type)
	}
	if m.Type != CtlFloor && (b[8] != 0 || b[9] != 0 || m.Samples != 0 || m.MaxBatch != 0) {
		return ControlMsg{}, fmt.Errorf("%w: control type %d has no arguments", ErrField, m.Type)
	}
	if m.MaxBatch > MaxBatch {
		return ControlMsg{}, fmt.Errorf("%w: floor max_batch %d above %d", ErrField, m.MaxBatch, MaxBatch)
	}
	if m.Verify > VerifyFull || b[9]&^FlagDoublePass != 0 {
		return ControlMsg{}, fmt.Errorf("%w: floor verify %d flags %#x", ErrField, m.Verify, b[9])
	}
	return m, nil
}

// Counters is struct kvh_counters.
type Counters struct {
	Emitted uint64 // records given a seq: the last seq
	Dropped uint64 // of those, records lost before reaching the agent
}

// DecodeCounters parses a counters page's first CountersSize bytes.
func DecodeCounters(b []byte) (emitted, dropped uint64, err error) {
	if len(b) < CountersSize {
		return 0, 0, fmt.Errorf("%w: counters page of %d bytes", ErrSize, len(b))
	}
	if le.Uint32(b[0:]) != CountersMagic || le.Uint16(b[4:]) != Version {
		return 0, 0, ErrMagic
	}
	if le.Uint16(b[6:]) != 0 || !allZero(b[24:CountersSize]) {
		return 0, 0, fmt.Errorf("%w: counters page reserved bytes set", ErrField)
	}
	return le.Uint64(b[8:]), le.Uint64(b[16:]), nil
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// Encode renders c as kvh_counters bytes.
func (c Counters) Encode() []byte {
	b := make([]byte, CountersSize)
	le.PutUint32(b[0:], CountersMagic)
	le.PutUint16(b[4:], Version)
	le.PutUint64(b[8:], c.Emitted)
	le.PutUint64(b[16:], c.Dropped)
	return b
}

// FnNames are the hooked functions in hooks.def order; Fn n is FnNames[n-1].
var FnNames = []string{
	"cuMemAlloc_v2", "cuMemAllocManaged", "cuMemAllocPitch_v2", "cuMemFree_v2",
	"cuMemAllocAsync", "cuMemAllocAsync_ptsz", "cuMemAllocFromPoolAsync", "cuMemAllocFromPoolAsync_ptsz",
	"cuMemFreeAsync", "cuMemFreeAsync_ptsz", "cuMemPoolTrimTo", "cuMemPoolDestroy",
	"cuMemHostAlloc", "cuMemAllocHost_v2", "cuMemFreeHost", "cuMemHostRegister_v2", "cuMemHostUnregister",
	"cuMemCreate", "cuMemRelease", "cuMemMap", "cuMemUnmap", "cuMemAddressFree",
	"cuMemImportFromShareableHandle", "cuIpcOpenMemHandle_v2", "cuIpcCloseMemHandle",
	"cuGetProcAddress", "cuGetProcAddress_v2", "cuGetProcAddress_v2_ptsz",
	"cudaGetDriverEntryPoint", "cudaGetDriverEntryPoint_ptsz", "cudaGetDriverEntryPointByVersion", "cudaGetDriverEntryPointByVersion_ptsz",
	"cuMemAlloc", "cuMemAllocPitch", "cuMemFree", "cuMemAllocHost", "cuMemHostRegister", "cuIpcOpenMemHandle",
	"cuCtxDestroy", "cuCtxDestroy_v2", "cuDevicePrimaryCtxRetain", "cuDevicePrimaryCtxRelease", "cuDevicePrimaryCtxRelease_v2",
	"cuDevicePrimaryCtxReset", "cuDevicePrimaryCtxReset_v2",
	"cuGraphAddMemAllocNode", "cuGraphAddMemFreeNode", "cuGraphAddNode",
	"cuCtxAttach", "cuCtxDetach", "cuMemPoolImportPointer", "cuExternalMemoryGetMappedBuffer",
	"cuGraphInstantiate", "cuGraphInstantiate_v2", "cuGraphInstantiateWithFlags", "cuGraphInstantiateWithParams",
	"cuGraphInstantiateWithParams_ptsz", "cuGraphLaunch", "cuGraphLaunch_ptsz", "cuGraphExecDestroy",
}

// FnName names a hook id.
func FnName(fn uint16) string {
	if fn >= 1 && int(fn) <= len(FnNames) {
		return FnNames[fn-1]
	}
	return fmt.Sprintf("fn%d", fn)
}

var kinds = [...]string{"", "device", "async", "managed", "host_pinned", "host_registered", "vmm", "ipc_import"}

// KindName names a memory kind.
func KindName(k uint8) string {
	if int(k) < len(kinds) && k != 0 {
		return kinds[k]
	}
	return fmt.Sprintf("kind%d", k)
}

var verifies = [...]string{"off", "sample", "full"}

// VerifyName names a verify mode.
func VerifyName(v uint8) string {
	if int(v) < len(verifies) {
		return verifies[v]
	}
	return fmt.Sprintf("verify%d", v)
}
