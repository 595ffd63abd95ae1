package transport_test

import (
	"context"
	"net/http/httptest"
	"os"
	"testing"

	"github.com/imgctl/imgctl/chunkstore"
	"github.com/imgctl/imgctl/manifest"
	"github.com/imgctl/imgctl/transport"
)

// BenchmarkFetchRelease fetches every chunk of the latest release of
// $IMGCTL_BENCH_STORE (name $IMGCTL_BENCH_NAME, default os) over loopback
// HTTP with verification, discarding the data.
func BenchmarkFetchRelease(b *testing.B) {
	store := os.Getenv("IMGCTL_BENCH_STORE")
	if store == "" {
		b.Skip("set IMGCTL_BENCH_STORE to a store (bench/compare.sh makes one)")
	}
	name := os.Getenv("IMGCTL_BENCH_NAME")
	if name == "" {
		name = "os"
	}
	env, _, err := manifest.OpenReleases(store).Read(name, "stable", 0)
	if err != nil {
		b.Fatal(err)
	}
	m, err := manifest.Open(env)
	if err != nil {
		b.Fatal(err)
	}
	srv, err := transport.NewServer(store, transport.ServerOptions{})
	if err != nil {
		b.Fatal(err)
	}
	hs := httptest.NewServer(srv)
	defer hs.Close()
	var plain int64
	for _, c := range m.Chunks {
		plain += int64(c.Size)
	}
	b.SetBytes(plain)
	for _, conc := range []int{2, 4, 8} {
		b.Run("concurrency="+string(rune('0'+conc)), func(b *testing.B) {
			b.SetBytes(plain)
			for b.Loop() {
				c, _ := transport.NewClient(hs.URL, transport.ClientOptions{Concurrency: conc})
				if err := c.Fetch(context.Background(), m.Chunks, func(chunkstore.Chunk) error { return nil }); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
