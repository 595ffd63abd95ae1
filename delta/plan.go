package delta

import (
	"github.com/imgctl/imgctl/chunkstore"
	"github.com/imgctl/imgctl/manifest"
)

// SourceKind says where a chunk comes from.
type SourceKind uint8

// Sources, in the order a plan prefers them.
const (
	SourceFetch   SourceKind = iota // from the network
	SourceInPlace                   // already at its place in the output
	SourceSeed                      // copied from a seed (re-hashed first)
	SourceCache                     // from the local chunk store
)

func (k SourceKind) String() string {
	return [...]string{"fetch", "in-place", "seed", "cache"}[k]
}

// Candidate is one place a chunk may be taken from.
type Candidate struct {
	Kind   SourceKind
	Seed   int   // SourceSeed: index into the plan's seeds
	Offset int64 // SourceSeed, SourceInPlace: where to read
}

// SeedIndex is what a seed is believed to hold: the offset of each chunk.
// Belief only: every chunk read from a seed is re-hashed before use.
type SeedIndex map[chunkstore.ID]int64

// IndexManifest returns the seed index of content laid out by m.
func IndexManifest(m *manifest.Manifest) SeedIndex {
	idx := make(SeedIndex, len(m.Chunks))
	occ := m.Occurrences()
	for i, c := range m.Chunks {
		if len(occ[i]) > 0 {
			idx[c.ID] = occ[i][0].Offset
		}
	}
	return idx
}

// Inputs is everything a plan is made from. No I/O happens in NewPlan.
type Inputs struct {
	Target *manifest.Manifest
	// InPlace is what the output is believed to hold already (nil: nothing
	// known). A chunk at the same offset in both is used where it is.
	InPlace *manifest.Manifest
	// Seeds are other content believed to hold chunks.
	Seeds []SeedIndex
	// Have reports whether the local store holds a chunk (nil: nothing).
	Have func(chunkstore.ID) bool
}

// Plan says, for every distinct chunk of the target, where to take it from,
// in order of preference; a chunk with no candidate is fetched. It is a
// value: made by NewPlan without I/O, carried out by Assembler.
type Plan struct {
	Target  *manifest.Manifest
	Sources [][]Candidate // per chunk index of Target.Chunks
	Report  Report
}

// Report counts what a plan expects (plain bytes of distinct chunks).
type Report struct {
	Size          int64 `json:"size"`
	Chunks        int   `json:"chunks"`
	ZeroBytes     int64 `json:"zero_bytes"`
	InPlaceChunks int   `json:"in_place_chunks"`
	InPlaceBytes  int64 `json:"in_place_bytes"`
	SeedChunks    int   `json:"seed_chunks"`
	SeedBytes     int64 `json:"seed_bytes"`
	CacheChunks   int   `json:"cache_chunks"`
	CacheBytes    int64 `json:"cache_bytes"`
	FetchChunks   int   `json:"fetch_chunks"`
	FetchBytes    int64 `json:"fetch_bytes"`
}

// NewPlan makes the plan for in.
func NewPlan(in Inputs) *Plan {
	t := in.Target
	p := &Plan{Target: t, Sources: make([][]Candidate, len(t.Chunks))}
	st := t.Stats()
	p.Report.Size = t.Size
	p.Report.Chunks = len(t.Chunks)
	p.Report.ZeroBytes = st.ZeroBytes

	var have map[int64]chunkstore.ID // in-place: offset → chunk
	if in.InPlace != nil {
		have = map[int64]chunkstore.ID{}
		ip := in.InPlace
		ip.Walk(func(off, size int64, c int) bool {
			if c >= 0 {
				have[off] = ip.Chunks[c].ID
			}
			return true
		})
	}
	occ := t.Occurrences()
	for i, c := range t.Chunks {
		var cands []Candidate
		first := occ[i][0].Offset
		if id, ok := have[first]; ok && id == c.ID {
			cands = append(cands, Candidate{Kind: SourceInPlace, Offset: first})
		}
		for s, idx := range in.Seeds {
			if off, ok := idx[c.ID]; ok {
				cands = append(cands, Candidate{Kind: SourceSeed, Seed: s, Offset: off})
			}
		}
		if in.Have != nil && in.Have(c.ID) {
			cands = append(cands, Candidate{Kind: SourceCache})
		}
		p.Sources[i] = cands
		n := int64(c.Size)
		kind := SourceFetch
		if len(cands) > 0 {
			kind = cands[0].Kind
		}
		switch kind {
		case SourceInPlace:
			p.Report.InPlaceChunks++
			p.Report.InPlaceBytes += n
		case SourceSeed:
			p.Report.SeedChunks++
			p.Report.SeedBytes += n
		case SourceCache:
			p.Report.CacheChunks++
			p.Report.CacheBytes += n
		default:
			p.Report.FetchChunks++
			p.Report.FetchBytes += n
		}
	}
	return p
}

// Missing returns the chunks the plan fetches (no local candidate).
func (p *Plan) Missing() []manifest.ChunkRef {
	var out []manifest.ChunkRef
	for i, c := range p.Sources {
		if len(c) == 0 {
			out = append(out, p.Target.Chunks[i])
		}
	}
	return out
}

// InPlaceOnly returns the chunks whose only candidate is the output itself:
// an interrupted pull's output is believed to hold them, and each one that
// does not after all is fetched.
func (p *Plan) InPlaceOnly() []manifest.ChunkRef {
	var out []manifest.ChunkRef
	for i, c := range p.Sources {
		if len(c) > 0 && c[len(c)-1].Kind == SourceInPlace {
			out = append(out, p.Target.Chunks[i])
		}
	}
	return out
}
