// Package transport moves manifests and chunks between machines.
//
// # HTTP
//
// Server serves a store (see server.go for the routes): manifests by
// name/channel/revision, chunks by ID as their canonical stored bytes, a
// batch route that returns many chunks in one response, and Prometheus
// metrics, of which imgctl_served_bytes_total counts response body bytes. It
// reads the store's files without a lock, so releases published while it
// runs are served at once, and it verifies every chunk before sending it.
// An optional upload limit paces all response bodies together.
//
// Client fetches with bounded concurrency, batching, retries with
// exponential backoff, and caps on every body: a manifest at its maximum
// size, a batch at the stored-size bound of the chunks it asked for. Every
// chunk is verified (size and BLAKE3) before it is handed on; a chunk that
// keeps arriving corrupt is a *chunkstore.IntegrityError.
//
// BitTorrent transport comes in a later change.
package transport
