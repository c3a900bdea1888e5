package pyjson

import (
	"bytes"
	"encoding/binary"
	"errors"
	"math/bits"
	"slices"
	"unicode/utf8"
)

// Canonicalizer writes the canonical form of one JSON object (as
// Value.Canonical does for what Parse returns) in one pass over the text,
// without building a tree: a verifier of the seed's logs spends its time
// here. It accepts exactly what Parse accepts; on an error, Parse says why.
// A Canonicalizer is reused line after line by one goroutine.
type Canonicalizer struct {
	p      pyParser
	vals   []byte   // canonical values, nested ones first
	keys   []byte   // decoded keys
	mem    []member // members of the objects being read, innermost last
	elems  [][2]int // elements of the arrays being read, innermost last
	top    []member // the top-level members of the last object
	tmp    []member
	seq    []byte           // the key sequence of the object being sorted
	orders map[string][]int // key sequence -> the members in canonical order
}

type member struct {
	k0, k1 int // decoded key in keys
	q0, q1 int // the key as quoted in the line, when that is canonical (q0 >= 0)
	v0, v1 int // canonical value in vals
	kind   byte
	s0, s1 int // for a string value: its decoded text in keys
}

// Object appends the canonical form of the object in line to dst, leaving
// out the top-level keys in skip. Top then reads its top-level members.
func (c *Canonicalizer) Object(dst, line []byte, skip ...string) ([]byte, error) {
	c.p = pyParser{b: line}
	c.vals, c.keys, c.mem, c.top, c.elems = c.vals[:0], c.keys[:0], c.mem[:0], c.top[:0], c.elems[:0]
	c.p.ws()
	if c.p.i >= len(line) || line[c.p.i] != '{' {
		return dst, c.fail(line)
	}
	v0, v1, _, ok := c.value(true)
	if !ok {
		return dst, c.fail(line)
	}
	c.p.ws()
	if c.p.i != len(line) {
		return dst, c.fail(line)
	}
	_ = v0
	_ = v1
	dst = append(dst, '{')
	first := true
	for _, m := range c.top {
		if skipped(skip, c.keys[m.k0:m.k1]) {
			continue
		}
		if !first {
			dst = append(dst, ',')
		}
		first = false
		dst = c.appendKey(dst, m)
		dst = append(dst, ':')
		dst = append(dst, c.vals[m.v0:m.v1]...)
	}
	return append(dst, '}'), nil
}

// sorted orders members by key, keeping the last of equal keys. A log's
// lines repeat a few key sequences (one per event type), so the order found
// for a sequence is remembered and reused.
func (c *Canonicalizer) sorted(ms []member) []member {
	c.seq = c.seq[:0]
	for _, m := range ms {
		c.seq = append(c.seq, c.keys[m.k0:m.k1]...)
		c.seq = append(c.seq, 0xff) // never in UTF-8
	}
	perm, ok := c.orders[string(c.seq)]
	if !ok {
		idx := make([]int, len(ms))
		for i := range idx {
			idx[i] = i
		}
		slices.SortStableFunc(idx, func(x, y int) int {
			return bytes.Compare(c.keys[ms[x].k0:ms[x].k1], c.keys[ms[y].k0:ms[y].k1])
		})
		for i := range idx {
			if i+1 < len(idx) && bytes.Equal(c.keys[ms[idx[i]].k0:ms[idx[i]].k1], c.keys[ms[idx[i+1]].k0:ms[idx[i+1]].k1]) {
				continue
			}
			perm = append(perm, idx[i])
		}
		if c.orders == nil || len(c.orders) > 64 {
			c.orders = map[string][]int{}
		}
		c.orders[string(c.seq)] = perm
	}
	c.tmp = append(c.tmp[:0], ms...)
	for i, j := range perm {
		ms[i] = c.tmp[j]
	}
	return ms[:len(perm)]
}

func (c *Canonicalizer) appendKey(dst []byte, m member) []byte {
	if m.q0 >= 0 {
		return append(dst, c.p.b[m.q0:m.q1]...)
	}
	return quote(dst, c.keys[m.k0:m.k1])
}

// Str returns the top-level string member key of the last object.
func (c *Canonicalizer) Str(key string) (string, bool) {
	for _, m := range c.top {
		if string(c.keys[m.k0:m.k1]) == key {
			if m.kind != 's' {
				return "", false
			}
			return string(c.keys[m.s0:m.s1]), true
		}
	}
	return "", false
}

