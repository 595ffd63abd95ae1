package manifest

import (
	"encoding/binary"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/imgctl/imgctl/chunkstore"
)

// PackRecord is the signed description of a delta pack (delta.BuildPack):
// which release it leads from and to, which object it is, and which chunks
// it yields. A terminal uses a pack only through a record that verifies.
type PackRecord struct {
	Name, Channel string
	From, To      uint64
	// FromID and ToID are the manifest IDs of the two releases, and
	// FromDigest FROM's whole-content BLAKE3: the reference a terminal must
	// hold exactly.
	FromID, ToID chunkstore.ID
	FromDigest   chunkstore.ID
	// Pack is the BLAKE3 of the pack's bytes, Size their length.
	Pack chunkstore.ID
	Size int64
	// Chunks and PlainBytes count what the pack yields; ChunksDigest
	// commits to the list (ChunkListDigest of delta.PackChunks(from, to)).
	Chunks       int
	PlainBytes   int64
	ChunksDigest chunkstore.ID
	// ChunkBytes is what the same chunks cost fetched one by one (their
	// stored size): a terminal takes the pack only when it is smaller than
	// the share of that it would fetch.
	ChunkBytes int64
	Created    time.Time
	// Torrent, if set, is the pack's own single-file BitTorrent torrent
	// (its info bytes are served beside the record).
	Torrent *TorrentRef
	// Regzip is how many bytes of inflated gzip streams a terminal
	// deflates again to apply Pack (pack format 3; 0: none). Lean, if set,
	// is the same pack with those streams kept as they are: larger, with
	// nothing to rebuild, for terminals whose link is fast enough that the
	// bytes saved take less time than the rebuild (delta.BuildPack,
	// KeepGzip). Records with either, or with a pack of format 3 or
	// later, are version 2.
	Regzip int64
	Lean   *PackObject
	// LeanTorrent, if set, is the lean pack's own torrent, as Torrent is
	// the main pack's (record version 3), so that --p2p terminals can take
	// either form from peers.
	LeanTorrent *TorrentRef
	// Format is the main pack's format version (delta's pack magic); 3
	// and later need record version 2, so that terminals which cannot
	// read the pack refuse the record instead of downloading it.
	Format int
}

// PackObject is a pack object a record offers besides its main one.
type PackObject struct {
	Pack chunkstore.ID
	Size int64
}

// PackForm is one form of the pack a record offers: its object, its
// torrent (nil if it has none), and whether it is the lean twin.
type PackForm struct {
	PackObject
	Torrent *TorrentRef
	Lean    bool
}

// InfoKind is the side-file kind of the info bytes of the form's torrent,
// for the pack from revision from.
func (f PackForm) InfoKind(from uint64) string {
	if f.Lean {
		return SidePackLeanInfo(from)
	}
	return SidePackInfo(from)
}

// Forms lists the forms of the pack the record offers, the main one first.
func (r *PackRecord) Forms() []PackForm {
	out := []PackForm{{PackObject: PackObject{r.Pack, r.Size}, Torrent: r.Torrent}}
	if r.Lean != nil {
		out = append(out, PackForm{PackObject: *r.Lean, Torrent: r.LeanTorrent, Lean: true})
	}
	return out
}

// Objects lists the pack objects the record offers, the main one first.
func (r *PackRecord) Objects() []PackObject {
	var out []PackObject
	for _, f := range r.Forms() {
		out = append(out, f.PackObject)
	}
	return out
}

var packMagic = [8]byte{'I', 'M', 'G', 'C', 'T', 'L', 'P', 1}

const (
	packContext = "imgctl pack record v1\x00"
	// packRecordVersion is the newest version: 1 has no Regzip, Lean or
	// Format, 2 no LeanTorrent. A record is written in the oldest version
	// that holds it, so terminals read every record they can use.
	packRecordVersion = 3
)

// ChunkListDigest is the BLAKE3 of chunk IDs and sizes in order.
func ChunkListDigest(refs []ChunkRef) chunkstore.ID {
	b := make([]byte, 0, len(refs)*36)
	for _, c := range refs {
		b = append(b, c.ID[:]...)
		b = binary.BigEndian.AppendUint32(b, c.Size)
	}
	return chunkstore.Sum(b)
}

