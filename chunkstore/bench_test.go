package chunkstore_test

import (
	"context"
	"os"
	"testing"

	"github.com/imgctl/imgctl/chunkstore"
)

// benchImage opens $IMGCTL_BENCH_IMAGE (bench/images.sh builds real ones)
// or skips: these benchmarks measure real data, not synthetic.
func benchImage(b *testing.B) (*os.File, int64) {
	p := os.Getenv("IMGCTL_BENCH_IMAGE")
	if p == "" {
		b.Skip("set IMGCTL_BENCH_IMAGE to an image file (bench/images.sh builds them)")
	}
	f, err := os.Open(p)
	if err != nil {
		b.Fatal(err)
	}
	st, _ := f.Stat()
	b.Cleanup(func() { f.Close() })
	return f, st.Size()
}

func BenchmarkSplitImage(b *testing.B) {
	f, size := benchImage(b)
	b.SetBytes(size)
	for b.Loop() {
		if _, err := chunkstore.Split(context.Background(), f, size, chunkstore.DefaultParams(), 0); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkIngestImage: a publish into a new store.
func BenchmarkIngestImage(b *testing.B) {
	f, size := benchImage(b)
	b.SetBytes(size)
	for b.Loop() {
		b.StopTimer()
		dir := b.TempDir()
		s, err := chunkstore.Open(dir, chunkstore.Options{})
		if err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		if _, err := chunkstore.Ingest(context.Background(), f, size, chunkstore.DefaultParams(), s, chunkstore.IngestOptions{}); err != nil {
			b.Fatal(err)
		}
		if err := s.Close(); err != nil {
			b.Fatal(err)
		}
	}
}