// Truthy reports whether the top-level member key of the last object is
// present and what Python's bool() makes of its value (a string, number,
// literal, array or object: empty, zero, null and false are false).
func (c *Canonicalizer) Truthy(key string) (present, truthy bool, kind byte) {
	for _, m := range c.top {
		if string(c.keys[m.k0:m.k1]) == key {
			v := string(c.vals[m.v0:m.v1])
			switch m.kind {
			case 's':
				return true, m.s1 > m.s0, 's'
			case 'n':
				return true, v != "null" && v != "false" && v != "0" && v != "0.0" && v != "-0.0", 'n'
			default: // 'a', 'o'
				return true, v != "[]" && v != "{}", m.kind
			}
		}
	}
	return false, false, 0
}

// Bytes is Str without a copy: the decoded text, valid until the next
// Object.
func (c *Canonicalizer) Bytes(key string) ([]byte, bool) {
	for _, m := range c.top {
		if string(c.keys[m.k0:m.k1]) == key {
			if m.kind != 's' {
				return nil, false
			}
			return c.keys[m.s0:m.s1], true
		}
	}
	return nil, false
}

func (c *Canonicalizer) fail(line []byte) error {
	if _, err := Parse(line); err != nil {
		return err
	}
	return errors.New("not a JSON object")
}

// value reads one value and writes its canonical form at the end of vals,
// returning its span and kind. For the top-level object the members are
// kept in c.top instead of being written out.
func (c *Canonicalizer) value(top bool) (v0, v1 int, kind byte, ok bool) {
	p := &c.p
	if p.i >= len(p.b) {
		return 0, 0, 0, false
	}
	p.depth++
	if p.depth > 512 {
		p.depth--
		return 0, 0, 0, false
	}
	v0, v1, kind, ok = c.value1(top)
	p.depth--
	return v0, v1, kind, ok
}

func (c *Canonicalizer) value1(top bool) (v0, v1 int, kind byte, ok bool) {
	p := &c.p
	switch ch := p.b[p.i]; {
	case ch == '{':
		p.i++
		base := len(c.mem)
		p.ws()
		if p.i < len(p.b) && p.b[p.i] == '}' {
			p.i++
		} else {
			for {
				p.ws()
				if p.i >= len(p.b) || p.b[p.i] != '"' {
					return 0, 0, 0, false
				}
				k0, q0 := len(c.keys), p.i
				ok, clean := c.str()
				if !ok {
					return 0, 0, 0, false
				}
				k1 := len(c.keys)
				if !clean {
					q0 = -1
				}
				q1 := p.i
				p.ws()
				if p.i >= len(p.b) || p.b[p.i] != ':' {
					return 0, 0, 0, false
				}
				p.i++
				p.ws()
				s0 := len(c.keys)
				a, b, kd, ok := c.value(false)
				if !ok {
					return 0, 0, 0, false
				}
				c.mem = append(c.mem, member{k0: k0, k1: k1, q0: q0, q1: q1, v0: a, v1: b, kind: kd, s0: s0, s1: len(c.keys)})
				p.ws()
				if p.i < len(p.b) && p.b[p.i] == ',' {
					p.i++
					continue
				}
				if p.i < len(p.b) && p.b[p.i] == '}' {
					p.i++
					break
				}
				return 0, 0, 0, false
			}
		}
		ms := c.sorted(c.mem[base:])
		if top {
			c.top = append(c.top[:0], ms...)
			c.mem = c.mem[:base]
			return 0, 0, 'o', true
		}
		v0 = len(c.vals)
		c.vals = append(c.vals, '{')
		for i, m := range ms {
			if i > 0 {
				c.vals = append(c.vals, ',')
			}
			c.vals = c.appendKey(c.vals, m)
			c.vals = append(c.vals, ':')
			c.vals = append(c.vals, c.vals[m.v0:m.v1]...)
		}
		c.vals = append(c.vals, '}')
		c.mem = c.mem[:base]
		return v0, len(c.vals), 'o', true
	case ch == '[':
		p.i++
		base := len(c.elems)
		p.ws()
		if p.i < len(p.b) && p.b[p.i] == ']' {
			p.i++
		} else {
			for {
				p.ws()
				a, b, _, ok := c.value(false)
				if !ok {
					return 0, 0, 0, false
				}
				c.elems = append(c.elems, [2]int{a, b})
				p.ws()
				if p.i < len(p.b) && p.b[p.i] == ',' {
					p.i++
					continue
				}
				if p.i < len(p.b) && p.b[p.i] == ']' {
					p.i++
					break
				}
				return 0, 0, 0, false
			}
		}
		v0 = len(c.vals)
		c.vals = append(c.vals, '[')
		for i, e := range c.elems[base:] {
			if i > 0 {
				c.vals = append(c.vals, ',')
			}
			c.vals = append(c.vals, c.vals[e[0]:e[1]]...)
		}
		c.elems = c.elems[:base]
		c.vals = append(c.vals, ']')
		return v0, len(c.vals), 'a', true
	case ch == '"':
		s0, q0 := len(c.keys), p.i
		ok, clean := c.str()
		if !ok {
			return 0, 0, 0, false
		}
		v0 = len(c.vals)
		if clean {
			c.vals = append(c.vals, p.b[q0:p.i]...)
		} else {
			c.vals = quote(c.vals, c.keys[s0:])
		}
		return v0, len(c.vals), 's', true
	default:
		start := p.i
		if ch != '-' && (ch < '0' || ch > '9') || ch == '-' && p.i+1 < len(p.b) && p.b[p.i+1] == 'I' {
			for _, lit := range literals {
				if bytes.HasPrefix(p.b[p.i:], lit) {
					p.i += len(lit)
					v0 = len(c.vals)
					c.vals = append(c.vals, lit...)
					return v0, len(c.vals), 'n', true
				}
			}
			return 0, 0, 0, false
		}
		if !p.number() {
			return 0, 0, 0, false
		}
		v0 = len(c.vals)
		var err error
		if c.vals, err = appendNumber(c.vals, p.b[start:p.i]); err != nil {
			return 0, 0, 0, false // fail reports it
		}
		return v0, len(c.vals), 'n', true
	}
}

