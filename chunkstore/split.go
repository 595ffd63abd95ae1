package chunkstore

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sort"
	"sync"

	"github.com/restic/chunker"
)

// Extent is one piece of a split stream: a chunk of data, or a zero extent
// that is never stored nor transferred.
type Extent struct {
	Offset int64
	Size   int64
	Zero   bool
}

// sectionSize is how much of a long data extent one worker cuts before the
// next worker's section begins. Workers resynchronise (see Split), so the
// value only affects speed, never boundaries.
var sectionSize int64 = 8 << 20

// Split cuts the size bytes of r into extents under p, in order.
//
// Zero extents are found first (see Params). Each data extent is then cut by
// restic/chunker from a fresh state. Long data extents are cut by several
// workers at once: worker k starts at the beginning of section k with a
// fresh state; because the chunker resets its state at every cut, the
// sequential chain of cuts and worker k's chain agree from the first cut
// they share onward. The merge follows the chain from the start, and where
// it reaches a section it either finds the same cut in that worker's list
// and adopts the rest, or cuts on sequentially until it does. The result is
// therefore exactly the sequential one, whatever workers is.
func Split(ctx context.Context, r io.ReaderAt, size int64, p Params, workers int) ([]Extent, error) {
	return SplitSegments(ctx, r, size, p, workers, nil)
}

// SplitSegments is Split for content made of segments that are cut as if
// each were a stream of its own (the files of a bundle): starts are the
// segments' offsets, ascending (0 is implied). Zero extents are found
// relative to each segment's start, so a segment is cut the same wherever
// it lies.
func SplitSegments(ctx context.Context, r io.ReaderAt, size int64, p Params, workers int, starts []int64) ([]Extent, error) {
	if err := p.Validate(); err != nil {
		return nil, err
	}
	if size < 0 {
		return nil, errors.New("split: negative size")
	}
	if workers < 1 {
		workers = 1
	}
	holes := FindHoles(r, size)
	var spans []Extent
	var buf []byte
	from := int64(0)
	for k := 0; k <= len(starts); k++ {
		end := size
		if k < len(starts) {
			end = min(starts[k], size)
		}
		if end <= from {
			continue
		}
		if buf == nil && end-from >= int64(p.ZeroMin) {
			buf = make([]byte, 1<<20)
		}
		seg, err := zeroSpans(ctx, r, from, end, p, holes, buf)
		if err != nil {
			return nil, err
		}
		spans = append(spans, seg...)
		from = end
	}

	// Cut tasks: one per section of each data span.
	type task struct {
		span       int
		start, end int64 // section; the worker cuts from start until a cut ≥ end
		cuts       []int64
	}
	var tasks []*task
	for i, s := range spans {
		if s.Zero {
			continue
		}
		end := s.Offset + s.Size
		for off := s.Offset; off < end; off += sectionSize {
			secEnd := off + sectionSize
			if end-secEnd < sectionSize/2 { // no short tail section
				secEnd = end
			}
			tasks = append(tasks, &task{span: i, start: off, end: secEnd})
			off = secEnd - sectionSize
		}
	}

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		wg      sync.WaitGroup
		next    = make(chan *task)
		errOnce sync.Once
		first   error
	)
	fail := func(err error) {
		errOnce.Do(func() { first = err; cancel() })
	}
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := newCutter(r, p)
			for t := range next {
				s := spans[t.span]
				cuts, err := c.cutUntil(ctx, t.start, s.Offset+s.Size, t.end)
				if err != nil {
					fail(err)
					continue
				}
				t.cuts = cuts
			}
		}()
	}
feed:
	for _, t := range tasks {
		select {
		case next <- t:
		case <-ctx.Done():
			break feed
		}
	}
	close(next)
	wg.Wait()
	if first != nil {
		return nil, first
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}

	// Merge per span.
	out := make([]Extent, 0, len(spans))
	c := newCutter(r, p)
	ti := 0
	for i, s := range spans {
		if s.Zero {
			out = append(out, s)
			continue
		}
		end := s.Offset + s.Size
		var chain []int64
		for ; ti < len(tasks) && tasks[ti].span == i; ti++ {
			t := tasks[ti]
			last := s.Offset
			if len(chain) > 0 {
				last = chain[len(chain)-1]
			}
			if last >= end {
				continue
			}
			if len(chain) == 0 { // first section of the span starts the chain
				chain = append(chain, t.cuts...)
				continue
			}
			for last < t.cuts[len(t.cuts)-1] {
				j := sort.Search(len(t.cuts), func(k int) bool { return t.cuts[k] >= last })
				if j < len(t.cuts) && t.cuts[j] == last {
					chain = append(chain, t.cuts[j+1:]...)
					break
				}
				n, err := c.cutOne(last, end)
				if err != nil {
					return nil, err
				}
				last += n
				chain = append(chain, last)
			}
		}
		prev := s.Offset
		for _, cut := range chain {
			out = append(out, Extent{Offset: prev, Size: cut - prev})
			prev = cut
		}
		if prev != end {
			return nil, fmt.Errorf("split: internal error: span %d..%d ends at %d", s.Offset, end, prev)
		}
	}
	return out, nil
}

