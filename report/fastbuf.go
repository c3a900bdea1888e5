package report

import (
	"bytes"
	"strconv"
	"unicode/utf8"

	"github.com/kvhygiene/kvh/trailevent"
)

// Buffer transitions are nearly every record of a trail, and
// trailevent.Decode spends microseconds on each (a head pass, then a
// reflective decode). decodeBuffer reads the compact bodies the ledger
// writes (trailevent.Buffer.AppendBody) in one pass without reflection, and
// declines anything else: another event, whitespace, an escape in a string,
// a key it does not know exactly, a null, a number that is not plain. The
// caller then uses trailevent.Decode, so the result is Decode's either way;
// FuzzDecodeBuffer holds the two to the same answer.

var bufferEvents = map[string]bool{
	trailevent.EvAllocate: true, trailevent.EvBind: true, trailevent.EvWrite: true, trailevent.EvReuse: true,
	trailevent.EvQuarantine: true, trailevent.EvSanitize: true, trailevent.EvSanitizeStart: true, trailevent.EvSanitizeEnd: true,
	trailevent.EvAttest: true, trailevent.EvDoubleFree: true, trailevent.EvFree: true, trailevent.EvRelease: true, trailevent.EvRetire: true,
}

// interner returns one string for equal byte strings, so that the handful
// of tenants, methods and states a trail repeats a million times are not
// allocated a million times. It holds at most maxInterned strings.
type interner map[string]string

const maxInterned = 4096

func (in interner) get(v []byte) string {
	if s, ok := in[string(v)]; ok {
		return s
	}
	s := string(v)
	if in != nil && len(in) < maxInterned {
		in[s] = s
	}
	return s
}

// decodeBuffer fills b from body when body is a buffer transition it can
// read exactly as trailevent.Decode would; ok is false otherwise (b is then
// unspecified). in may be nil.
func decodeBuffer(body []byte, b *trailevent.Buffer, in interner) bool {
	*b = trailevent.Buffer{}
	p := body
	if len(p) < 2 || p[0] != '{' {
		return false
	}
	p = p[1:]
	first := true
	for {
		if len(p) == 0 {
			return false
		}
		if p[0] == '}' {
			if first || len(p) != 1 {
				return false
			}
			return bufferEvents[b.Ev]
		}
		if !first {
			if p[0] != ',' {
				return false
			}
			p = p[1:]
		}
		first = false
		key, rest, ok := jsonString(p)
		if !ok || len(rest) == 0 || rest[0] != ':' {
			return false
		}
		p = rest[1:]
		if p, ok = field(b, string(key), p, in); !ok {
			return false
		}
	}
}

// jsonString reads a string with no escapes and valid UTF-8; s aliases p.
func jsonString(p []byte) (s, rest []byte, ok bool) {
	if len(p) == 0 || p[0] != '"' {
		return nil, nil, false
	}
	end := bytes.IndexByte(p[1:], '"')
	if end < 0 {
		return nil, nil, false
	}
	v := p[1 : 1+end]
	for _, c := range v {
		if c < 0x20 || c == '\\' {
			return nil, nil, false
		}
	}
	if !utf8.Valid(v) {
		return nil, nil, false
	}
	return v, p[2+end:], true
}

// number reads a JSON number token.
func number(p []byte) (tok string, rest []byte) {
	i := 0
	for i < len(p) && (p[i] == '-' || p[i] == '+' || p[i] == '.' || p[i] == 'e' || p[i] == 'E' || (p[i] >= '0' && p[i] <= '9')) {
		i++
	}
	return string(p[:i]), p[i:]
}

// plainInt reports whether tok is a JSON integer (no fraction, no
// exponent, no leading zeros, no plus).
func plainInt(tok string) bool {
	t := tok
	if len(t) > 0 && t[0] == '-' {
		t = t[1:]
	}
	if len(t) == 0 || (len(t) > 1 && t[0] == '0') {
		return false
	}
	for i := 0; i < len(t); i++ {
		if t[i] < '0' || t[i] > '9' {
			return false
		}
	}
	return true
}

// validFloat reports whether tok is a JSON number.
func validFloat(tok string) bool {
	t := tok
	if len(t) > 0 && t[0] == '-' {
		t = t[1:]
	}
	i := 0
	digits := func() int {
		n := 0
		for i < len(t) && t[i] >= '0' && t[i] <= '9' {
			i++
			n++
		}
		return n
	}
	start := i
	if n := digits(); n == 0 || (n > 1 && t[start] == '0') {
		return false
	}
	if i < len(t) && t[i] == '.' {
		i++
		if digits() == 0 {
			return false
		}
	}
	if i < len(t) && (t[i] == 'e' || t[i] == 'E') {
		i++
		if i < len(t) && (t[i] == '+' || t[i] == '-') {
			i++
		}
		if digits() == 0 {
			return false
		}
	}
	return i == len(t)
}

func field(b *trailevent.Buffer, key string, p []byte, in interner) ([]byte, bool) {
	str := func(dst *string) ([]byte, bool) {
		s, rest, ok := jsonString(p)
		if ok {
			*dst = in.get(s)
		}
		return rest, ok
	}
	i64 := func(dst *int64) ([]byte, bool) {
		tok, rest := number(p)
		if !plainInt(tok) {
			return nil, false
		}
		v, err := strconv.ParseInt(tok, 10, 64)
		if err != nil {
			return nil, false
		}
		*dst = v
		return rest, true
	}
	u64 := func(dst *uint64) ([]byte, bool) {
		tok, rest := number(p)
		if !plainInt(tok) || tok[0] == '-' {
			return nil, false
		}
		v, err := strconv.ParseUint(tok, 10, 64)
		if err != nil {
			return nil, false
		}
		*dst = v
		return rest, true
	}
	int0 := func(dst *int) ([]byte, bool) {
		var v int64
		rest, ok := i64(&v)
		if !ok || int64(int(v)) != v {
			return nil, false
		}
		*dst = int(v)
		return rest, true
	}
	switch key {
	case "ev":
		return str(&b.Ev)
	case "h":
		return u64(&b.H)
	case "buf":
		return str(&b.Kind)
	case "from":
		return str(&b.From)
	case "to":
		return str(&b.To)
	case "tenant":
		return str(&b.Tenant)
	case "request":
		return str(&b.Request)
	case "model":
		return str(&b.Model)
	case "device":
		return str(&b.Device)
	case "framework":
		return str(&b.Framework)
	case "pid":
		return int0(&b.PID)
	case "stream":
		return str(&b.Stream)
	case "claimed_tenant":
		return str(&b.Claimed)
	case "bytes":
		return i64(&b.Bytes)
	case "coverage_pct":
		tok, rest := number(p)
		if !validFloat(tok) {
			return nil, false
		}
		v, err := strconv.ParseFloat(tok, 64)
		if err != nil {
			return nil, false
		}
		b.Coverage = &v
		return rest, true
	case "verified":
		var v bool
		switch {
		case bytes.HasPrefix(p, []byte("true")):
			v, p = true, p[4:]
		case bytes.HasPrefix(p, []byte("false")):
			p = p[5:]
		default:
			return nil, false
		}
		b.Verified = &v
		return p, true
	case "method":
		return str(&b.Method)
	case "seed":
		return u64(&b.Seed)
	case "duration_ns":
		return i64(&b.DurNS)
	case "reuse_count":
		return int0(&b.Reuse)
	case "max_reuse":
		var v int
		rest, ok := int0(&v)
		if ok {
			b.MaxReuse = &v
		}
		return rest, ok
	case "reason":
		return str(&b.Reason)
	}
	return nil, false
}