var literals = [][]byte{[]byte("true"), []byte("false"), []byte("null"), []byte("NaN"), []byte("Infinity"), []byte("-Infinity")}

// str decodes the string at p.i onto the end of c.keys. A string with no
// escape is copied as it is.
//
// clean reports a string with no escape: its canonical form is its text
// in the line, quotes included.
func (c *Canonicalizer) str() (ok, clean bool) {
	p := &c.p
	p.i++
	j := p.i
	ascii := true
	for {
		j = plainSpan(p.b, j)
		if j == len(p.b) || p.b[j] < 0x80 {
			break
		}
		ascii = false
		j++
	}
	if j < len(p.b) && p.b[j] == '"' {
		if !ascii && !utf8.Valid(p.b[p.i:j]) {
			return false, false
		}
		c.keys = append(c.keys, p.b[p.i:j]...)
		p.i = j + 1
		return true, true
	}
	// Escapes or an error: the general decoder.
	p.i--
	s, err := p.str()
	if err != nil {
		return false, false
	}
	c.keys = append(c.keys, s...)
	return true, false
}

// plainSpan returns the index of the first byte at or after j that ends a
// run of plain string text: a quote, a backslash, a control character or a
// byte of a multi-byte UTF-8 sequence (len(b) if none). Eight bytes at a
// time: the seed's lines are mostly string text, and this scan was a sixth
// of verifying them byte by byte.
//
// Each mask flags a byte by its high bit. A subtraction's borrow can flag a
// byte above a flagged one falsely, never one below it: the lowest flag is
// always a true one, and it is the only one read.
func plainSpan(b []byte, j int) int {
	const lo, hi = 0x0101010101010101, 0x8080808080808080
	for ; j+8 <= len(b); j += 8 {
		x := binary.LittleEndian.Uint64(b[j:])
		q, bs := x^(lo*'"'), x^(lo*'\\')
		m := (x-lo*0x20)&^x | (q-lo)&^q | (bs-lo)&^bs | x
		if m &= hi; m != 0 {
			return j + bits.TrailingZeros64(m)/8
		}
	}
	for ; j < len(b); j++ {
		if ch := b[j]; ch == '"' || ch == '\\' || ch < 0x20 || ch >= 0x80 {
			return j
		}
	}
	return j
}

// skipped is contains for a key as bytes, without converting it to a
// string (a conversion the compiler keeps when the string is passed on).
func skipped(skip []string, key []byte) bool {
	for _, s := range skip {
		if string(key) == s {
			return true
		}
	}
	return false
}
