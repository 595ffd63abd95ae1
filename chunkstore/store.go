package chunkstore

import (
	"context"
	"io"
)

// Getter returns verified chunks. Implementations must verify every read:
// a chunk that does not match its ID is an *IntegrityError, never data.
// Get of an absent chunk returns an error that wraps ErrNotFound. Safe for
// concurrent use.
type Getter interface {
	Get(ctx context.Context, id ID) (Chunk, error)
}

// Haver reports presence without reading the chunk. It may be stale by the
// time the caller acts on it; Get still decides.
type Haver interface {
	Has(ctx context.Context, id ID) (bool, error)
}

// Putter stores a verified chunk. Putting a chunk that is already present is
// not an error and does not rewrite it (stored bytes are canonical). added
// reports whether the store wrote it. Safe for concurrent use, including
// for the same ID.
type Putter interface {
	Put(ctx context.Context, c Chunk) (added bool, err error)
}

// Store is a readable chunk store.
type Store interface {
	Getter
	Haver
	io.Closer
}

// WriteStore is a readable and writable chunk store. Writes become durable
// at Flush (or Close); a crash before then may lose them, never corrupt
// what was flushed.
type WriteStore interface {
	Store
	Putter
	Flush(ctx context.Context) error
}

// Info describes a stored chunk.
type Info struct {
	ID     ID
	Size   uint32 // plain bytes
	Stored uint32 // stored bytes
}
