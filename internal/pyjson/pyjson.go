// Package pyjson reads JSON the way Python's json module does (NaN and
// Infinity accepted, last duplicate key wins, numbers as Python's int and float) and writes the
// canonical form the Python seed hashed: json.dumps(sort_keys=True,
// ensure_ascii=False, separators=(",", ":")).
package pyjson

import (
	"bytes"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"unicode/utf16"
	"unicode/utf8"
)

// Value is a JSON value as Python's json module reads it: objects keep
// their keys (last duplicate wins), numbers are in the form the seed hashed (str(int), repr(float)), and NaN,
// Infinity and -Infinity are accepted because the seed wrote them.
type Value struct {
	Kind byte // 'o' object, 'a' array, 's' string, 'n' number or literal
	Text string
	Keys []string
	Vals map[string]*Value
	Arr  []*Value
}

type pyParser struct {
	b     []byte
	i     int
	depth int
}

// Parse parses one JSON text.
func Parse(b []byte) (*Value, error) {
	p := &pyParser{b: b}
	p.ws()
	v, err := p.value()
	if err != nil {
		return nil, err
	}
	p.ws()
	if p.i != len(p.b) {
		return nil, fmt.Errorf("extra data at byte %d", p.i)
	}
	return v, nil
}

func (p *pyParser) ws() {
	for p.i < len(p.b) && (p.b[p.i] == ' ' || p.b[p.i] == '\t' || p.b[p.i] == '\n' || p.b[p.i] == '\r') {
		p.i++
	}
}

func (p *pyParser) value() (*Value, error) {
	if p.i >= len(p.b) {
		return nil, errors.New("unexpected end of line")
	}
	p.depth++
	defer func() { p.depth-- }()
	if p.depth > 512 {
		return nil, errors.New("nesting too deep")
	}
	switch c := p.b[p.i]; {
	case c == '{':
		p.i++
		v := &Value{Kind: 'o', Vals: map[string]*Value{}}
		p.ws()
		if p.i < len(p.b) && p.b[p.i] == '}' {
			p.i++
			return v, nil
		}
		for {
			p.ws()
			if p.i >= len(p.b) || p.b[p.i] != '"' {
				return nil, fmt.Errorf("expected key at byte %d", p.i)
			}
			k, err := p.str()
			if err != nil {
				return nil, err
			}
			p.ws()
			if p.i >= len(p.b) || p.b[p.i] != ':' {
				return nil, fmt.Errorf("expected ':' at byte %d", p.i)
			}
			p.i++
			p.ws()
			val, err := p.value()
			if err != nil {
				return nil, err
			}
			if _, dup := v.Vals[k]; !dup {
				v.Keys = append(v.Keys, k)
			}
			v.Vals[k] = val
			p.ws()
			if p.i < len(p.b) && p.b[p.i] == ',' {
				p.i++
				continue
			}
			if p.i < len(p.b) && p.b[p.i] == '}' {
				p.i++
				return v, nil
			}
			return nil, fmt.Errorf("expected ',' or '}' at byte %d", p.i)
		}
	case c == '[':
		p.i++
		v := &Value{Kind: 'a'}
		p.ws()
		if p.i < len(p.b) && p.b[p.i] == ']' {
			p.i++
			return v, nil
		}
		for {
			p.ws()
			e, err := p.value()
			if err != nil {
				return nil, err
			}
			v.Arr = append(v.Arr, e)
			p.ws()
			if p.i < len(p.b) && p.b[p.i] == ',' {
				p.i++
				continue
			}
			if p.i < len(p.b) && p.b[p.i] == ']' {
				p.i++
				return v, nil
			}
			return nil, fmt.Errorf("expected ',' or ']' at byte %d", p.i)
		}
	case c == '"':
		s, err := p.str()
		return &Value{Kind: 's', Text: s}, err
	default:
		for _, lit := range []string{"true", "false", "null", "NaN", "Infinity", "-Infinity"} {
			if bytes.HasPrefix(p.b[p.i:], []byte(lit)) {
				p.i += len(lit)
				return &Value{Kind: 'n', Text: lit}, nil
			}
		}
		start := p.i
		if !p.number() {
			return nil, fmt.Errorf("unexpected %q at byte %d", c, start)
		}
		text, err := appendNumber(nil, p.b[start:p.i])
		if err != nil {
			return nil, fmt.Errorf("at byte %d: %v", start, err)
		}
		return &Value{Kind: 'n', Text: string(text)}, nil
	}
}