func (r *PackRecord) encode() []byte {
	v := uint64(packRecordVersion)
	switch {
	case r.Regzip == 0 && r.Lean == nil && r.Format <= 2:
		v = 1
	case r.Lean == nil || r.LeanTorrent == nil:
		v = 2
	}
	b := binary.AppendUvarint(nil, v)
	for _, s := range []string{r.Name, r.Channel} {
		b = binary.AppendUvarint(b, uint64(len(s)))
		b = append(b, s...)
	}
	b = binary.AppendUvarint(b, r.From)
	b = binary.AppendUvarint(b, r.To)
	for _, id := range []chunkstore.ID{r.FromID, r.ToID, r.FromDigest, r.Pack, r.ChunksDigest} {
		b = append(b, id[:]...)
	}
	b = binary.AppendUvarint(b, uint64(r.Size))
	b = binary.AppendUvarint(b, uint64(r.Chunks))
	b = binary.AppendUvarint(b, uint64(r.PlainBytes))
	b = binary.AppendUvarint(b, uint64(r.ChunkBytes))
	b = binary.AppendVarint(b, r.Created.Unix())
	b = appendTorrentRef(b, r.Torrent)
	if v == 1 {
		return b
	}
	b = binary.AppendUvarint(b, uint64(r.Format))
	b = binary.AppendUvarint(b, uint64(r.Regzip))
	if r.Lean == nil {
		return append(b, 0)
	}
	b = append(b, 1)
	b = append(b, r.Lean.Pack[:]...)
	b = binary.AppendUvarint(b, uint64(r.Lean.Size))
	if v == 2 {
		return b
	}
	return appendTorrentRef(b, r.LeanTorrent)
}

// appendTorrentRef appends an optional torrent reference: a flag byte,
// then the infohash, the info's size and its BLAKE3.
func appendTorrentRef(b []byte, t *TorrentRef) []byte {
	if t == nil {
		return append(b, 0)
	}
	b = append(b, 1)
	b = append(b, t.InfoHash[:]...)
	b = binary.AppendUvarint(b, uint64(t.InfoSize))
	return append(b, t.InfoDigest[:]...)
}

// torrentRef reads what appendTorrentRef wrote.
func (d *decoder) torrentRef(what string) *TorrentRef {
	switch d.u8() {
	case 0:
		return nil
	case 1:
		t := &TorrentRef{}
		copy(t.InfoHash[:], d.raw(20))
		t.InfoSize = int(d.uint(MaxInfoSize, what+" info size"))
		copy(t.InfoDigest[:], d.raw(32))
		return t
	default:
		d.fail("bad %s flag", what)
		return nil
	}
}

func decodePackRecord(b []byte) (*PackRecord, error) {
	d := &decoder{b: b}
	v := d.uvarint()
	if d.err == nil && (v < 1 || v > packRecordVersion) {
		return nil, &VerifyError{Err: ErrUnknownVersion, Detail: fmt.Sprintf("pack record version %d", v)}
	}
	r := &PackRecord{Name: d.str("name"), Channel: d.str("channel")}
	r.From, r.To = d.uvarint(), d.uvarint()
	for _, id := range []*chunkstore.ID{&r.FromID, &r.ToID, &r.FromDigest, &r.Pack, &r.ChunksDigest} {
		copy(id[:], d.raw(32))
	}
	r.Size = int64(d.uint(1<<50, "pack size"))
	r.Chunks = int(d.uint(1<<32, "chunk count"))
	r.PlainBytes = int64(d.uint(1<<50, "plain bytes"))
	r.ChunkBytes = int64(d.uint(1<<50, "chunk bytes"))
	r.Created = timeOrZero(d.varint())
	r.Torrent = d.torrentRef("torrent")
	if v >= 2 {
		r.Format = int(d.uint(255, "pack format"))
		r.Regzip = int64(d.uint(1<<50, "regzip bytes"))
		switch d.u8() {
		case 0:
		case 1:
			l := &PackObject{}
			copy(l.Pack[:], d.raw(32))
			l.Size = int64(d.uint(1<<50, "lean pack size"))
			r.Lean = l
			if v >= 3 {
				r.LeanTorrent = d.torrentRef("lean torrent")
			}
		default:
			d.fail("bad lean pack flag")
		}
	}
	if d.err == nil && d.off != len(b) {
		d.fail("%d trailing bytes", len(b)-d.off)
	}
	if d.err != nil {
		return nil, malformed("pack record: %v", d.err)
	}
	if !ValidName(r.Name) || !ValidName(r.Channel) || r.From == 0 || r.From >= r.To {
		return nil, malformed("pack record: %s/%s %d→%d", r.Name, r.Channel, r.From, r.To)
	}
	return r, nil
}

