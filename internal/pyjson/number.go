package pyjson

import (
	"fmt"
	"math"
	"strconv"
	"unsafe"
)

// maxIntDigits is Python's default limit on the digits of an int converted
// from text (sys.get_int_max_str_digits(), since 3.11 and in 3.10.7+):
// json.loads refuses a longer integer with a ValueError.
const maxIntDigits = 4300

// appendNumber appends the canonical form the seed hashed for the JSON
// number text: json.loads makes an int of a number without fraction or
// exponent and a float of any other, and json.dumps writes str(int) and
// repr(float) — so "1.50" is hashed as 1.5, "1E2" as 100.0, "-0" as 0,
// "1e400" as Infinity. Keeping the text instead let a line hashed over
// "1.50" verify here while the seed's own verifier rejects it.
func appendNumber(dst, text []byte) ([]byte, error) {
	isInt := true
	for _, c := range text {
		if c == '.' || c == 'e' || c == 'E' {
			isInt = false
			break
		}
	}
	if isInt {
		digits := len(text)
		if text[0] == '-' {
			digits--
		}
		if digits > maxIntDigits {
			return dst, fmt.Errorf("an integer of %d digits: Python's json refuses more than %d (the seed's verifier crashes on it)", digits, maxIntDigits)
		}
		if len(text) == 2 && text[0] == '-' && text[1] == '0' {
			return append(dst, '0'), nil
		}
		return append(dst, text...), nil
	}
	f, err := strconv.ParseFloat(unsafe.String(&text[0], len(text)), 64)
	if err != nil && !math.IsInf(f, 0) { // out of range is ±Inf, as for Python's float()
		return dst, fmt.Errorf("number %q: %v", text, err)
	}
	return appendRepr(dst, f), nil
}

// appendRepr appends json.dumps's form of a float: repr (the shortest text
// that reads back as f, in fixed notation when the decimal point falls at
// positions -3 to 16, else in exponent notation) and Infinity, -Infinity.
func appendRepr(dst []byte, f float64) []byte {
	switch {
	case math.IsInf(f, 1):
		return append(dst, "Infinity"...)
	case math.IsInf(f, -1):
		return append(dst, "-Infinity"...)
	case math.IsNaN(f):
		return append(dst, "NaN"...)
	case f == 0:
		if math.Signbit(f) {
			return append(dst, "-0.0"...)
		}
		return append(dst, "0.0"...)
	}
	var sb [32]byte
	e := strconv.AppendFloat(sb[:0], f, 'e', -1, 64) // [-]d[.ddd]e±XX, shortest
	neg := e[0] == '-'
	if neg {
		e = e[1:]
	}
	x := 0
	for x < len(e) && e[x] != 'e' {
		x++
	}
	exp, _ := strconv.Atoi(string(e[x+1:]))
	decpt := exp + 1
	if decpt <= -4 || decpt > 16 {
		if neg {
			dst = append(dst, '-')
		}
		return append(dst, e...) // Python's exponent form is Go's: 1e+16, 1.5e-05
	}
	var db [20]byte
	digits := append(db[:0], e[0])
	if x > 1 {
		digits = append(digits, e[2:x]...)
	}
	if neg {
		dst = append(dst, '-')
	}
	if decpt <= 0 {
		dst = append(dst, '0', '.')
		for range -decpt {
			dst = append(dst, '0')
		}
		return append(dst, digits...)
	}
	for i := range decpt {
		if i < len(digits) {
			dst = append(dst, digits[i])
		} else {
			dst = append(dst, '0')
		}
	}
	dst = append(dst, '.')
	if decpt >= len(digits) {
		return append(dst, '0')
	}
	return append(dst, digits[decpt:]...)
}
