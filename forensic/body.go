package forensic

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
)

// canonical turns a body into the bytes a record carries.
func canonical(body any) ([]byte, error) { return canonicalTo(nil, body) }

// canonicalTo is canonical encoding a BodyAppender into dst's storage; the
// result never aliases body's own bytes.
func canonicalTo(dst []byte, body any) ([]byte, error) {
	var b []byte
	switch v := body.(type) {
	case BodyAppender:
		if dst == nil {
			dst = make([]byte, 0, 256)
		}
		m := v.AppendBody(dst[:0])
		if len(m) < 2 || m[0] != '{' || len(m) > MaxLine/2 {
			return nil, errors.New("record body must be a JSON object within the size limit")
		}
		return m, nil
	case json.RawMessage:
		b = v
	case []byte:
		b = v
	default:
		// json.Marshal's output is already canonical: no second pass.
		m, err := json.Marshal(body)
		if err != nil {
			return nil, fmt.Errorf("encoding record body: %w", err)
		}
		if len(m) < 2 || m[0] != '{' {
			return nil, errors.New("record body must be a JSON object")
		}
		if len(m) > MaxLine/2 {
			return nil, fmt.Errorf("record body of %d bytes is too large", len(m))
		}
		return m, nil
	}
	if len(b) < 2 || b[0] != '{' {
		return nil, errors.New("record body must be a JSON object")
	}
	// Caller-supplied bytes: validated and canonicalised here, in the
	// caller's goroutine, not the writer's.
	b, err := canonicalBody(b)
	if err != nil {
		return nil, fmt.Errorf("record body is not valid JSON: %w", err)
	}
	if len(b) > MaxLine/2 {
		return nil, fmt.Errorf("record body of %d bytes is too large", len(b))
	}
	return b, nil
}

// BodyAppender is implemented by record bodies that encode themselves to
// exactly the bytes json.Marshal gives them (compact, HTML-escaped). Append
// trusts such bodies and skips reflection; implementations pin their output
// to json.Marshal in a test.
type BodyAppender interface {
	AppendBody(dst []byte) []byte
}

// canonicalBody returns body as json.Marshal embeds a RawMessage: compacted,
// with <, > and & escaped (and U+2028, U+2029). A body that is already so
// (valid, no whitespace between tokens, none of those characters) is copied
// as it is: json.Marshal's compaction was a sixth of a durable append's CPU.
// FuzzCanonicalBody holds the fast path to json.Marshal.
func canonicalBody(body []byte) ([]byte, error) {
	if validJSON(body) && alreadyCompact(body) {
		return append(make([]byte, 0, len(body)), body...), nil
	}
	return json.Marshal(json.RawMessage(body))
}

// alreadyCompact reports whether valid JSON b is what json.Marshal's
// compaction leaves unchanged: no whitespace outside strings, and no byte
// that HTML escaping rewrites (<, >, &, and 0xE2, which starts U+2028 and
// U+2029) anywhere.
func alreadyCompact(b []byte) bool {
	in := false
	for i := 0; i < len(b); i++ {
		switch c := b[i]; c {
		case '<', '>', '&', 0xE2:
			return false
		case ' ', '\t', '\n', '\r':
			if !in {
				return false
			}
		case '"':
			in = !in
		case '\\':
			i++ // in a string: the escaped byte is never a quote that ends it
		}
	}
	return true
}

func strictUnmarshal(b []byte, v any) error {
	d := json.NewDecoder(bytes.NewReader(b))
	d.DisallowUnknownFields()
	if err := d.Decode(v); err != nil {
		return err
	}
	if d.More() {
		return errors.New("trailing data")
	}
	return nil
}
