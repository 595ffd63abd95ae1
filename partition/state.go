package partition

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/imgctl/imgctl/chunkstore"
)

// SlotRecord is what imgctl knows about a slot's content. It is written
// atomically (temp, fsync, rename, fsync dir) to <state_dir>/slot-<name>.json
// before a slot is written (Verified false) and after it verified (true).
type SlotRecord struct {
	Slot     string        `json:"slot"`
	Name     string        `json:"name"`
	Channel  string        `json:"channel"`
	Revision uint64        `json:"revision"`
	Manifest chunkstore.ID `json:"manifest"`
	Digest   chunkstore.ID `json:"blake3"`
	Size     int64         `json:"size"`
	// Verified: the slot was read back and matched Digest. A slot that is
	// not verified is never made primary (unless forced).
	Verified bool      `json:"verified"`
	Updated  time.Time `json:"updated"`
}

func recordPath(stateDir, slot string) string {
	return filepath.Join(stateDir, "slot-"+slot+".json")
}

// EnvelopePath is where the signed manifest of a slot's content is kept.
func EnvelopePath(stateDir, slot string) string {
	return filepath.Join(stateDir, "slot-"+slot+".imgm")
}

// ReadRecord returns a slot's record, or nil if there is none.
func ReadRecord(stateDir, slot string) (*SlotRecord, error) {
	b, err := os.ReadFile(recordPath(stateDir, slot))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var r SlotRecord
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("%s: %w", recordPath(stateDir, slot), err)
	}
	return &r, nil
}

// WriteRecord stores a slot's record atomically, with the signed manifest
// of its content beside it (written first) when env is given.
func WriteRecord(stateDir string, r SlotRecord, env []byte) error {
	if err := os.MkdirAll(stateDir, 0o755); err != nil {
		return err
	}
	if env != nil {
		if err := chunkstore.WriteFileAtomic(EnvelopePath(stateDir, r.Slot), env, 0o644); err != nil {
			return err
		}
	}
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	return chunkstore.WriteFileAtomic(recordPath(stateDir, r.Slot), append(b, '\n'), 0o644)
}

// ReadEnvelope returns the signed manifest recorded for a slot, or nil.
func ReadEnvelope(stateDir, slot string) ([]byte, error) {
	b, err := os.ReadFile(EnvelopePath(stateDir, slot))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	return b, err
}
