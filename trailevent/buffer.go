package trailevent

import (
	"encoding/json"
	"math"
	"strconv"
)

// Buffer records one transition of one buffer in the ledger's state machine
// (the event names EvAllocate … EvRetire). It is the trail's hot path: the
// ledger writes several per buffer lifecycle, so it encodes itself
// (AppendBody) to exactly the bytes json.Marshal gives.
type Buffer struct {
	Ev        string   `json:"ev" doc:"the transition: allocate, bind, write, reuse, quarantine, sanitize, sanitize_start, sanitize_end, attest, double_free, free, release or retire"`
	H         uint64   `json:"h,omitempty" doc:"the buffer's handle (never reused)"`
	Kind      string   `json:"buf,omitempty" doc:"local (host memory the ledger zeroizes) or remote (memory in another process, attested by its interposer)"`
	From      string   `json:"from,omitempty" doc:"state before"`
	To        string   `json:"to,omitempty" doc:"state after"`
	Tenant    string   `json:"tenant,omitempty" doc:"tenant, from the kernel-derived identity"`
	Request   string   `json:"request,omitempty" doc:"request tag"`
	Model     string   `json:"model,omitempty" doc:"model tag"`
	Device    string   `json:"device,omitempty" doc:"GPU device ordinal"`
	Framework string   `json:"framework,omitempty" doc:"memory kind or framework (device, host, vmm, ipc, …)"`
	PID       int      `json:"pid,omitempty" doc:"owning process"`
	Stream    string   `json:"stream,omitempty" doc:"stream the buffer is bound to"`
	Claimed   string   `json:"claimed_tenant,omitempty" doc:"a tenant the owner claimed that differs from tenant"`
	Bytes     int64    `json:"bytes,omitempty" doc:"buffer size in bytes"`
	Coverage  *float64 `json:"coverage_pct,omitempty" doc:"percent of the buffer verified zero"`
	Verified  *bool    `json:"verified,omitempty" doc:"a verification ran and passed"`
	Method    string   `json:"method,omitempty" doc:"how it was zeroized and verified, e.g. cuMemFree+full"`
	Seed      uint64   `json:"seed,omitempty" doc:"seed of a sampled verification (reproducible)"`
	DurNS     int64    `json:"duration_ns,omitempty" doc:"zeroize plus verify time"`
	Reuse     int      `json:"reuse_count,omitempty" doc:"times the buffer has been reused"`
	MaxReuse  *int     `json:"max_reuse,omitempty" doc:"the policy's max_reuse for it"`
	Reason    string   `json:"reason,omitempty" doc:"why (quarantine, release, retire)"`
}

// AppendBody encodes r exactly as json.Marshal(r) does, without reflection.
// TestBufferAppendBodyIsMarshal pins it to json.Marshal.
func (r Buffer) AppendBody(b []byte) []byte {
	b = append(b, `{"ev":`...)
	b = appendString(b, r.Ev)
	if r.H != 0 {
		b = append(b, `,"h":`...)
		b = strconv.AppendUint(b, r.H, 10)
	}
	b = optString(b, `,"buf":`, r.Kind)
	b = optString(b, `,"from":`, r.From)
	b = optString(b, `,"to":`, r.To)
	b = optString(b, `,"tenant":`, r.Tenant)
	b = optString(b, `,"request":`, r.Request)
	b = optString(b, `,"model":`, r.Model)
	b = optString(b, `,"device":`, r.Device)
	b = optString(b, `,"framework":`, r.Framework)
	if r.PID != 0 {
		b = append(b, `,"pid":`...)
		b = strconv.AppendInt(b, int64(r.PID), 10)
	}
	b = optString(b, `,"stream":`, r.Stream)
	b = optString(b, `,"claimed_tenant":`, r.Claimed)
	if r.Bytes != 0 {
		b = append(b, `,"bytes":`...)
		b = strconv.AppendInt(b, r.Bytes, 10)
	}
	if r.Coverage != nil {
		b = append(b, `,"coverage_pct":`...)
		b = appendFloat(b, *r.Coverage)
	}
	if r.Verified != nil {
		b = append(b, `,"verified":`...)
		b = strconv.AppendBool(b, *r.Verified)
	}
	b = optString(b, `,"method":`, r.Method)
	if r.Seed != 0 {
		b = append(b, `,"seed":`...)
		b = strconv.AppendUint(b, r.Seed, 10)
	}
	if r.DurNS != 0 {
		b = append(b, `,"duration_ns":`...)
		b = strconv.AppendInt(b, r.DurNS, 10)
	}
	if r.Reuse != 0 {
		b = append(b, `,"reuse_count":`...)
		b = strconv.AppendInt(b, int64(r.Reuse), 10)
	}
	if r.MaxReuse != nil {
		b = append(b, `,"max_reuse":`...)
		b = strconv.AppendInt(b, int64(*r.MaxReuse), 10)
	}
	b = optString(b, `,"reason":`, r.Reason)
	return append(b, '}')
}

func optString(b []byte, key, v string) []byte {
	if v == "" {
		return b
	}
	return appendString(append(b, key...), v)
}

// appendString quotes s as encoding/json does; anything but plain printable
// ASCII goes through json.Marshal itself.
func appendString(b []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c >= 0x7f || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
			m, _ := json.Marshal(s)
			return append(b, m...)
		}
	}
	b = append(b, '"')
	b = append(b, s...)
	return append(b, '"')
}

// appendFloat formats like encoding/json's float64 encoder.
func appendFloat(b []byte, f float64) []byte {
	if math.IsNaN(f) || math.IsInf(f, 0) {
		return append(b, '0') // json.Marshal would fail; coverage is always finite
	}
	if f == math.Trunc(f) && math.Abs(f) < 1e15 && !(f == 0 && math.Signbit(f)) {
		// Whole numbers (coverage is 100 on every passing sanitize): the
		// shortest 'f' form is the integer's digits; AppendFloat was 3% of
		// the ledger lifecycle's profile.
		return strconv.AppendInt(b, int64(f), 10)
	}
	format := byte('f')
	if abs := math.Abs(f); abs != 0 && (abs < 1e-6 || abs >= 1e21) {
		format = 'e'
	}
	b = strconv.AppendFloat(b, f, format, -1, 64)
	if format == 'e' {
		if n := len(b); n >= 4 && b[n-4] == 'e' && b[n-3] == '-' && b[n-2] == '0' {
			b[n-2] = b[n-1]
			b = b[:n-1]
		}
	}
	return b
}