// SignPackRecord encodes and signs r.
func SignPackRecord(r *PackRecord, keys ...PrivateKey) ([]byte, error) {
	if !ValidName(r.Name) || !ValidName(r.Channel) || r.From == 0 || r.From >= r.To {
		return nil, fmt.Errorf("pack record: %s/%s %d→%d", r.Name, r.Channel, r.From, r.To)
	}
	return seal(packMagic, packContext, r.encode(), keys)
}

// VerifyPackRecord checks the signatures of a pack record, then that it
// leads from the manifest fromEnv to the manifest toEnv (both already
// verified by the caller).
func VerifyPackRecord(env []byte, trust *Trust, fromEnv, toEnv []byte) (*PackRecord, error) {
	if trust == nil || len(trust.Keys) == 0 {
		return nil, &VerifyError{Err: ErrUnknownKey, Detail: "no trusted keys"}
	}
	payload, err := checkSignatures(packMagic, packContext, env, trust)
	if err != nil {
		return nil, err
	}
	r, err := decodePackRecord(payload)
	if err != nil {
		return nil, err
	}
	fid, err := ID(fromEnv)
	if err != nil {
		return nil, err
	}
	tid, err := ID(toEnv)
	if err != nil {
		return nil, err
	}
	if r.FromID != fid || r.ToID != tid {
		return nil, &VerifyError{Err: ErrWrongTarget, Detail: fmt.Sprintf("pack %s/%s %d→%d is for other releases", r.Name, r.Channel, r.From, r.To)}
	}
	return r, nil
}

// OpenPackRecord decodes a pack record WITHOUT checking signatures (for
// listing what a store holds).
func OpenPackRecord(env []byte) (*PackRecord, error) {
	payload, _, err := splitAs(packMagic, env)
	if err != nil {
		return nil, err
	}
	return decodePackRecord(payload)
}

// SidePackInfo is the side-file kind of the info bytes of the torrent of
// the pack from revision from.
func SidePackInfo(from uint64) string { return SidePack(from) + ".torrent-info" }

// SidePackLeanInfo is the side-file kind of the info bytes of the torrent
// of the lean twin of the pack from revision from.
func SidePackLeanInfo(from uint64) string { return SidePack(from) + ".lean.torrent-info" }

// SidePack is the side-file kind of the record of the pack from revision
// from to a release.
func SidePack(from uint64) string { return "pack-" + strconv.FormatUint(from, 10) }

// PackFroms lists the revisions a release has pack records from.
func (r *Releases) PackFroms(name, channel string, rev uint64) []uint64 {
	var out []uint64
	for _, k := range r.sideKinds(name, channel, rev) {
		if s, ok := strings.CutPrefix(k, "pack-"); ok {
			if n, err := strconv.ParseUint(s, 10, 64); err == nil {
				out = append(out, n)
			}
		}
	}
	return out
}

// PackPath is where a store keeps the delta pack object id (beside, not
// in, packs/, which holds the store's own chunk pack files).
func PackPath(storeRoot string, id chunkstore.ID) string {
	return filepath.Join(storeRoot, "deltas", id.String()+".dpack")
}

// MaxPackRecord bounds a pack record file.
const MaxPackRecord = 64 << 10
