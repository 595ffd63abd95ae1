package chunkstore

import (
	"errors"
	"fmt"
)

// Sentinel errors. Test for them with errors.Is.
var (
	// ErrNotFound: the store does not hold the chunk.
	ErrNotFound = errors.New("chunk not found")
	// ErrCorrupt: stored or received bytes do not decode to the data the ID names.
	ErrCorrupt = errors.New("chunk corrupt")
	// ErrLocked: another process holds the store's index.
	ErrLocked = errors.New("store is locked by another process")
	// ErrClosed: the store was closed.
	ErrClosed = errors.New("store closed")
)

// IntegrityError reports a chunk whose bytes do not match its ID. It unwraps
// to ErrCorrupt.
type IntegrityError struct {
	ID     ID
	Reason string // e.g. "hash mismatch", "size 4096, want 8192", a decoder error
}

func (e *IntegrityError) Error() string {
	return fmt.Sprintf("chunk %s: %s", e.ID.Short(), e.Reason)
}

// Unwrap returns ErrCorrupt.
func (e *IntegrityError) Unwrap() error { return ErrCorrupt }
