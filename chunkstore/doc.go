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
// Dir holds chunk files at <root>/chunks/ab/<id>.zst. Local adds a bbolt
// index at <root>/index.db (chunk sizes and small metadata records) and is
// the store publish and pull write to. Every Store verifies every read.
// storetest.Run is the conformance suite every implementation passes.
//
// # Durability
//
// A chunk file is written to a temporary name and renamed into place. For
// speed, files are not fsynced one by one: Flush issues one syncfs(2) for the
// store's file system and only then commits the batch to the index, so the
// index never names a file a crash could take back. A crash leaves at worst
// unindexed files, which the next Put of the same chunk rewrites and fsck
// reports. Options.SyncEach fsyncs every file and directory instead.
//
// # Split
//
// Split is a pure function of the content and Params: zero extents first,
// then restic/chunker from a fresh state on each data extent, cut by several
// workers whose chains are resynchronised so that the result equals the
// sequential one (see Split). A golden test pins boundaries and IDs: a change
// there breaks deduplication on every deployed terminal.
package chunkstore
