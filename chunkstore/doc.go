// Package chunkstore cuts content into chunks and keeps them.
//
// # Vocabulary
//
//   - A chunk is a run of bytes cut from an image or file by the chunker
//     (Params, Split). Its ID is the BLAKE3-256 of its plain bytes.
//   - A zero extent is a run of zero bytes that Split sets apart before
//     chunking. Zero extents are never stored nor transferred.
//   - The stored form of a chunk is one zstd frame (raw blocks where
//     compression does not pay). It is canonical: once a store holds a
//     chunk, its stored bytes are served as they are and never recompressed,
//     because later transports (BitTorrent) distribute those exact bytes.
//   - A Chunk value is verified: only Encode and Verify make one.
//
// # Stores
//
// Chunks live in pack files, <root>/packs/<seq>.pack, each with an
// immutable sidecar index <seq>.idx (see pack.go). Local is the writable
// store: it appends to packs and keeps a bbolt index at <root>/index.db
// (chunk locations and small metadata records); one process at a time
// holds it. Dir reads the packs through their .idx files without any lock,
// which is what a server uses while a publisher writes the same store.
// Every read is verified. storetest.Run is the conformance suite every
// writable store passes.
//
// # Durability
//
// Put appends to the current pack. Flush (or a full pack, or
// Options.FlushEvery) writes the pack's .idx, fsyncs both files, renames them
// into place, fsyncs the directory, and only then commits the entries to the
// index. Open repairs what a crash left: temporary files are removed, and a
// complete pack the index does not know is imported from its .idx. A crash
// therefore loses at most the unflushed pack, never a flushed chunk, and
// never leaves the index naming bytes that are not durable.
//
// Delete drops chunks from the index and compacts: packs with nothing live
// are removed, packs less than half live are rewritten.
//
// # Split
//
// Split is a pure function of the content and Params: zero extents first,
// then restic/chunker from a fresh state on each data extent, cut by several
// workers whose chains are resynchronised so that the result equals the
// sequential one (see Split). A golden test pins boundaries and IDs: a change
// there breaks deduplication on every deployed terminal.
package chunkstore
