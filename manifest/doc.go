// Package manifest defines releases: what content a release holds, who
// signed it, and how a terminal decides to trust it.
//
// # Format
//
// A manifest payload is a canonical binary encoding (Encode, Decode) of
// Manifest: format version, kind, name, channel, revision, created,
// expires, chunker parameters, compression, size, BLAKE3 of the whole
// content, the table of distinct chunks (ID and size, in order of first
// appearance), the layout as compact runs (new chunks, repeats of a known
// chunk, zero extents; offsets implied), transport hints (key/value) and
// extension records (even tags optional, odd tags critical). Decode refuses
// anything Encode would not produce, so Encode(Decode(b)) == b.
//
// The payload travels in a signed envelope (see envelope.go): magic,
// length, payload, then 1..16 ed25519 signatures tagged with key IDs.
//
// # Trust
//
// Verify checks signatures over the exact payload bytes before decoding
// anything, then version, expiry (against an injected clock), name and
// channel (mix-and-match), and revision (rollback). Every refusal matches
// ErrVerification. A Trust lists keys and a threshold.
//
// # Releases
//
// Releases stores envelopes as files <root>/manifests/<name>/<channel>/<rev>.imgm,
// written atomically; revisions are assigned by the publisher, monotonic per
// name and channel.
package manifest