// number consumes a JSON number: -?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)?
func (p *pyParser) number() bool {
	digits := func() int {
		n := 0
		for p.i < len(p.b) && p.b[p.i] >= '0' && p.b[p.i] <= '9' {
			p.i++
			n++
		}
		return n
	}
	if p.i < len(p.b) && p.b[p.i] == '-' {
		p.i++
	}
	if p.i < len(p.b) && p.b[p.i] == '0' {
		p.i++
	} else if digits() == 0 {
		return false
	}
	if p.i < len(p.b) && p.b[p.i] == '.' {
		p.i++
		if digits() == 0 {
			return false
		}
	}
	if p.i < len(p.b) && (p.b[p.i] == 'e' || p.b[p.i] == 'E') {
		p.i++
		if p.i < len(p.b) && (p.b[p.i] == '+' || p.b[p.i] == '-') {
			p.i++
		}
		if digits() == 0 {
			return false
		}
	}
	return true
}

func (p *pyParser) str() (string, error) {
	p.i++ // opening quote
	var out []byte
	for p.i < len(p.b) {
		c := p.b[p.i]
		switch {
		case c == '"':
			p.i++
			if !utf8.Valid(out) {
				return "", errors.New("invalid UTF-8 in string")
			}
			return string(out), nil
		case c < 0x20:
			return "", errors.New("control character in string")
		case c == '\\':
			if p.i+1 >= len(p.b) {
				return "", errors.New("unterminated escape")
			}
			e := p.b[p.i+1]
			p.i += 2
			switch e {
			case '"', '\\', '/':
				out = append(out, e)
			case 'b':
				out = append(out, '\b')
			case 'f':
				out = append(out, '\f')
			case 'n':
				out = append(out, '\n')
			case 'r':
				out = append(out, '\r')
			case 't':
				out = append(out, '\t')
			case 'u':
				r, err := p.hex4()
				if err != nil {
					return "", err
				}
				if utf16.IsSurrogate(r) {
					if r >= 0xdc00 || p.i+6 > len(p.b) || p.b[p.i] != '\\' || p.b[p.i+1] != 'u' {
						return "", errors.New("lone surrogate (the seed cannot hash it either)")
					}
					p.i += 2
					r2, err := p.hex4()
					if err != nil {
						return "", err
					}
					r = utf16.DecodeRune(r, r2)
					if r == utf8.RuneError {
						return "", errors.New("bad surrogate pair")
					}
				}
				out = utf8.AppendRune(out, r)
			default:
				return "", fmt.Errorf("bad escape \\%c", e)
			}
		default:
			out = append(out, c)
			p.i++
		}
	}
	return "", errors.New("unterminated string")
}

func (p *pyParser) hex4() (rune, error) {
	if p.i+4 > len(p.b) {
		return 0, errors.New("short \\u escape")
	}
	n, err := strconv.ParseUint(string(p.b[p.i:p.i+4]), 16, 32)
	if err != nil {
		return 0, errors.New("bad \\u escape")
	}
	p.i += 4
	return rune(n), nil
}

// canonical writes v as the seed's json.dumps(sort_keys=True,
// ensure_ascii=False, separators=(",", ":")) does.
// Canonical appends v in the seed's canonical form, leaving out the top-level keys in skip.
func (v *Value) Canonical(b []byte, skip ...string) []byte {
	switch v.Kind {
	case 'o':
		keys := append([]string(nil), v.Keys...)
		sort.Strings(keys) // UTF-8 byte order == code point order
		b = append(b, '{')
		first := true
		for _, k := range keys {
			if contains(skip, k) {
				continue
			}
			if !first {
				b = append(b, ',')
			}
			first = false
			b = quote(b, k)
			b = append(b, ':')
			b = v.Vals[k].Canonical(b)
		}
		return append(b, '}')
	case 'a':
		b = append(b, '[')
		for i, e := range v.Arr {
			if i > 0 {
				b = append(b, ',')
			}
			b = e.Canonical(b)
		}
		return append(b, ']')
	case 's':
		return quote(b, v.Text)
	default:
		return append(b, v.Text...)
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func quote[S string | []byte](b []byte, s S) []byte {
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= 0x20 && c != '"' && c != '\\' {
			continue
		}
		b = append(b, s[start:i]...)
		start = i + 1
		switch c {
		case '"':
			b = append(b, '\\', '"')
		case '\\':
			b = append(b, '\\', '\\')
		case '\n':
			b = append(b, '\\', 'n')
		case '\r':
			b = append(b, '\\', 'r')
		case '\t':
			b = append(b, '\\', 't')
		case '\b':
			b = append(b, '\\', 'b')
		case '\f':
			b = append(b, '\\', 'f')
		default:
			b = fmt.Appendf(b, `\u%04x`, c)
		}
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}

// Str returns the string member key of an object.
func (v *Value) Str(key string) (string, bool) {
	if v.Kind != 'o' {
		return "", false
	}
	e, ok := v.Vals[key]
	if !ok || e.Kind != 's' {
		return "", false
	}
	return e.Text, true
}
