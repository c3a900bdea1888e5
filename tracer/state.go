package tracer

import (
	"errors"
	"fmt"
)

// State is a buffer's lifecycle state.
type State uint8

// The states; see the package documentation for the transitions.
const (
	Allocated State = iota + 1
	Bound
	InUse
	Sanitizing
	Sanitized
	Freed
	Quarantined
	numStates
)

var stateNames = [...]string{"", "allocated", "bound", "in_use", "sanitizing", "sanitized", "freed", "quarantined"}

func (s State) String() string {
	if int(s) < len(stateNames) && s != 0 {
		return stateNames[s]
	}
	return fmt.Sprintf("state(%d)", s)
}

// Errors callers branch on.
var (
	ErrUnknownHandle       = errors.New("unknown handle")
	ErrIllegalTransition   = errors.New("illegal transition")
	ErrFreeWithoutSanitize = errors.New("attempt to free buffer without sufficient sanitization")
	ErrQuarantined         = errors.New("buffer is quarantined")
	ErrPolicyViolation     = errors.New("hygiene policy violation")
)

// illegal builds an ErrIllegalTransition naming the operation and state.
func illegal(op string, s State) error {
	return fmt.Errorf("%w: %s from %s", ErrIllegalTransition, op, s)
}