// zeroSpans splits [from,size) into maximal zero extents (per p, blocks
// counted from from) and the data spans between them. buf is scratch of
// 1 MiB (nil when size-from < p.ZeroMin).
func zeroSpans(ctx context.Context, r io.ReaderAt, from, size int64, p Params, holes HoleMap, buf []byte) ([]Extent, error) {
	if p.ZeroBlock == 0 || size-from < int64(p.ZeroMin) {
		if size == from {
			return nil, nil
		}
		return []Extent{{Offset: from, Size: size - from}}, nil
	}
	bs := int64(p.ZeroBlock)
	full := from + (size-from)/bs*bs // the final partial block is always data
	var spans []Extent
	add := func(off, n int64, zero bool) {
		if n == 0 {
			return
		}
		if k := len(spans) - 1; k >= 0 && spans[k].Zero == zero {
			spans[k].Size += n
			return
		}
		spans = append(spans, Extent{Offset: off, Size: n, Zero: zero})
	}
	var runStart int64 = -1 // start of the current run of zero blocks
	flush := func(at int64) {
		if runStart < 0 {
			return
		}
		add(runStart, at-runStart, at-runStart >= int64(p.ZeroMin))
		runStart = -1
	}
	dataStart := from
	for off := from; off < full; {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		n := int64(len(buf))
		if full-off < n {
			n = full - off
		}
		if holes.Covers(off, n) {
			// All zero blocks, known without reading.
			if runStart < 0 {
				add(dataStart, off-dataStart, false)
				runStart = off
			}
			off += n
			continue
		}
		if err := holes.ReadAt(r, buf[:n], off); err != nil {
			if errors.Is(err, io.ErrUnexpectedEOF) {
				return nil, fmt.Errorf("split: input shorter than %d bytes", size)
			}
			return nil, fmt.Errorf("split: read at %d: %w", off, err)
		}
		for b := int64(0); b < n; b += bs {
			at := off + b
			if IsZeros(buf[b : b+bs]) {
				if runStart < 0 {
					// data up to here
					add(dataStart, at-dataStart, false)
					runStart = at
				}
				continue
			}
			if runStart >= 0 {
				flush(at)
				dataStart = at
			}
		}
		off += n
	}
	if runStart >= 0 {
		flush(full)
		dataStart = full
	}
	add(dataStart, size-dataStart, false)
	return spans, nil
}

// cutter finds cut points with restic/chunker, reusing its buffers.
type cutter struct {
	r   io.ReaderAt
	p   Params
	ch  *chunker.Chunker
	buf []byte
}

func newCutter(r io.ReaderAt, p Params) *cutter {
	c := &cutter{r: r, p: p, buf: make([]byte, 0, p.MaxSize)}
	c.ch = chunker.NewWithBoundaries(nil, chunker.Pol(p.Polynomial), uint(p.MinSize), uint(p.MaxSize))
	return c
}

func (c *cutter) reset(from, end int64) {
	c.ch.ResetWithBoundaries(io.NewSectionReader(c.r, from, end-from), chunker.Pol(c.p.Polynomial), uint(c.p.MinSize), uint(c.p.MaxSize))
	c.ch.SetAverageBits(int(c.p.AvgBits))
}

// cutUntil cuts from a fresh state at from (data ends at end) and returns
// the absolute cut positions up to and including the first one ≥ until.
func (c *cutter) cutUntil(ctx context.Context, from, end, until int64) ([]int64, error) {
	c.reset(from, end)
	var cuts []int64
	pos := from
	for pos < until {
		if len(cuts)%256 == 0 {
			if err := ctx.Err(); err != nil {
				return nil, err
			}
		}
		ch, err := c.ch.Next(c.buf)
		if err != nil {
			if errors.Is(err, io.EOF) {
				return nil, fmt.Errorf("split: input ended at %d, before %d", pos, end)
			}
			return nil, fmt.Errorf("split: %w", err)
		}
		pos += int64(ch.Length)
		cuts = append(cuts, pos)
	}
	return cuts, nil
}

// cutOne returns the length of the one chunk that starts at from.
func (c *cutter) cutOne(from, end int64) (int64, error) {
	c.reset(from, end)
	ch, err := c.ch.Next(c.buf)
	if err != nil {
		return 0, fmt.Errorf("split: %w", err)
	}
	return int64(ch.Length), nil
}
