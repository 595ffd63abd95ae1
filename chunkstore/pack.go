package chunkstore

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
)

// Packs. Chunks are appended to pack files instead of one file each: a
// 1 GiB image is ~10k chunks, and creating that many files costs more than
// compressing them on the small machines imgctl runs on (see
// docs/decisions/0002-pack-files.md).
//
//	<root>/packs/<seq>.pack   stored chunks back to back (seq: 8 hex digits)
//	<root>/packs/<seq>.idx    sidecar index, immutable, written before the
//	                          pack is renamed into place:
//	  magic "IMGCTLX1" ‖ count u32 ‖ count × entry ‖ BLAKE3 of all before [32]
//	  entry: id [32] ‖ offset u32 ‖ stored length u32 ‖ plain size u32 ‖
//	         BLAKE3-128 of the stored bytes [16]
//	  (entries sorted by id; all integers big-endian)
//
// A pack whose .idx is missing or does not check is incomplete and is
// ignored by readers and removed by the writer.
const (
	packDir      = "packs"
	idxMagic     = "IMGCTLX1"
	idxEntrySize = 32 + 12 + 16
	// MaxPackSize is where the writer starts a new pack.
	MaxPackSize = 64 << 20
)

// loc is where a chunk is stored.
type loc struct {
	pack   uint32
	off    uint32
	stored uint32
	size   uint32
	sum    storedSum
}

// storedSum is BLAKE3-128 of a chunk's stored bytes: lets a server check
// for bit rot without decompressing (clients verify the plain bytes).
type storedSum [16]byte

func sumStored(b []byte) storedSum {
	id := Sum(b)
	return storedSum(id[:16])
}

type idxEntry struct {
	id ID
	loc
}

func packName(seq uint32) string { return fmt.Sprintf("%08x", seq) }

func packPath(root string, seq uint32) string {
	return filepath.Join(root, packDir, packName(seq)+".pack")
}

func idxPath(root string, seq uint32) string {
	return filepath.Join(root, packDir, packName(seq)+".idx")
}

// listPacks returns the sequence numbers of the complete-looking packs
// (those with an .idx) in ascending order, and the names of other files.
func listPacks(root string) (seqs []uint32, other []string, err error) {
	ents, err := os.ReadDir(filepath.Join(root, packDir))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil, nil
	}
	if err != nil {
		return nil, nil, err
	}
	// Only exact "<8 hex>.pack" + "<8 hex>.idx" pairs are packs; anything
	// else (temporary files of an interrupted seal, a lone half) is other.
	seqOf := func(name, suffix string) (uint32, bool) {
		base, ok := strings.CutSuffix(name, suffix)
		if !ok || len(base) != 8 {
			return 0, false
		}
		v, err := strconv.ParseUint(base, 16, 32)
		return uint32(v), err == nil && packName(uint32(v)) == base
	}
	packs, idxs := map[uint32]bool{}, map[uint32]bool{}
	for _, e := range ents {
		if q, ok := seqOf(e.Name(), ".pack"); ok {
			packs[q] = true
		} else if q, ok := seqOf(e.Name(), ".idx"); ok {
			idxs[q] = true
		}
	}
	for _, e := range ents {
		name := e.Name()
		if q, ok := seqOf(name, ".idx"); ok && packs[q] {
			seqs = append(seqs, q)
			continue
		}
		if q, ok := seqOf(name, ".pack"); ok && idxs[q] {
			continue
		}
		other = append(other, filepath.Join(root, packDir, name))
	}
	sort.Slice(seqs, func(i, j int) bool { return seqs[i] < seqs[j] })
	return seqs, other, nil
}

func encodeIdx(entries []idxEntry) []byte {
	sort.Slice(entries, func(i, j int) bool { return bytes.Compare(entries[i].id[:], entries[j].id[:]) < 0 })
	b := make([]byte, 0, 12+len(entries)*idxEntrySize+32)
	b = append(b, idxMagic...)
	b = binary.BigEndian.AppendUint32(b, uint32(len(entries)))
	for _, e := range entries {
		b = append(b, e.id[:]...)
		b = binary.BigEndian.AppendUint32(b, e.off)
		b = binary.BigEndian.AppendUint32(b, e.stored)
		b = binary.BigEndian.AppendUint32(b, e.size)
		b = append(b, e.sum[:]...)
	}
	sum := Sum(b)
	return append(b, sum[:]...)
}

// readIdx reads and checks the sidecar index of pack seq. packSize, if
// non-negative, bounds the entries.
func readIdx(root string, seq uint32, packSize int64) ([]idxEntry, error) {
	b, err := os.ReadFile(idxPath(root, seq))
	if err != nil {
		return nil, err
	}
	bad := func(why string) error { return fmt.Errorf("pack index %s: %s", idxPath(root, seq), why) }
	if len(b) < 12+32 || string(b[:8]) != idxMagic {
		return nil, bad("not a pack index")
	}
	body, sum := b[:len(b)-32], b[len(b)-32:]
	if Sum(body) != ID(sum) {
		return nil, bad("checksum mismatch")
	}
	n := binary.BigEndian.Uint32(body[8:12])
	if uint64(len(body)-12) != uint64(n)*idxEntrySize {
		return nil, bad("length does not match count")
	}
	out := make([]idxEntry, n)
	for i := range out {
		p := body[12+i*idxEntrySize:]
		copy(out[i].id[:], p[:32])
		out[i].pack = seq
		out[i].off = binary.BigEndian.Uint32(p[32:])
		out[i].stored = binary.BigEndian.Uint32(p[36:])
		out[i].size = binary.BigEndian.Uint32(p[40:])
		copy(out[i].sum[:], p[44:60])
		if packSize >= 0 && int64(out[i].off)+int64(out[i].stored) > packSize {
			return nil, bad("entry beyond the end of the pack")
		}
	}
	return out, nil
}
