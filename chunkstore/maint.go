package chunkstore

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"sync"

	bolt "go.etcd.io/bbolt"
)

// CompactStats reports what Delete did to the packs.
type CompactStats struct {
	Chunks         int   // chunks removed from the index
	PacksRemoved   int   // packs deleted because nothing in them was live
	PacksRewritten int   // packs whose live chunks were copied to a new pack
	BytesFreed     int64 // pack bytes given back to the file system
}

// Delete removes chunks from the index and compacts the packs: a pack with
// no live chunk is deleted, a pack less than half live is rewritten (its
// live chunks, verified, copied to a new pack) and then deleted. Readers
// that hold an old pack open keep reading it; others find the new pack on
// their next rescan.
func (s *Local) Delete(ids []ID) (CompactStats, error) {
	st := CompactStats{Chunks: len(ids)}
	if err := s.Flush(context.Background()); err != nil {
		return st, err
	}
	if err := s.Unindex(ids); err != nil {
		return st, err
	}
	live := map[uint32]int64{}
	byPack := map[uint32][]idxEntry{}
	var packs []uint32
	err := s.db.View(func(tx *bolt.Tx) error {
		if err := tx.Bucket(bucketPacks).ForEach(func(k, _ []byte) error {
			packs = append(packs, binary.BigEndian.Uint32(k))
			return nil
		}); err != nil {
			return err
		}
		return tx.Bucket(bucketChunks).ForEach(func(k, v []byte) error {
			l, ok := decodeLoc(v)
			if ok {
				live[l.pack] += int64(l.stored)
				byPack[l.pack] = append(byPack[l.pack], idxEntry{id: ID(k), loc: l})
			}
			return nil
		})
	})
	if err != nil {
		return st, err
	}
	var remove []uint32
	s.smu.Lock()
	defer s.smu.Unlock()
	for _, q := range packs {
		fi, err := os.Stat(packPath(s.root, q))
		if err != nil {
			continue
		}
		switch {
		case live[q] == 0:
			remove = append(remove, q)
			st.PacksRemoved++
		case live[q] < fi.Size()/2:
			for _, e := range byPack[q] {
				b, err := s.readStored(e.id, e.loc)
				if err == nil {
					_, err = Verify(e.id, b, int(e.size))
				}
				if err != nil {
					continue // corrupt: not copied, dropped with the pack
				}
				s.mu.Lock()
				err = s.append(e.id, b, e.size)
				s.mu.Unlock()
				if err != nil {
					return st, err
				}
			}
			remove = append(remove, q)
			st.PacksRewritten++
		default:
			continue
		}
		st.BytesFreed += fi.Size() - live[q]
	}
	if err := s.flushLocked(); err != nil {
		return st, err
	}
	// New locations are committed; the old packs can go.
	err = s.db.Update(func(tx *bolt.Tx) error {
		for _, q := range remove {
			if err := tx.Bucket(bucketPacks).Delete(seqKey(q)); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return st, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, q := range remove {
		if f := s.files[q]; f != nil {
			f.Close()
			delete(s.files, q)
		}
		os.Remove(idxPath(s.root, q))
		if err := os.Remove(packPath(s.root, q)); err != nil && !errors.Is(err, os.ErrNotExist) {
			return st, err
		}
	}
	return st, SyncDir(filepath.Join(s.root, packDir))
}

// CheckReport is what Check found.
type CheckReport struct {
	Chunks   int      `json:"chunks"`
	Packs    int      `json:"packs"`
	Corrupt  []ID     `json:"corrupt,omitempty"`
	Missing  []ID     `json:"missing,omitempty"`
	BadPacks []string `json:"bad_packs,omitempty"` // pack files whose index does not check or disagrees with the store index
	Stray    []string `json:"stray_files,omitempty"`
	// Unindexed counts chunks present in packs but not in the index
	// (dropped by gc or fsck, awaiting compaction): not an error.
	Unindexed int `json:"unindexed_chunks"`
}

// OK reports whether the store is sound.
func (r *CheckReport) OK() bool {
	return len(r.Corrupt)+len(r.Missing)+len(r.BadPacks) == 0
}

// Check re-reads and re-hashes every indexed chunk and compares the index
// with the packs' own index files. progress, if set, is called once per
// chunk checked with the number checked so far and the total.
func (s *Local) Check(ctx context.Context, progress func(done, total int)) (*CheckReport, error) {
	if err := s.Flush(ctx); err != nil {
		return nil, err
	}
	rep := &CheckReport{}
	seqs, other, err := listPacks(s.root)
	if err != nil {
		return nil, err
	}
	rep.Stray = other
	rep.Packs = len(seqs)
	var entries []idxEntry
	if err := s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketChunks).ForEach(func(k, v []byte) error {
			l, ok := decodeLoc(v)
			if !ok {
				return fmt.Errorf("index: bad record for %x", k)
			}
			entries = append(entries, idxEntry{id: ID(k), loc: l})
			return nil
		})
	}); err != nil {
		return nil, err
	}
	rep.Chunks = len(entries)
	indexed := make(map[ID]loc, len(entries))
	for _, e := range entries {
		indexed[e.id] = e.loc
	}
	onDisk := map[uint32]bool{}
	for _, q := range seqs {
		onDisk[q] = true
		fi, err := os.Stat(packPath(s.root, q))
		if err != nil {
			rep.BadPacks = append(rep.BadPacks, fmt.Sprintf("%s: %v", packName(q), err))
			continue
		}
		ents, err := readIdx(s.root, q, fi.Size())
		if err != nil {
			rep.BadPacks = append(rep.BadPacks, err.Error())
			continue
		}
		for _, e := range ents {
			l, ok := indexed[e.id]
			switch {
			case !ok:
				rep.Unindexed++
			case l.pack == q && l != e.loc:
				rep.BadPacks = append(rep.BadPacks, fmt.Sprintf("%s: chunk %s at another place than the index says", packName(q), e.id.Short()))
			}
		}
	}
	// Verify in pack order, in parallel.
	sort.Slice(entries, func(i, j int) bool {
		if entries[i].pack != entries[j].pack {
			return entries[i].pack < entries[j].pack
		}
		return entries[i].off < entries[j].off
	})
	var mu sync.Mutex
	done := 0
	jobs := make(chan idxEntry, 64)
	var wg sync.WaitGroup
	for w := 0; w < runtime.GOMAXPROCS(0); w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for e := range jobs {
				var err error
				if !onDisk[e.pack] {
					err = ErrNotFound
				} else {
					var b []byte
					b, err = s.readStored(e.id, e.loc)
					if err == nil {
						_, err = Verify(e.id, b, int(e.size))
					}
				}
				mu.Lock()
				switch {
				case err == nil:
				case errors.Is(err, ErrCorrupt):
					rep.Corrupt = append(rep.Corrupt, e.id)
				default:
					rep.Missing = append(rep.Missing, e.id)
				}
				done++
				if progress != nil {
					progress(done, len(entries))
				}
				mu.Unlock()
			}
		}()
	}
	for _, e := range entries {
		if ctx.Err() != nil {
			break
		}
		jobs <- e
	}
	close(jobs)
	wg.Wait()
	return rep, ctx.Err()
}

// RemoveStray deletes files in the packs directory that are not complete
// packs (leftovers the next Open would also remove).
func (s *Local) RemoveStray(paths []string) error {
	for _, p := range paths {
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
	}
	return nil
}
