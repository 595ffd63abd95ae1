package manifest

import (
	"errors"
	"fmt"
)

// ErrVerification is the class of every refusal to trust a manifest:
// errors.Is(err, ErrVerification) holds for all the errors below, and the
// CLI maps it to exit code 3.
var ErrVerification = errors.New("verification failed")

// Reasons, each also an ErrVerification.
var (
	ErrMalformed      = errors.New("malformed manifest")
	ErrUnknownVersion = errors.New("unknown manifest format version")
	ErrBadSignature   = errors.New("bad signature")
	ErrUnknownKey     = errors.New("not signed by a trusted key")
	ErrExpired        = errors.New("manifest expired")
	ErrRollback       = errors.New("revision older than one already installed")
	ErrWrongTarget    = errors.New("manifest is for another name or channel")
	ErrTooLarge       = errors.New("manifest too large")
)

// VerifyError is a refusal with details. It matches its reason and
// ErrVerification with errors.Is.
type VerifyError struct {
	Err    error // one of the reasons above
	Detail string
}

func (e *VerifyError) Error() string {
	if e.Detail == "" {
		return "manifest: " + e.Err.Error()
	}
	return "manifest: " + e.Err.Error() + ": " + e.Detail
}

// Unwrap returns the reason and ErrVerification.
func (e *VerifyError) Unwrap() []error { return []error{e.Err, ErrVerification} }

func malformed(f string, a ...any) error {
	return &VerifyError{Err: ErrMalformed, Detail: fmt.Sprintf(f, a...)}
}
